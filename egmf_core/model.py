"""EGMF: fusion stack -> pseudo tokens -> prompt -> LoRA-tuned LLM that answers "<emotion> <score>".

Two inference paths share all preparation:
- `generate`: plain greedy generation and parsing of the text (the paper's path);
- `score`: one forward pass over the prompt gives a probability for every emotion label (the first answer token
  of each label, renormalized over the closed label set); a second pass reads the rest of the answer, greedy and
  restricted to valid answers: it feeds, on the prompt's KV cache, the whole tree of valid continuations below the
  chosen first token (with a tree attention mask, `AnswerTree`) instead of one token per decoding step, so an answer
  costs two passes whatever its length. When greedy generation produces a valid answer the two paths agree exactly
  (argmax over a subset that contains the global argmax).

A sentiment-only label set (`TaskConfig.score_tasks`, e.g. MOSEI) has no labels: its answer is the score alone, its
predictions have emotion "unknown", no label probabilities, and the score on the task's own scale.

Language adapters (`lora.languages`): one LoRA adapter per utterance language, each prompted in its language's
template. Inference runs a mixed-language batch in one pass with peft's per-row `adapter_names`; a batch whose rows
all use the default adapter runs exactly the single-adapter code. Training passes group the rows by adapter instead
(peft refuses `adapter_names` in training mode).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn
from torch.nn import functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .backbone import LoadedBackbone, load_backbone
from .calibration import Calibration
from .config import EGMFConfig
from .fusion import FusionOutput, FusionStack
from .prompt import PromptBuilder, PromptIds, Turn
from .prompt_cache import PromptCache

log = logging.getLogger(__name__)
IGNORE = -100
DEFAULT_ADAPTER = "default"  # peft's name for the adapter get_peft_model creates: the default language's


@dataclass
class ModelInput:
    """One utterance with its past-only context. Media features are optional (missing = masked)."""

    context: Sequence[Turn]
    current: Turn
    audio: np.ndarray | None = None  # (T_a, audio_dim) float32, 50 Hz
    visual: np.ndarray | None = None  # (T_v, visual_dim) float32
    visual_valid: np.ndarray | None = None  # (T_v,) bool: False where no face was found
    emotion: str | None = None  # training target
    sentiment: float | None = None  # training target on the label set's score scale (None = unknown, not trained)
    # Which emotion label set the task prompt offers (see TaskConfig.dataset_emotions), or a sentiment-only task
    # (TaskConfig.score_tasks), whose inputs have no emotion.
    label_set: str = "default"
    # The utterance's language (e.g. the speech recognizer's): picks the LoRA adapter and the prompt template.
    # None = the model's default language; a language without an adapter falls back to the default (logged once).
    language: str | None = None


@dataclass
class Prediction:
    emotion: str  # "unknown" for a sentiment-only label set (and for an unparsed generation)
    emotion_probs: dict[str, float]  # empty for a sentiment-only label set
    sentiment_score: float  # on the label set's score scale (the prompt's; a sentiment-only task's own, e.g. [-3, 3])
    sentiment_label: str
    alpha: list[float]
    modalities: dict[str, bool]
    raw_text: str | None = None  # generated text (generation path only)
    expert_outputs: np.ndarray | None = field(default=None, repr=False)
    # Wall time of the stages of the call that made this prediction (scoring path only; for a batch, the whole
    # batch's times): "fusion" (fusion stack), "llm_prefill" (prompt assembly + the LLM pass over the prompt),
    # "llm_answer" (the answer-tree pass on the KV cache and the greedy walk through it). Not part of any event.
    timings_ms: dict[str, float] | None = field(default=None, repr=False)
    # Tokens of this row per LLM pass (scoring path only): prompt ids taken from a kept KV cache ("cached", see
    # `PromptCache`) and encoded by the prompt pass ("encoded", the pseudo tokens included); answer-tree nodes the
    # prompt pass carried ("folded", see `EGMFModel.folded_answers`) and that a separate answer pass fed
    # ("answer_pass": 0 when a folded tree held the answer). Not part of any event.
    prompt_tokens: dict[str, int] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class AnswerTree:
    """The part of the answer trie below one first answer token that one LLM pass must feed.

    A node is fed when a decision lies at or below it (it has several children, or a fed child): its logits choose
    among its children. Chains with no decision left (the fraction digit's end-of-answer, "1" -> "." -> "0") are
    followed without the model. For "disgust +0.4" the pass feeds "dis g ust", both signs, "+0"/"-0" and their
    "." nodes: 9 tokens in one pass instead of 8 sequential decoding steps.
    """

    root: dict  # the trie node reached by the first token
    tokens: list[int]  # fed nodes' token ids, parents before children (index 0 = the first token, when fed)
    depths: list[int]  # position offset after the prompt's last token (first token = 1)
    ancestors: torch.Tensor  # (n, n) bool: node q may attend to node k (k is q or an ancestor of q)
    index: dict[int, int]  # id(trie node) -> its row among the fed nodes
    choices: list[int]  # every token a fed node chooses among: the only logits `walk` reads

    @classmethod
    def plan(cls, first_token: int, root: dict) -> "AnswerTree":
        fed: dict[int, bool] = {}

        def needs(node: dict) -> bool:
            below = [needs(c) for k, c in node.items() if k is not None]  # every child visited: no short-circuit
            fed[id(node)] = len(below) > 1 or any(below)
            return fed[id(node)]

        needs(root)
        tokens, depths, parents, index, choices = [], [], [], {}, set()
        stack = [(first_token, root, 1, -1)]
        while stack:
            tok, node, depth, parent = stack.pop()
            if not fed[id(node)]:
                continue
            index[id(node)] = len(tokens)
            tokens.append(tok)
            depths.append(depth)
            parents.append(parent)
            children = [(k, c) for k, c in node.items() if k is not None]
            choices.update(k for k, _ in children)
            stack += [(k, c, depth + 1, index[id(node)]) for k, c in children]
        ancestors = torch.eye(len(tokens), dtype=torch.bool)
        for q, p in enumerate(parents):
            if p >= 0:
                ancestors[q] |= ancestors[p]
        return cls(root, tokens, depths, ancestors, index, sorted(choices))

    def walk(self, logits: torch.Tensor | None) -> tuple[str, float]:
        """Greedy path from the first token to a leaf: at each branching node the child with the highest logit."""
        node = self.root
        while None not in node:
            options = [k for k in node if k is not None]
            tok = options[0] if len(options) == 1 else options[int(torch.argmax(logits[self.index[id(node)], options]))]
            node = node[tok]
        return node[None]


@dataclass(frozen=True)
class _TreeNodes:
    """The answer-tree nodes one LLM pass feeds, per row its trees one after another (left-aligned, padded to the
    longest row): token ids, depths after the prompt, and which node may attend to which (its ancestors)."""

    ids: torch.Tensor  # (B, N) token ids (padding: 0; a padding node sees only itself)
    depth: torch.Tensor  # (B, N) position offset after the prompt's last token
    mask: torch.Tensor  # (B, N, N) bool: node q may attend to node k
    starts: list[dict[int, int]]  # per row: id(tree) -> its first node's column
    choices: set[int]  # every token some fed node chooses among

    @property
    def n(self) -> int:
        return self.ids.shape[1]

    @classmethod
    def of(cls, forests: Sequence[Sequence[AnswerTree]]) -> "_TreeNodes":
        n = max((sum(len(t.tokens) for t in f) for f in forests), default=0)
        b = len(forests)
        ids = torch.zeros((b, n), dtype=torch.long)
        depth = torch.zeros((b, n), dtype=torch.long)
        mask = torch.eye(n, dtype=torch.bool).repeat(b, 1, 1)
        starts: list[dict[int, int]] = []
        choices: set[int] = set()
        for i, forest in enumerate(forests):
            at, row = 0, {}
            for t in forest:
                k = len(t.tokens)
                if k:
                    ids[i, at:at + k] = torch.tensor(t.tokens, dtype=torch.long)
                    depth[i, at:at + k] = torch.tensor(t.depths, dtype=torch.long)
                    mask[i, at:at + k, at:at + k] = t.ancestors
                    choices.update(t.choices)
                row[id(t)] = at
                at += k
            starts.append(row)
        return cls(ids, depth, mask, starts, choices)

    def offset(self, row: int, tree: AnswerTree) -> int | None:
        """Column of `tree`'s first node in `row`, or None when the row does not carry it."""
        return self.starts[row].get(id(tree))


class TransposedLinear(nn.Module):
    """`nn.Linear` for CPU inference with the weight stored transposed and contiguous, (in, out): MKL's sgemm is up
    to 2x faster on the few-row inputs of the answer pass than with the transposed view `F.linear` hands it. The
    weight is a buffer: nothing here trains."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.register_buffer("weight_t", linear.weight.detach().t().contiguous())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(x, self.weight_t)
        return y if self.bias is None else y + self.bias


@dataclass
class PreparedBatch:
    embeds: torch.Tensor  # (B, L, d)
    attention_mask: torch.Tensor  # (B, L)
    position_ids: torch.Tensor  # (B, L)
    labels: torch.Tensor | None  # (B, A) answer targets, right-aligned, IGNORE elsewhere
    fusion: FusionOutput
    modalities: list[dict[str, bool]]
    fusion_ms: float = 0.0  # wall time of run_fusion
    languages: list[str] = field(default_factory=list)  # per row: the language whose adapter and template it uses


class EGMFModel(nn.Module):
    def __init__(self, cfg: EGMFConfig, backbone: LoadedBackbone):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.tokenizer = backbone.tokenizer
        self.prompts = PromptBuilder(backbone.tokenizer, cfg.prompt, cfg.task, use_text=cfg.ablation.use_text)
        llm = backbone.model
        if cfg.lora.enabled:
            with warnings.catch_warnings():  # peft 0.21 calls an attribute transformers 5 deprecates: not ours to fix
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                llm = get_peft_model(llm, self._lora_config())
        self.llm = llm
        # Adapter languages, default first: one adapter (prompt.language's) unless lora.languages lists more.
        self.languages: list[str] = list(cfg.lora.languages or [cfg.prompt.language])
        self._fallbacks: set[str] = set()  # languages without an adapter whose fallback was already logged
        self._merged = False  # LoRA folded into the LLM's weights for serving (`merge_lora_for_inference`)
        self._kv = PromptCache()  # KV caches of prompt beginnings (`PromptIds.reusable`) for inference passes
        # Answer trees of the auxiliary head's k likeliest labels that the prompt pass carries (see `score`); 0 = none.
        self.folded_answers = 3
        # Temperatures of the emotion probabilities (`egmf_core.calibration`); `load_checkpoint` sets the file's.
        self.calibration = Calibration()
        # Auxiliary head classes: every emotion label of every label set (MELD's 7 + RAVDESS's "calm").
        self.aux_labels = sorted({lab for labels in self.prompts.label_sets.values() for lab in labels})
        self.fusion = FusionStack(
            cfg.fusion, cfg.ablation, backbone.hidden_size, backbone.embed_rms, aux_classes=len(self.aux_labels)
        )
        self.fusion.to(next(llm.parameters()).device)
        for language in self.languages[1:]:  # after the fusion stack, whose initialisation stays seed-for-seed the same
            self._inject_adapter(language)
        self._build_answer_trie()

    @classmethod
    def build(cls, cfg: EGMFConfig) -> "EGMFModel":
        return cls(cfg, load_backbone(cfg.backbone))

    @property
    def device(self) -> torch.device:
        return self.fusion.embed_rms.device

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    # -- language adapters --------------------------------------------------------------------------------------
    def _lora_config(self) -> LoraConfig:
        c = self.cfg.lora
        return LoraConfig(
            r=c.r,
            lora_alpha=c.alpha,
            lora_dropout=c.dropout,
            target_modules=list(c.target_modules),
            layers_to_transform=c.layers,
            bias="none",
            task_type="CAUSAL_LM",
        )

    def _inject_adapter(self, language: str) -> None:
        self.llm.add_adapter(language, self._lora_config())
        self.llm.set_requires_grad(language, True)  # peft adds it frozen; like the default adapter, it is trained
        self.train(self.training)  # its new dropout modules start in training mode: an eval model would sample them

    def _adapter_name(self, language: str) -> str:
        if language not in self.languages:
            raise ValueError(f"no LoRA adapter for language {language!r}; adapters: {self.languages}")
        return DEFAULT_ADAPTER if language == self.languages[0] else language

    def add_language_adapter(self, language: str, init_from: str | None = None) -> None:
        """Add a LoRA adapter for `language` (also to `cfg.lora.languages`, so a saved checkpoint holds it).

        `init_from` copies an existing adapter (e.g. the default language's, to fine-tune from what it learned);
        None keeps peft's initialisation (B = 0: the adapter starts as the plain LLM, which never saw the prompt).
        """
        if init_from is not None and init_from not in self.languages:
            raise ValueError(f"init_from: no LoRA adapter for language {init_from!r}; adapters: {self.languages}")
        languages = self.languages + [language]
        dataclasses.replace(self.cfg.lora, languages=languages).check_languages(self.cfg.prompt.language)
        self._inject_adapter(language)
        self.languages, self.cfg.lora.languages = languages, list(languages)
        if init_from is not None:
            self.load_lora_state(language, self.lora_state(init_from))

    def lora_state(self, language: str) -> dict[str, torch.Tensor]:
        """`language`'s LoRA weights under peft's adapter-independent keys (the checkpoint layout)."""
        return get_peft_model_state_dict(self.llm, adapter_name=self._adapter_name(language))

    def load_lora_state(self, language: str, state: dict[str, torch.Tensor]) -> None:
        """Load `language`'s LoRA weights (keys as `lora_state` gives them); every weight must be there."""
        expected = self.lora_state(language).keys()
        missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
        if missing or unexpected:
            raise ValueError(
                f"LoRA weights of language {language!r} do not match the model "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        set_peft_model_state_dict(
            self.llm, {k: v.to(self.device) for k, v in state.items()}, adapter_name=self._adapter_name(language)
        )

    def merge_lora_for_inference(self) -> bool:
        """Fold the LoRA update into the LLM's weights (W + BA): the same outputs without the adapters' extra
        matmuls on every pass (about 12 % of the prompt pass on 2 CPU cores). For a model that serves and will not
        train again; per-row language adapters need the adapters kept apart, so a model with several is left as it
        is. Returns whether it merged."""
        if not isinstance(self.llm, PeftModel) or len(self.languages) > 1 or self._merged:
            return False
        self.llm.merge_adapter()
        self._merged = True
        return True

    def use_transposed_linear_weights(self) -> int:
        """Serving on CPU: replace the decoder layers' linear projections by `TransposedLinear` (same outputs, within
        float rounding; the answer pass ~25 % faster, the prompt pass ~4 %, measured on 2 cores). Only for a model
        whose LoRA is merged (or that has none): adapters kept apart (several languages) need peft's layers, so such
        a model is left as it is. Returns how many layers were replaced."""
        if isinstance(self.llm, PeftModel) and not self._merged:
            return 0
        base = self.llm.get_base_model() if isinstance(self.llm, PeftModel) else self.llm
        n = 0
        for layer in base.get_decoder().layers:
            for parent in layer.children():
                for name, child in list(parent.named_children()):
                    linear = getattr(child, "base_layer", child)  # a merged peft layer: its base holds W + BA
                    if type(linear) is nn.Linear:
                        setattr(parent, name, TransposedLinear(linear))
                        n += 1
        self._kv.clear()
        return n

    def language_of(self, x: ModelInput) -> str:
        """The language whose adapter and prompt template `x` uses: see `resolve_language`."""
        return self.resolve_language(x.language)

    def resolve_language(self, language: str | None) -> str:
        """The language whose adapter and prompt template an utterance in `language` uses: its own when the model
        has an adapter for it, else the default. A missing adapter costs accuracy, never a crash of a live stream:
        it is logged once."""
        if not language or language in self.languages:
            return language or self.languages[0]
        if language not in self._fallbacks:
            self._fallbacks.add(language)
            log.warning("no LoRA adapter for language %r: using the default language %r (adapter and prompt)",
                        language, self.languages[0])
        return self.languages[0]

    def _adapter_kwargs(self, prep: PreparedBatch) -> dict:
        """peft's per-row adapters for an inference pass; none when every row uses the default adapter, so that such a
        batch runs exactly the single-adapter code (bit-identical outputs)."""
        names = [self._adapter_name(language) for language in prep.languages]
        return {} if set(names) == {DEFAULT_ADAPTER} else {"adapter_names": names}

    @contextmanager
    def _active_adapter(self, language: str) -> Iterator[None]:
        """Run the enclosed passes with `language`'s adapter active (training passes: peft refuses per-row
        `adapter_names` in training mode). peft's set_adapter also changes which adapters require gradients, which
        is the trainer's choice (e.g. a frozen LoRA), so those flags are kept as they were."""
        name = self._adapter_name(language)
        if name == DEFAULT_ADAPTER:  # the default adapter is active outside this context
            yield
            return
        self._set_active(name)
        try:
            yield
        finally:
            self._set_active(DEFAULT_ADAPTER)

    def _set_active(self, name: str) -> None:
        flags = [(p, p.requires_grad) for p in self.llm.parameters()]
        self.llm.set_adapter(name)
        for p, flag in flags:
            p.requires_grad_(flag)

    # -- input preparation --------------------------------------------------------------------------------------
    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llm.get_input_embeddings()(ids)

    def _media(self, batch: Sequence[ModelInput]) -> tuple[torch.Tensor, ...]:
        """Pad audio/visual features into tensors with validity masks (absent modality = all-false mask)."""
        f = self.cfg.fusion
        dev = self.device
        ta = max([f.audio_stride] + [len(x.audio) - len(x.audio) % f.audio_stride for x in batch if x.audio is not None])
        tv = max([1] + [len(x.visual) for x in batch if x.visual is not None])
        audio = np.zeros((len(batch), ta, f.audio_dim), np.float32)
        a_valid = np.zeros((len(batch), ta), bool)
        visual = np.zeros((len(batch), tv, f.visual_dim), np.float32)
        v_valid = np.zeros((len(batch), tv), bool)
        for i, x in enumerate(batch):
            if x.audio is not None and len(x.audio):
                _check_features("audio", x.audio, f.audio_dim)
                n = min(len(x.audio), ta)
                audio[i, :n] = x.audio[:n]
                a_valid[i, :n] = True
            if x.visual is not None and len(x.visual):
                _check_features("visual", x.visual, f.visual_dim)
                n = len(x.visual)
                visual[i, :n] = x.visual
                vv = np.ones(n, bool) if x.visual_valid is None else np.asarray(x.visual_valid, bool)
                if vv.shape != (n,):
                    raise ValueError(f"visual_valid: expected shape ({n},), got {vv.shape}")
                v_valid[i, :n] = vv
        t = lambda a: torch.from_numpy(a).to(dev)  # noqa: E731
        return t(audio), t(a_valid), t(visual), t(v_valid)

    def run_fusion(self, batch: Sequence[ModelInput]) -> tuple[FusionOutput, list[dict[str, bool]]]:
        maxt = self.cfg.fusion.max_text_tokens
        tt = max(1, max(len(x.current.text_ids[:maxt]) for x in batch))
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(batch), tt), pad, dtype=torch.long)
        t_valid = torch.zeros((len(batch), tt), dtype=torch.bool)
        for i, x in enumerate(batch):
            tid = x.current.text_ids[:maxt]
            ids[i, : len(tid)] = torch.tensor(tid, dtype=torch.long)
            t_valid[i, : len(tid)] = bool(x.current.text.strip())
        ids, t_valid = ids.to(self.device), t_valid.to(self.device)
        with torch.no_grad():
            text_embeds = self._embed(ids).float()
        audio, a_valid, visual, v_valid = self._media(batch)
        out = self.fusion(text_embeds, t_valid, audio, a_valid, visual, v_valid)
        ab = self.cfg.ablation
        modalities = [
            {
                "audio": bool(a_valid[i].any()) and ab.use_audio,
                "video": bool(v_valid[i].any()) and ab.use_video,
                "text": bool(t_valid[i].any()) and ab.use_text,
            }
            for i in range(len(batch))
        ]
        return out, modalities

    def prompt_ids(self, batch: Sequence[ModelInput]) -> list[PromptIds]:
        return [self.prompts.build(x.context, x.current, x.label_set, self.language_of(x)) for x in batch]

    def prepare(
        self, batch: Sequence[ModelInput], with_answers: bool = False, prefix_cached: int | Sequence[int] = 0,
        prompts: Sequence[PromptIds] | None = None,
    ) -> PreparedBatch:
        """Build left-padded input embeddings [prefix; pseudo; suffix+task (; answer)] for the batch.

        `prefix_cached`: how many first ids of each row's prefix (one count for all rows, or one per row) are
        already in a KV cache whose rows are left-padded to the longest (`_stack_caches`); the embeddings start
        after them, left-padded ([pad; cached; pad; rest of the prefix; pseudo; ...]); the attention mask covers the
        cache + embeddings and the positions continue after each row's cached ids. `prompts`: the rows'
        `prompt_ids`, when the caller already built them.
        """
        t0 = time.perf_counter()
        fusion, modalities = self.run_fusion(batch)
        fusion_ms = (time.perf_counter() - t0) * 1000.0
        k = self.cfg.fusion.pseudo_tokens
        pad = self.tokenizer.pad_token_id
        rows, answers = [], []
        languages = [self.language_of(x) for x in batch]
        cached = [prefix_cached] * len(batch) if isinstance(prefix_cached, int) else list(prefix_cached)
        for x, p, n_cached in zip(batch, prompts or self.prompt_ids(batch), cached):
            ans: list[int] = []
            n_loss = 0
            if with_answers:
                ans, n_loss = self.prompts.answer_ids(x.emotion, x.sentiment, x.label_set)
            rows.append((p.before[n_cached:], p.after + ans))
            answers.append((ans, n_loss))
        lengths = [len(b) + k + len(a) for b, a in rows]
        seq = max(lengths)
        ids = torch.full((len(batch), seq), pad, dtype=torch.long)
        is_pseudo = torch.zeros((len(batch), seq), dtype=torch.bool)
        attn = torch.zeros((len(batch), seq), dtype=torch.long)
        for i, ((before, after), n) in enumerate(zip(rows, lengths)):
            start = seq - n
            ids[i, start : start + len(before)] = torch.tensor(before)
            is_pseudo[i, start + len(before) : start + len(before) + k] = True
            ids[i, start + len(before) + k :] = torch.tensor(after)
            attn[i, start:] = 1
        dev = self.device
        ids, is_pseudo, attn = ids.to(dev), is_pseudo.to(dev), attn.to(dev)
        embeds = self._embed(ids)
        pseudo = fusion.pseudo_tokens.to(embeds.dtype)
        embeds = embeds.masked_scatter(is_pseudo[..., None], pseudo)
        if max(cached):
            past = torch.zeros((len(batch), max(cached)), dtype=attn.dtype)
            for i, n_cached in enumerate(cached):
                past[i, past.shape[1] - n_cached:] = 1
            attn = torch.cat([past.to(dev), attn], dim=1)
        position_ids = (attn.cumsum(-1) - 1).clamp(min=0)[:, -seq:]
        labels = None
        if with_answers:
            a = max(len(ans) for ans, _ in answers)
            labels = torch.full((len(batch), a), IGNORE, dtype=torch.long)
            for i, (ans, n_loss) in enumerate(answers):
                if ans:
                    labels[i, a - len(ans) : a - len(ans) + n_loss] = torch.tensor(ans[:n_loss])
            labels = labels.to(dev)
        return PreparedBatch(embeds, attn, position_ids, labels, fusion, modalities, fusion_ms, languages)

    # -- training -----------------------------------------------------------------------------------------------
    def aux_loss(self, batch: Sequence[ModelInput], fusion: FusionOutput | None = None) -> torch.Tensor:
        """Cross-entropy of the auxiliary emotion head on f_enhanced (fusion only, no LLM pass needed)."""
        if fusion is None:
            fusion, _ = self.run_fusion(batch)
        target = torch.tensor([self.aux_labels.index(x.emotion) for x in batch], device=self.device)
        return F.cross_entropy(self.fusion.aux_head(fusion.enhanced), target)

    def loss(self, batch: Sequence[ModelInput], aux_weight: float = 0.0) -> torch.Tensor:
        """Cross-entropy on the answer tokens only (logits are computed only where the answer is), plus optionally
        `aux_weight` x the auxiliary emotion head's cross-entropy on f_enhanced.

        Each row runs through its language's adapter: the rows of one adapter go through the LLM together, and the
        logits are put back in batch order, so the loss is the same mean over all answer tokens of the batch.
        """
        if self._merged:
            raise RuntimeError("this model's LoRA is merged into the LLM for serving; load the checkpoint again to train")
        prep = self.prepare(batch, with_answers=True)
        a = prep.labels.shape[1]
        parts, order = [], []
        for language in dict.fromkeys(prep.languages):
            rows = [i for i, lang in enumerate(prep.languages) if lang == language]
            idx = torch.tensor(rows, device=self.device)
            with self._active_adapter(language):
                out = self.llm(
                    inputs_embeds=prep.embeds[idx],
                    attention_mask=prep.attention_mask[idx],
                    position_ids=prep.position_ids[idx],
                    logits_to_keep=a + 1,
                    use_cache=False,
                )
            parts.append(out.logits[:, :-1].float())  # position j predicts answer token j
            order += rows
        logits = torch.cat(parts)[torch.argsort(torch.tensor(order, device=self.device))]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), prep.labels.reshape(-1), ignore_index=IGNORE)
        if aux_weight:
            loss = loss + aux_weight * self.aux_loss(batch, prep.fusion)
        return loss

    # -- inference: constrained scoring (fast path) -------------------------------------------------------------
    def _build_answer_trie(self) -> None:
        """One trie of valid answer token sequences per label set (leaves hold (label, score)), and for every first
        answer token the tree of trie nodes that the answer pass must feed (see `AnswerTree`); per label set, its
        labels' auxiliary-head columns and answer trees in label order (`_folded_trees`)."""
        self._answer_trees: dict[str, dict[int, AnswerTree]] = {}
        self._label_trees: dict[str, tuple[list[int], list[AnswerTree]]] = {}
        for name in self.prompts.label_sets:
            trie: dict = {}
            for label, value, ids in self.prompts.answer_candidates(name):
                node = trie
                for t in ids:
                    node = node.setdefault(t, {})
                node[None] = (label, value)
            self._answer_trees[name] = {tok: AnswerTree.plan(tok, sub) for tok, sub in trie.items()}
            labels = self.prompts.label_sets[name]
            self._label_trees[name] = ([self.aux_labels.index(lab) for lab in labels],
                                       [self._answer_trees[name][self.prompts.label_ids[lab][0]] for lab in labels])

    @torch.no_grad()
    def score(self, batch: Sequence[ModelInput]) -> list[Prediction]:
        """Constrained greedy answers with the probability of every label, in (usually) one LLM pass.

        The prompt pass also carries the answer trees of the `folded_answers` labels the fusion stack's auxiliary
        head finds likeliest (each attending to the prompt and its own ancestors only, as in `_answer_pass`). A row
        whose first answer token (the prompt's argmax) starts one of its folded trees is answered from that pass;
        the others get a separate answer pass on the prompt's KV cache. Both give the logits that step-by-step
        greedy decoding would see, so folding changes the time, not the answers (within float rounding). The shipped
        aux head is fitted to the LLM's own answers (`egmf_core.distill_aux`): its top 3 hold the LLM's answer for
        94 % of MELD dev lines, 95 % of MELD dev lines spoken by espeak-ng and 100 % of RAVDESS dev live cuts
        (`benchmarks/results/aux_distill.md`); each folded tree adds 7-9 ids to the pass (~15-25 ms on 2 cores), a
        missed one costs an answer pass (~150-270 ms): 3 gave the lowest p50 and p95 in
        `benchmarks/results/streaming_latency.md`.
        """
        t0 = time.perf_counter()
        prompts = self.prompt_ids(batch)
        cache, cached, keep = self._cached_start(batch, prompts)
        prep = self.prepare(batch, prefix_cached=cached, prompts=prompts)
        adapters = self._adapter_kwargs(prep)
        forests = self._folded_trees(batch, prep)
        nodes = _TreeNodes.of(forests)
        first_choices = {t for x in batch for t in self._answer_trees[x.label_set]}
        mask = None if nodes.n == 0 else self._tree_attention_mask(prep.attention_mask, nodes, prep.embeds.shape[1],
                                                                    prep.embeds.dtype)
        embeds = prep.embeds if nodes.n == 0 else torch.cat([prep.embeds, self._embed(nodes.ids.to(self.device))], 1)
        positions = prep.position_ids if nodes.n == 0 else torch.cat(
            [prep.position_ids, prep.position_ids[:, -1:] + nodes.depth.to(self.device)], 1)
        logits, out_cache = self._logits(
            dict(inputs_embeds=embeds, attention_mask=prep.attention_mask if mask is None else mask,
                 position_ids=positions, cache=cache, use_cache=True),
            adapters, first_choices | nodes.choices, keep=1 + nodes.n)
        if out_cache.is_croppable:  # this pass computed reusable starts: keep them for the next prompts
            for adapter, ids in keep:
                kept = copy.deepcopy(out_cache)  # before the answer pass appends to it
                kept.crop(len(ids) - kept.get_seq_length())  # a negative count: the tokens to remove at the end
                self._kv.put(adapter, ids, kept)
        label_probs, trees, node_logits, missed = [], [], [], []
        for i, x in enumerate(batch):
            labels = self.prompts.label_sets[x.label_set]  # none for a sentiment-only set: empty probabilities
            first = [self.prompts.label_ids[lab][0] for lab in labels]
            probs = self.calibration.emotion_probs(logits[i, 0, first], x.label_set).tolist()
            label_probs.append(dict(zip(labels, probs)))
            options = list(self._answer_trees[x.label_set])
            tree = self._answer_trees[x.label_set][options[int(torch.argmax(logits[i, 0, options]))]]
            trees.append(tree)
            at = nodes.offset(i, tree)
            node_logits.append(None if at is None else logits[i, 1 + at: 1 + at + len(tree.tokens)])
            if at is None and tree.tokens:
                missed.append(i)
        t1 = time.perf_counter()  # after .tolist(): on CUDA the prompt pass has finished by now
        if missed:
            if nodes.n:
                out_cache.crop(-nodes.n)  # drop the folded nodes (a negative count: the tokens to remove at the end)
            if len(missed) < len(batch):
                out_cache.batch_select_indices(torch.tensor(missed, device=self.device))
            row_adapters = ({k: [v[i] for i in missed] for k, v in adapters.items()} if adapters else {})
            answer = self._answer_pass([trees[i] for i in missed], prep.attention_mask[missed],
                                       prep.position_ids[missed, -1:], prep.embeds.dtype, out_cache, row_adapters)
            for j, i in enumerate(missed):
                node_logits[i] = answer[j]
        results = [tree.walk(node_logits[i]) for i, tree in enumerate(trees)]
        t2 = time.perf_counter()

        timings = {"fusion": round(prep.fusion_ms, 2), "llm_prefill": round((t1 - t0) * 1000.0 - prep.fusion_ms, 2),
                   "llm_answer": round((t2 - t1) * 1000.0, 2)}
        preds = []
        encoded = (prep.attention_mask.sum(-1).cpu() - torch.tensor(cached)).tolist()
        for i, (label, value) in enumerate(results):
            preds.append(self._prediction(prep, i, batch[i].label_set, label, label_probs[i], value))
            preds[-1].timings_ms = dict(timings)
            preds[-1].prompt_tokens = {"cached": cached[i], "encoded": int(encoded[i]),
                                       "folded": sum(len(t.tokens) for t in forests[i]),
                                       "answer_pass": len(trees[i].tokens) if i in missed else 0}
        return preds

    def _folded_trees(self, batch: Sequence[ModelInput], prep: PreparedBatch) -> list[list[AnswerTree]]:
        """Per row, the answer trees the prompt pass carries: those of the `folded_answers` labels of its label set
        that the auxiliary head scores highest (none without an aux head, e.g. a fusion engine without it)."""
        head = getattr(self.fusion, "aux_head", None)
        if self.folded_answers <= 0 or head is None or prep.fusion.enhanced is None:
            return [[] for _ in batch]
        aux = head(prep.fusion.enhanced.to(head.weight.dtype)).float().cpu()
        forests = []
        for i, x in enumerate(batch):
            columns, trees = self._label_trees[x.label_set]
            ranked = torch.argsort(aux[i, columns], descending=True)[: self.folded_answers].tolist()
            forests.append([trees[j] for j in ranked])
        return forests

    def _cached_start(
        self, batch: Sequence[ModelInput], prompts: Sequence[PromptIds]
    ) -> tuple[DynamicCache | None, list[int], list[tuple[str, list[int]]]]:
        """A KV cache of the beginnings of the rows' reusable starts (`PromptIds.reusable`), how many ids of each row
        it holds, and the beginnings the prompt pass should keep for later prompts: (adapter, ids) each.

        One row (a live utterance): the longest kept beginning of its reusable start; the rest of it goes into the
        prompt pass with the utterance, which then keeps its shared and its reusable start (`PromptIds.shared`: the
        template's part, for the stream's next context; no pass of its own on the hot path). Several rows (the
        service's batch of streams): each row's longest kept beginning, stacked into one left-padded cache, when every
        row has one; else their common reusable start, computed by a pass of its own when it is not kept yet (once per
        template and label set in an evaluation). No cache in training mode, where LoRA dropout makes every pass
        different, or when the rows use different languages (adapters).
        """
        none: tuple[None, list[int], list] = (None, [0] * len(batch), [])
        languages = {self.language_of(x) for x in batch}
        if self.training or len(languages) != 1:
            return none
        adapter = self._kv_adapter(languages.pop())
        if len(batch) == 1:
            p = prompts[0]
            n, cache = self._kv.longest(adapter, p.before[: p.reusable])
            return cache, [n], [(adapter, p.before[:k]) for k in sorted({p.shared, p.reusable}) if k > n]
        found = [self._kv.longest(adapter, p.before[: p.reusable]) for p in prompts]
        if all(cache is not None for _, cache in found) and _stackable(found[0][1]):
            return _stack_caches([cache for _, cache in found]), [n for n, _ in found], []
        start = _common_prefix([p.before[: p.reusable] for p in prompts])
        n, cache = self._kv.longest(adapter, start)
        if n < len(start):
            cache = self._extend(cache, start, n, adapter)
            self._kv.put(adapter, start, cache)
            n, cache = self._kv.longest(adapter, start)
        if cache is None:
            return none
        cache.batch_repeat_interleave(len(batch))
        return cache, [n] * len(batch), []

    def _kv_adapter(self, language: str) -> str:
        """The adapter whose KV caches `language`'s prompts use, after dropping every kept cache if the weights changed
        since the last pass (a training step or a LoRA load bumps the parameters' version counters)."""
        self._kv.check_weights(tuple(p._version for p in self.llm.parameters()))
        return self._adapter_name(language)

    def _extend(self, cache: DynamicCache | None, ids: Sequence[int], n: int, adapter: str) -> DynamicCache:
        """`cache` (the KV of ids[:n], or None when n == 0) extended by one pass over ids[n:]."""
        new = torch.tensor([list(ids[n:])], device=self.device)
        out = self.llm(
            inputs_embeds=self._embed(new),
            attention_mask=torch.ones((1, len(ids)), dtype=torch.long, device=self.device),
            position_ids=torch.arange(n, len(ids), device=self.device)[None],
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
            **({} if adapter == DEFAULT_ADAPTER else {"adapter_names": [adapter]}),
        )
        return out.cache

    @torch.no_grad()
    def prime(self, context: Sequence[Turn], label_set: str = "default", language: str | None = None) -> bool:
        """Compute and keep the KV cache of what any utterance after `context` will start with, so that its prompt
        pass covers only the utterance itself. For a live stream between its turns (`EGMFPredictor.commit`).
        Returns whether anything was computed (False: already kept, or nothing to gain in this layout)."""
        if self.training:
            return False
        language = self.resolve_language(language)
        adapter = self._kv_adapter(language)
        start = self.prompts.reusable_ids(context, label_set, language)
        n, cache = self._kv.longest(adapter, start)
        if n == len(start):
            return False
        self._kv.put(adapter, start, self._extend(cache, start, n, adapter))
        return True

    def _answer_pass(
        self, trees: list[AnswerTree], attention_mask: torch.Tensor, last_position: torch.Tensor,
        dtype: torch.dtype, cache, adapters: dict,
    ) -> torch.Tensor | list[None]:
        """One LLM pass over every row's answer tree on the prompt's KV cache (`attention_mask`: its padding;
        `last_position`: (B, 1) the prompt's last position); returns the logits at each tree node (B, N, vocab), or
        one None per row when no row has a decision left after its first token.

        A node attends to the prompt (its padding masked as in the prompt pass) and to its own ancestors, at the
        position its depth gives, so its logits are exactly those that step-by-step greedy decoding along that path
        would see; sibling branches never see each other.
        """
        nodes = _TreeNodes.of([[t] for t in trees])
        if nodes.n == 0:
            return [None] * len(trees)
        mask = self._tree_attention_mask(attention_mask, nodes, 0, dtype)
        kwargs = dict(inputs_embeds=self._embed(nodes.ids.to(self.device)), attention_mask=mask,
                      position_ids=last_position + nodes.depth.to(self.device), cache=cache, use_cache=True)
        return self._logits(kwargs, adapters, nodes.choices, keep=nodes.n)[0]

    def _tree_attention_mask(self, attention_mask: torch.Tensor, nodes: _TreeNodes, causal: int,
                             dtype: torch.dtype) -> torch.Tensor:
        """The 4D mask (B, 1, causal + N, past + N) of a pass whose inputs are `causal` prompt positions followed by
        the answer-tree nodes: prompt positions attend causally to the unpadded cache and prompt, as a 2D mask would
        make them (a padding position sees itself only: no all-masked row); a node sees the unpadded cache and
        prompt and its own ancestors. transformers uses a 4D mask as given (eager attention: additive)."""
        b, past = attention_mask.shape
        n = nodes.n
        keys = attention_mask.bool()
        rows = []
        if causal:
            q = torch.arange(past - causal, past, device=keys.device)[:, None]  # the prompt positions' own columns
            k = torch.arange(past, device=keys.device)[None, :]
            prompt = (keys[:, None, :] & (k <= q)[None]) | (k == q)[None]
            rows.append(torch.cat([prompt, torch.zeros((b, causal, n), dtype=torch.bool, device=keys.device)], -1))
        rows.append(torch.cat([keys[:, None, :].expand(b, n, past), nodes.mask.to(keys.device)], -1))
        mask = torch.cat(rows, 1)[:, None]
        if self.llm.config._attn_implementation == "eager":
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
        return mask

    def _logits(self, kwargs: dict, adapters: dict, choices: set[int], keep: int) -> tuple[torch.Tensor, DynamicCache]:
        """Run the LLM on `kwargs`; return the logits of its last `keep` positions, (B, keep, vocab) float, and the
        KV cache. Only `choices` (the tokens some decision chooses among) are computed, the rest -inf: the output
        projection over 49k tokens costs about as much as 3 decoder layers at this size. Per-row adapters are
        applied by peft's forward, which computes every logit."""
        if adapters:
            out = self.llm(**kwargs, **adapters, logits_to_keep=keep)
            return out.logits.float(), out.cache
        base = self.llm.get_base_model() if isinstance(self.llm, PeftModel) else self.llm
        out = base.get_decoder()(**kwargs)
        hidden = out.last_hidden_state[:, -keep:]
        ids = torch.tensor(sorted(choices), device=hidden.device)
        head = base.get_output_embeddings()
        sub = F.linear(hidden, head.weight[ids], None if head.bias is None else head.bias[ids]).float()
        cap = getattr(base.config, "final_logit_softcapping", None)
        if cap:
            sub = torch.tanh(sub / cap) * cap
        logits = torch.full((*hidden.shape[:2], head.weight.shape[0]), -torch.inf, device=hidden.device)
        logits[..., ids] = sub
        return logits, out.cache

    @torch.no_grad()
    def generate(self, batch: Sequence[ModelInput], max_new_tokens: int = 12) -> list[Prediction]:
        prep = self.prepare(batch)
        out = self.llm.generate(
            inputs_embeds=prep.embeds,
            attention_mask=prep.attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.prompts.eos_id,
            **self._adapter_kwargs(prep),
        )
        preds = []
        for i in range(len(batch)):
            text = self.tokenizer.decode(out[i], skip_special_tokens=True)
            label, value = self.prompts.parse_answer(text, batch[i].label_set)
            probs = {lab: float(lab == label) for lab in self.prompts.label_sets[batch[i].label_set]}
            preds.append(self._prediction(prep, i, batch[i].label_set, label, probs, value, raw_text=text))
        return preds

    def _prediction(
        self, prep: PreparedBatch, i: int, label_set: str, label: str | None, probs: dict[str, float],
        value: float | None, raw_text: str | None = None,
    ) -> Prediction:
        score = float("nan") if value is None else self.prompts.snap_score(value, label_set)
        return Prediction(
            emotion=label or "unknown",
            emotion_probs=probs,
            sentiment_score=score,
            sentiment_label=self.prompts.sentiment_label(score, label_set) if value is not None else "unknown",
            alpha=[float(a) for a in prep.fusion.alpha[i].tolist()],
            modalities=prep.modalities[i],
            raw_text=raw_text,
            expert_outputs=prep.fusion.expert_outputs[i].detach().cpu().numpy(),
        )


