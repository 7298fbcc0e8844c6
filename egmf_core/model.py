"""EGMF: fusion stack -> pseudo tokens -> prompt -> LoRA-tuned LLM that answers "<emotion> <score>".

Two inference paths share all preparation:
- `generate`: plain greedy generation and parsing of the text (the paper's path, in `egmf_core.generation`);
- `score`: one forward pass over the prompt gives a probability for every emotion label (the first answer token
  of each label, renormalized over the closed label set); a second pass reads the rest of the answer, greedy and
  restricted to valid answers, by feeding the tree of valid continuations below the chosen first token on the
  prompt's KV cache (`egmf_core.decoding`), so an answer costs two passes whatever its length. When greedy
  generation produces a valid answer the two paths agree exactly (argmax over a subset that contains the global
  argmax).

A sentiment-only label set (`TaskConfig.score_tasks`, e.g. MOSEI) has no labels: its answer is the score alone, its
predictions have emotion "unknown", no label probabilities, and the score on the task's own scale.

Language adapters (`lora.languages`, `egmf_core.adapters`): one LoRA adapter per utterance language, each prompted
in its language's template. The I/O types are in `egmf_core.model_io`, the padded batch in `egmf_core.batching`, the
choice of kept prompt caches in `egmf_core.cached_starts`, the CPU serving rewrites in `egmf_core.serving` and the
training losses in `egmf_core.training_loss`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from peft import PeftModel, get_peft_model
from torch import nn
from transformers import DynamicCache

from . import generation, training_loss
from .adapters import (
    DEFAULT_ADAPTER,
    adapter_name,
    adapter_state,
    add_adapter,
    load_adapter_state,
    lora_config,
    per_row_adapters,
)
from .backbone import LoadedBackbone, load_backbone
from .batching import PreparedBatch, PromptLayout, answer_labels, pad_media, pad_text
from .cached_starts import cached_start
from .audio_prior import AudioPrior
from .calibration import Calibration
from .config import EGMFConfig
from .decoding import AnswerTree, TreeNodes, build_answer_trees, choice_logits, make_prediction, tree_attention_mask
from .fusion import FusionOutput, FusionStack
from .model_io import ModelInput, Prediction
from .prompt import PromptBuilder, PromptIds, Turn
from .prompt_cache import PromptCache
from .serving import PrecisionSwitch, transpose_linear_weights
from .text_prior import SentenceEncoder, TextPrior

log = logging.getLogger(__name__)


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
                llm = get_peft_model(llm, lora_config(cfg.lora))
        self.llm = llm
        # Adapter languages, default first: one adapter (prompt.language's) unless lora.languages lists more.
        self.languages: list[str] = list(cfg.lora.languages or [cfg.prompt.language])
        self._fallbacks: set[str] = set()  # languages without an adapter whose fallback was already logged
        self._merged = False  # LoRA folded into the LLM's weights for serving (`merge_lora_for_inference`)
        self._kv = PromptCache()  # KV caches of prompt beginnings (`PromptIds.reusable`) for inference passes
        # int8 projections' fp32 copies, when kept (`reference_precision`), and the KV caches of their passes.
        self._precision_switch: PrecisionSwitch | None = None
        self._kv_reference = PromptCache()
        # Answer trees of the k likeliest labels (aux head + prior, `fold_scores`) the prompt pass carries; 0 = none.
        self.folded_answers = 3
        # Temperatures of the emotion probabilities (`egmf_core.calibration`); `load_checkpoint` sets the file's.
        self.calibration = Calibration()
        # The voice prior guiding the emotion answer (`egmf_core.audio_prior`); `load_checkpoint` sets the file's.
        self.audio_prior: AudioPrior | None = None
        # The text prior guiding the text-led answers (`egmf_core.text_prior`) and the sentence encoder it reads;
        # `load_checkpoint` sets the file's prior and loads the encoder when there is one.
        self.text_prior: TextPrior | None = None
        self.sentence_encoder: SentenceEncoder | None = None
        # Auxiliary head classes: every emotion label of every label set (MELD's 7 + RAVDESS's "calm").
        self.aux_labels = sorted({lab for labels in self.prompts.label_sets.values() for lab in labels})
        self.fusion = FusionStack(
            cfg.fusion, cfg.ablation, backbone.hidden_size, backbone.embed_rms, aux_classes=len(self.aux_labels)
        )
        self.fusion.to(next(llm.parameters()).device)
        for language in self.languages[1:]:  # after the fusion stack, whose initialisation stays seed-for-seed the same
            self._inject_adapter(language)
        # Per label set: the answer tree below each valid first answer token, and its labels' aux-head columns with
        # their trees in label order (`_folded_trees`).
        self._answer_trees, self._label_trees = build_answer_trees(self.prompts, self.aux_labels)

    @classmethod
    def build(cls, cfg: EGMFConfig) -> "EGMFModel":
        return cls(cfg, load_backbone(cfg.backbone))

    @property
    def device(self) -> torch.device:
        return self.fusion.embed_rms.device

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    # -- language adapters --------------------------------------------------------------------------------------
    def _inject_adapter(self, language: str) -> None:
        add_adapter(self.llm, language, self.cfg.lora)
        self.train(self.training)  # its new dropout modules start in training mode: an eval model would sample them

    def adapter_of(self, language: str) -> str:
        """The name of the LoRA adapter `language`'s utterances run through (`adapters.adapter_name`)."""
        return adapter_name(self.languages, language)

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
        return adapter_state(self.llm, self.adapter_of(language))

    def load_lora_state(self, language: str, state: dict[str, torch.Tensor]) -> None:
        """Load `language`'s LoRA weights (keys as `lora_state` gives them); every weight must be there."""
        load_adapter_state(self.llm, self.adapter_of(language), state, self.device, language)

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

    def adapter_kwargs(self, prep: PreparedBatch) -> dict:
        """The LLM call's keyword arguments that run each row of `prep` through its language's adapter (none when
        every row uses the default one: `adapters.per_row_adapters`)."""
        return per_row_adapters([self.adapter_of(language) for language in prep.languages])

    @property
    def lora_merged(self) -> bool:
        """Whether the LoRA update is folded into the LLM's weights for serving (`merge_lora_for_inference`): such a
        model cannot train."""
        return self._merged

    # -- serving ------------------------------------------------------------------------------------------------
    def merge_lora_for_inference(self) -> bool:
        """Fold the LoRA update into the LLM's weights (W + BA): the same outputs without the adapters' extra
        matmuls on every pass. For a model that serves and will not train again; per-row language adapters need the
        adapters kept apart, so a model with several is left as it is. Returns whether it merged."""
        if not isinstance(self.llm, PeftModel) or len(self.languages) > 1 or self._merged:
            return False
        self.llm.merge_adapter()
        self._merged = True
        return True

    def use_transposed_linear_weights(self, dtype: torch.dtype = torch.float32,
                                      calibration: Callable[[], object] | None = None,
                                      keep_reference: bool = False, int8_kernel: str = "torch") -> int:
        """Serving on CPU: replace the decoder layers' linear projections by `serving.TransposedLinear` with weights
        in ``dtype`` (fp32: same outputs within float rounding, faster few-row matmuls; bfloat16: see
        `egmf_core.precision`), or by `serving.Int8Linear` for ``torch.int8``, smoothed by the activations seen while
        ``calibration()`` runs this model in fp32 and run by ``int8_kernel`` (`precision.int8_kernel`);
        ``keep_reference`` (int8 only) keeps each layer's fp32 copy too, for `reference_precision`. Only for a model
        whose LoRA is merged (or that has none): adapters kept apart (several languages) need peft's layers, so such a
        model is left as it is. Returns how many layers were replaced."""
        if isinstance(self.llm, PeftModel) and not self._merged:
            return 0
        base = self.llm.get_base_model() if isinstance(self.llm, PeftModel) else self.llm
        switch = PrecisionSwitch() if keep_reference and dtype == torch.int8 else None
        n = transpose_linear_weights(base.get_decoder(), dtype, calibration, switch, int8_kernel)
        self._precision_switch = switch
        self._kv.clear()
        return n

    @property
    def has_reference_precision(self) -> bool:
        """Whether `reference_precision` can run: int8 projections loaded with their fp32 copies."""
        return self._precision_switch is not None

    @contextmanager
    def reference_precision(self) -> Iterator[None]:
        """Inside the block the LLM's projections run their fp32 copies (the reference), with KV caches of their own:
        a cache computed in int8 would carry int8's rounding into the reference pass. For a model loaded with
        ``use_transposed_linear_weights(torch.int8, keep_reference=True)``; not re-entrant, not thread-safe (the
        caller serializes passes, as `EGMFPredictor` does)."""
        if self._precision_switch is None:
            raise RuntimeError("reference_precision: the model has no fp32 copy of its int8 projections")
        self._precision_switch.reference = True
        self._kv, self._kv_reference = self._kv_reference, self._kv
        try:
            yield
        finally:
            self._kv, self._kv_reference = self._kv_reference, self._kv
            self._precision_switch.reference = False

    # -- input preparation --------------------------------------------------------------------------------------
    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llm.get_input_embeddings()(ids)

    def run_fusion(self, batch: Sequence[ModelInput]) -> tuple[FusionOutput, list[dict[str, bool]]]:
        ids, t_valid = pad_text(batch, self.cfg.fusion.max_text_tokens, self.tokenizer.pad_token_id)
        ids, t_valid = ids.to(self.device), t_valid.to(self.device)
        with torch.no_grad():
            text_embeds = self._embed(ids).float()
        audio, a_valid, visual, v_valid = (torch.from_numpy(a).to(self.device)
                                           for a in pad_media(batch, self.cfg.fusion))
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
        already in a KV cache whose rows are left-padded to the longest (`cached_starts.stack_caches`); the
        embeddings start after them, left-padded ([pad; cached; pad; rest of the prefix; pseudo; ...]); the attention
        mask covers the cache + embeddings and the positions continue after each row's cached ids. `prompts`: the
        rows' `prompt_ids`, when the caller already built them.
        """
        t0 = time.perf_counter()
        fusion, modalities = self.run_fusion(batch)
        fusion_ms = (time.perf_counter() - t0) * 1000.0
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
        layout = PromptLayout.of(rows, self.cfg.fusion.pseudo_tokens, self.tokenizer.pad_token_id, cached)
        dev = self.device
        embeds = self._embed(layout.ids.to(dev))
        pseudo = fusion.pseudo_tokens.to(embeds.dtype)
        embeds = embeds.masked_scatter(layout.is_pseudo.to(dev)[..., None], pseudo)
        labels = answer_labels(answers).to(dev) if with_answers else None
        return PreparedBatch(embeds, layout.attention_mask.to(dev), layout.position_ids.to(dev), labels, fusion,
                             modalities, fusion_ms, languages)

    # -- training (the losses: `egmf_core.training_loss`) -------------------------------------------------------
    def aux_loss(self, batch: Sequence[ModelInput], fusion: FusionOutput | None = None) -> torch.Tensor:
        """Cross-entropy of the auxiliary emotion head on f_enhanced: `training_loss.aux_loss`."""
        return training_loss.aux_loss(self, batch, fusion)

    def loss(self, batch: Sequence[ModelInput], aux_weight: float = 0.0) -> torch.Tensor:
        """Cross-entropy on the answer tokens, plus optionally `aux_weight` x `aux_loss`: `training_loss.loss`."""
        return training_loss.loss(self, batch, aux_weight)

    # -- inference: constrained scoring (fast path) -------------------------------------------------------------
    @torch.no_grad()
    def score(self, batch: Sequence[ModelInput]) -> list[Prediction]:
        """Constrained greedy answers with the probability of every label, in (usually) one LLM pass.

        The prompt pass also carries the answer trees of the `folded_answers` labels the fusion stack's auxiliary
        head and the row's prior find likeliest (`fold_scores`; each tree attending to the prompt and its own
        ancestors only, as in `_answer_pass`). A row whose first answer token (the argmax of the prompt's label
        logits plus the prior) starts one of its folded trees is answered from that pass; the others get a separate
        answer pass on the prompt's KV cache. Both give the logits that step-by-step greedy decoding would see, so
        folding changes the time, not the answers (within float rounding). The shipped aux head is fitted to the
        LLM's own answers (`egmf_core.research.distill_aux`); how often the ranking holds the answer:
        `benchmarks/results/fold_ranking.md`; what each folded tree costs and saves, and why 3: `docs/results.md`
        (streaming latency).
        """
        t0 = time.perf_counter()
        batch = self.without_unfamiliar_voices(batch)
        prompts = self.prompt_ids(batch)  # checks each row's label set first
        t_priors = time.perf_counter()
        priors = self.label_priors(batch)
        prior_ms = (time.perf_counter() - t_priors) * 1000.0
        cache, cached, keep = self._cached_start(batch, prompts)
        prep = self.prepare(batch, prefix_cached=cached, prompts=prompts)
        adapters = self.adapter_kwargs(prep)
        forests = self._folded_trees(batch, prep, priors)
        nodes = TreeNodes.of(forests)
        first_choices = {t for x in batch for t in self._answer_trees[x.label_set]}
        mask = None if nodes.n == 0 else self._tree_attention_mask(prep.attention_mask, nodes, prep.embeds.shape[1],
                                                                    prep.embeds.dtype)
        embeds = prep.embeds if nodes.n == 0 else torch.cat([prep.embeds, self._embed(nodes.ids.to(self.device))], 1)
        positions = prep.position_ids if nodes.n == 0 else torch.cat(
            [prep.position_ids, prep.position_ids[:, -1:] + nodes.depth.to(self.device)], 1)
        logits, out_cache = choice_logits(
            self.llm,
            dict(inputs_embeds=embeds, attention_mask=prep.attention_mask if mask is None else mask,
                 position_ids=positions, cache=cache, use_cache=True),
            adapters, first_choices | nodes.choices, keep=1 + nodes.n)
        if out_cache.is_croppable:  # this pass computed reusable starts: keep them for the next prompts
            for adapter, ids in keep:
                kept = copy.deepcopy(out_cache)  # before the answer pass appends to it
                kept.crop(len(ids) - kept.get_seq_length())  # a negative count: the tokens to remove at the end
                self._kv.put(adapter, ids, kept)
        label_probs, trees, node_logits, missed, voiced, margins = [], [], [], [], [], []
        for i, x in enumerate(batch):
            labels = self.prompts.label_sets[x.label_set]  # none for a sentiment-only set: empty probabilities
            first = [self.prompts.label_ids[lab][0] for lab in labels]
            label_logits = logits[i, 0, first].float()
            prior, is_voiced = priors[i]
            if prior is not None:  # a prior guides which label's answer tree is walked (`label_priors`)
                label_logits = label_logits + torch.from_numpy(prior).to(label_logits)
            voiced.append(is_voiced)
            probs = self.calibration.emotion_probs(label_logits, x.label_set, voiced=voiced[-1]).tolist()
            label_probs.append(dict(zip(labels, probs)))
            options = list(self._answer_trees[x.label_set])
            deciding = label_logits if prior is not None else logits[i, 0, options]
            start = (first if prior is not None else options)[int(torch.argmax(deciding))]
            top = torch.topk(deciding, 2).values if len(deciding) > 1 else None
            margins.append(float("inf") if top is None else float(top[0] - top[1]))
            tree = self._answer_trees[x.label_set][start]
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
        walked = [tree.walk(node_logits[i]) for i, tree in enumerate(trees)]
        t2 = time.perf_counter()

        timings = {"fusion": round(prep.fusion_ms, 2),
                   "llm_prefill": round((t1 - t0) * 1000.0 - prep.fusion_ms - prior_ms, 2),
                   "llm_answer": round((t2 - t1) * 1000.0, 2), "priors": round(prior_ms, 2)}
        preds = []
        encoded = (prep.attention_mask.sum(-1).cpu() - torch.tensor(cached)).tolist()
        for i, ((label, value), walk_margin) in enumerate(walked):
            preds.append(make_prediction(self.prompts, prep, i, batch[i].label_set, label, label_probs[i], value))
            preds[-1].decision_margin = min(margins[i], walk_margin)
            preds[-1].timings_ms = dict(timings)
            preds[-1].voice_prior = voiced[i]
            preds[-1].prompt_tokens = {"cached": cached[i], "encoded": int(encoded[i]),
                                       "folded": sum(len(t.tokens) for t in forests[i]),
                                       "answer_pass": len(trees[i].tokens) if i in missed else 0}
        return preds

    def _folded_trees(self, batch: Sequence[ModelInput], prep: PreparedBatch,
                      priors: Sequence[tuple[np.ndarray | None, bool]]) -> list[list[AnswerTree]]:
        """Per row, the answer trees the prompt pass carries: those of the `folded_answers` labels of its label set
        likeliest by the auxiliary head's log-probabilities plus the row's prior (`label_priors`) in calibrated
        units, the prior's share of the answer the head cannot see (none without an aux head, e.g. a fusion engine
        without it). On dev data the prior lifts how often the 3 folded trees hold the answer from 88.8 to 94.8 %
        (MELD lines) and 95.8 to 100 % (RAVDESS live cuts): `benchmarks/results/fold_ranking.md`."""
        head = getattr(self.fusion, "aux_head", None)
        if self.folded_answers <= 0 or head is None or prep.fusion.enhanced is None:
            return [[] for _ in batch]
        aux = head(prep.fusion.enhanced.to(head.weight.dtype)).float().cpu()
        forests = []
        for i, x in enumerate(batch):
            columns, trees = self._label_trees[x.label_set]
            rank = self.fold_scores(aux[i, columns], x.label_set, *priors[i])
            forests.append([trees[j] for j in torch.argsort(rank, descending=True)[: self.folded_answers].tolist()])
        return forests

    def fold_scores(self, aux_logits: torch.Tensor, label_set: str, prior: np.ndarray | None,
                    voiced: bool) -> torch.Tensor:
        """What ranks a row's labels for folding (`_folded_trees`): the aux head's log-probabilities over the label
        set (`aux_logits`, label order) plus the row's prior bias (`label_priors`) divided by the row's temperature."""
        rank = torch.log_softmax(aux_logits.float(), -1)
        if prior is not None:
            rank = rank + torch.from_numpy(prior).float() / self.calibration.temperature(label_set, voiced)
        return rank

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
        nodes = TreeNodes.of([[t] for t in trees])
        if nodes.n == 0:
            return [None] * len(trees)
        mask = self._tree_attention_mask(attention_mask, nodes, 0, dtype)
        kwargs = dict(inputs_embeds=self._embed(nodes.ids.to(self.device)), attention_mask=mask,
                      position_ids=last_position + nodes.depth.to(self.device), cache=cache, use_cache=True)
        return choice_logits(self.llm, kwargs, adapters, nodes.choices, keep=nodes.n)[0]

    def _tree_attention_mask(self, attention_mask: torch.Tensor, nodes: TreeNodes, causal: int,
                             dtype: torch.dtype) -> torch.Tensor:
        additive = self.llm.config._attn_implementation == "eager"
        return tree_attention_mask(attention_mask, nodes, causal, dtype, additive)

    # -- inference: kept prompt beginnings ----------------------------------------------------------------------
    def _cached_start(
        self, batch: Sequence[ModelInput], prompts: Sequence[PromptIds]
    ) -> tuple[DynamicCache | None, list[int], list[tuple[str, list[int]]]]:
        """The KV cache the batch's prompt pass starts from, how many ids of each row it holds, and the beginnings
        the pass should keep (`cached_starts.cached_start`). No cache in training mode, where LoRA dropout makes every
        pass different, or when the rows use different languages (adapters)."""
        languages = {self.language_of(x) for x in batch}
        if self.training or len(languages) != 1:
            return None, [0] * len(batch), []
        return cached_start(self._kv, self._kv_adapter(languages.pop()), prompts, self._extend)

    def _kv_adapter(self, language: str) -> str:
        """The adapter whose KV caches `language`'s prompts use, after dropping every kept cache if the weights changed
        since the last pass (a training step or a LoRA load bumps the parameters' version counters)."""
        self._kv.check_weights(tuple(p._version for p in self.llm.parameters()))
        return self.adapter_of(language)

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

    # -- inference: the voice prior, and greedy generation (the paper's path: `egmf_core.generation`) -----------
    def without_unfamiliar_voices(self, batch: Sequence[ModelInput]) -> list[ModelInput]:
        """`batch` with the audio removed from utterances whose voice is unlike the voices the audio was learned
        from (`AudioPrior.familiar`): they are answered from their words, face and context, and their prediction's
        `modalities["audio"]` is False. Inference only (`score`, `generate`); training sees every voice."""
        prior = self.audio_prior
        if prior is None:
            return list(batch)
        return [x if x.audio is None or prior.familiar(x.audio) else dataclasses.replace(x, audio=None)
                for x in batch]

    def label_priors(self, batch: Sequence[ModelInput]) -> list[tuple[np.ndarray | None, bool]]:
        """Per row: the bias a prior adds to its label set's first-answer-token logits (None: the LLM decides
        alone) and whether it is the voice prior's. The voice prior (`egmf_core.audio_prior`) guides the rows it
        applies to; the text prior (`egmf_core.text_prior`) the others that have words, all embedded in one batch."""
        out: list[tuple[np.ndarray | None, bool]] = []
        wanted: list[int] = []
        for i, x in enumerate(batch):
            labels = self.prompts.label_sets[x.label_set]
            bias = self.voice_prior(x, labels)
            out.append((bias, bias is not None))
            if (bias is None and labels and x.current.text.strip() and self.text_prior is not None
                    and self.text_prior.strength.get(x.label_set, 0.0) > 0):
                wanted.append(i)
        if wanted:
            if self.sentence_encoder is None:
                raise RuntimeError("the model has a text prior but no sentence encoder (load_checkpoint loads both)")
            emb = self.sentence_encoder.embed([batch[i].current.text for i in wanted])
            for e, i in zip(emb, wanted):
                labels = self.prompts.label_sets[batch[i].label_set]
                out[i] = (self.text_prior.bias_for(batch[i].label_set, e, labels), False)
        return out

    def voice_prior(self, x: ModelInput, labels: Sequence[str]) -> np.ndarray | None:
        """The voice prior's bias on `labels`' first-answer-token logits for `x` (`egmf_core.audio_prior`); None
        without a prior, without labels (a sentiment-only set) or without audio."""
        return None if self.audio_prior is None or not labels else self.audio_prior.bias_for(x.label_set, x.audio,
                                                                                             labels)

    def generate(self, batch: Sequence[ModelInput], max_new_tokens: int = 12) -> list[Prediction]:
        """Greedy generation and parsing of the text, the paper's path: `generation.generate`."""
        return generation.generate(self, batch, max_new_tokens)