def _check_features(name: str, arr: np.ndarray, dim: int) -> None:
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.shape[1] != dim:
        shape = getattr(arr, "shape", type(arr).__name__)
        raise ValueError(f"{name} features: expected an array of shape (frames, {dim}), got {shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} features contain NaN or inf")


def _common_prefix(rows: Sequence[Sequence[int]]) -> list[int]:
    first = rows[0]
    n = min(len(r) for r in rows)
    for r in rows[1:]:
        n = next((i for i in range(n) if r[i] != first[i]), n)
    return list(first[:n])


def _stackable(cache: DynamicCache) -> bool:
    """Whether every layer is a plain (full attention) dynamic layer, whose keys and values `_stack_caches` can pad."""
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def _stack_caches(caches: Sequence[DynamicCache]) -> DynamicCache:
    """One batch cache from single-row caches of different lengths, each row left-padded with zeros to the longest
    (the attention mask hides the padding: `prepare` with per-row cached counts)."""
    longest = max(c.get_seq_length() for c in caches)
    out = caches[0]
    for li, layer in enumerate(out.layers):
        for name in ("keys", "values"):
            rows = [getattr(c.layers[li], name) for c in caches]
            setattr(layer, name, torch.cat([F.pad(r, (0, 0, longest - r.shape[-2], 0)) for r in rows]))
    return out
