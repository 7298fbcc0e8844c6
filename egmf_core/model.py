"""EGMF: fusion stack -> pseudo tokens -> prompt -> LoRA-tuned LLM that answers "<emotion> <score>".

Two inference paths share all preparation:
- `generate`: plain greedy generation and parsing of the text (the paper's path);
- `score`: one forward pass over the prompt gives a probability for every emotion label (the first answer token
  of each label, renormalized over the closed label set), then the rest of the answer is read by greedy decoding
  restricted to valid answers, reusing the prompt's KV cache. When greedy generation produces a valid answer the two
  paths agree exactly (argmax over a subset that contains the global argmax).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from torch.nn import functional as F

from .backbone import LoadedBackbone, load_backbone
from .config import EGMFConfig
from .fusion import FusionOutput, FusionStack
from .prompt import PromptBuilder, Turn

log = logging.getLogger(__name__)
IGNORE = -100


@dataclass
class ModelInput:
    """One utterance with its past-only context. Media features are optional (missing = masked)."""

    context: Sequence[Turn]
    current: Turn
    audio: np.ndarray | None = None  # (T_a, audio_dim) float32, 50 Hz
    visual: np.ndarray | None = None  # (T_v, visual_dim) float32
    visual_valid: np.ndarray | None = None  # (T_v,) bool: False where no face was found
    emotion: str | None = None  # training target
    sentiment: float | None = None  # training target (None = unknown, not trained)
    label_set: str = "default"  # which emotion label set the task prompt offers (see TaskConfig.dataset_emotions)


@dataclass
class Prediction:
    emotion: str
    emotion_probs: dict[str, float]
    sentiment_score: float
    sentiment_label: str
    alpha: list[float]
    modalities: dict[str, bool]
    raw_text: str | None = None  # generated text (generation path only)
    expert_outputs: np.ndarray | None = field(default=None, repr=False)


@dataclass
class PreparedBatch:
    embeds: torch.Tensor  # (B, L, d)
    attention_mask: torch.Tensor  # (B, L)
    position_ids: torch.Tensor  # (B, L)
    labels: torch.Tensor | None  # (B, A) answer targets, right-aligned, IGNORE elsewhere
    fusion: FusionOutput
    modalities: list[dict[str, bool]]


class EGMFModel(nn.Module):
    def __init__(self, cfg: EGMFConfig, backbone: LoadedBackbone):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.tokenizer = backbone.tokenizer
        self.prompts = PromptBuilder(backbone.tokenizer, cfg.prompt, cfg.task, use_text=cfg.ablation.use_text)
        llm = backbone.model
        if cfg.lora.enabled:
            lora = LoraConfig(
                r=cfg.lora.r,
                lora_alpha=cfg.lora.alpha,
                lora_dropout=cfg.lora.dropout,
                target_modules=list(cfg.lora.target_modules),
                layers_to_transform=cfg.lora.layers,
                bias="none",
                task_type="CAUSAL_LM",
            )
            llm = get_peft_model(llm, lora)
        self.llm = llm
        # Auxiliary head classes: every emotion label of every label set (MELD's 7 + RAVDESS's "calm").
        self.aux_labels = sorted({lab for labels in self.prompts.label_sets.values() for lab in labels})
        self.fusion = FusionStack(
            cfg.fusion, cfg.ablation, backbone.hidden_size, backbone.embed_rms, aux_classes=len(self.aux_labels)
        )
        self.fusion.to(next(llm.parameters()).device)
        self._build_answer_trie()

    @classmethod
    def build(cls, cfg: EGMFConfig) -> "EGMFModel":
        return cls(cfg, load_backbone(cfg.backbone))

    @property
    def device(self) -> torch.device:
        return self.fusion.embed_rms.device

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

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

    def prepare(self, batch: Sequence[ModelInput], with_answers: bool = False) -> PreparedBatch:
        """Build left-padded input embeddings [prefix; pseudo; suffix+task (; answer)] for the batch."""
        fusion, modalities = self.run_fusion(batch)
        k = self.cfg.fusion.pseudo_tokens
        pad = self.tokenizer.pad_token_id
        rows, answers = [], []
        for x in batch:
            p = self.prompts.build(x.context, x.current, x.label_set)
            ans: list[int] = []
            n_loss = 0
            if with_answers:
                if x.emotion is None:
                    raise ValueError("training inputs need an emotion label (field 'emotion')")
                ans, n_loss = self.prompts.answer_ids(x.emotion, x.sentiment, x.label_set)
            rows.append((p.before, p.after + ans))
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
        position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
        labels = None
        if with_answers:
            a = max(len(ans) for ans, _ in answers)
            labels = torch.full((len(batch), a), IGNORE, dtype=torch.long)
            for i, (ans, n_loss) in enumerate(answers):
                if ans:
                    labels[i, a - len(ans) : a - len(ans) + n_loss] = torch.tensor(ans[:n_loss])
            labels = labels.to(dev)
        return PreparedBatch(embeds, attn, position_ids, labels, fusion, modalities)

    # -- training -----------------------------------------------------------------------------------------------
    def aux_loss(self, batch: Sequence[ModelInput], fusion: FusionOutput | None = None) -> torch.Tensor:
        """Cross-entropy of the auxiliary emotion head on f_enhanced (fusion only, no LLM pass needed)."""
        if fusion is None:
            fusion, _ = self.run_fusion(batch)
        target = torch.tensor([self.aux_labels.index(x.emotion) for x in batch], device=self.device)
        return F.cross_entropy(self.fusion.aux_head(fusion.enhanced), target)

    def loss(self, batch: Sequence[ModelInput], aux_weight: float = 0.0) -> torch.Tensor:
        """Cross-entropy on the answer tokens only (logits are computed only where the answer is), plus optionally
        `aux_weight` x the auxiliary emotion head's cross-entropy on f_enhanced."""
        prep = self.prepare(batch, with_answers=True)
        a = prep.labels.shape[1]
        out = self.llm(
            inputs_embeds=prep.embeds,
            attention_mask=prep.attention_mask,
            position_ids=prep.position_ids,
            logits_to_keep=a + 1,
            use_cache=False,
        )
        logits = out.logits[:, :-1].float()  # position j predicts answer token j
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), prep.labels.reshape(-1), ignore_index=IGNORE)
        if aux_weight:
            loss = loss + aux_weight * self.aux_loss(batch, prep.fusion)
        return loss

    # -- inference: constrained scoring (fast path) -------------------------------------------------------------
    def _build_answer_trie(self) -> None:
        """One trie of valid answer token sequences per label set; leaves hold (label, score)."""
        self._tries: dict[str, dict] = {}
        for name in self.prompts.label_sets:
            trie: dict = {}
            for label, value, ids in self.prompts.answer_candidates(name):
                node = trie
                for t in ids:
                    node = node.setdefault(t, {})
                node[None] = (label, value)
            self._tries[name] = trie

    @torch.no_grad()
    def score(self, batch: Sequence[ModelInput]) -> list[Prediction]:
        prep = self.prepare(batch)
        out = self.llm(
            inputs_embeds=prep.embeds,
            attention_mask=prep.attention_mask,
            position_ids=prep.position_ids,
            logits_to_keep=1,
            use_cache=True,
        )
        logits = out.logits[:, -1].float()
        cache = out.cache
        label_probs = []
        for i, x in enumerate(batch):
            labels = self.prompts.label_sets[x.label_set]
            first = [self.prompts.label_ids[lab][0] for lab in labels]
            probs = torch.softmax(logits[i, first], dim=-1).tolist()
            label_probs.append(dict(zip(labels, probs)))

        nodes = [self._tries[x.label_set] for x in batch]
        results: list[tuple[str, float] | None] = [None] * len(batch)
        attn, pos = prep.attention_mask, prep.position_ids[:, -1:]
        while True:
            chosen = []
            for i, node in enumerate(nodes):
                if results[i] is not None:
                    chosen.append(self.prompts.eos_id)
                    continue
                options = [t for t in node if t is not None]
                tok = options[int(torch.argmax(logits[i, options]))] if len(options) > 1 else options[0]
                nodes[i] = node[tok]
                if None in nodes[i]:
                    results[i] = nodes[i][None]
                chosen.append(tok)
            if all(r is not None for r in results):
                break
            ids = torch.tensor(chosen, device=logits.device)[:, None]
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            pos = pos + 1
            out = self.llm(
                inputs_embeds=self._embed(ids),
                attention_mask=attn,
                position_ids=pos,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            logits, cache = out.logits[:, -1].float(), out.cache

        preds = []
        for i, (label, value) in enumerate(results):
            preds.append(self._prediction(prep, i, label, label_probs[i], value))
        return preds

    # -- inference: plain greedy generation (paper path) --------------------------------------------------------
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
        )
        preds = []
        for i in range(len(batch)):
            text = self.tokenizer.decode(out[i], skip_special_tokens=True)
            label, value = self.prompts.parse_answer(text, batch[i].label_set)
            probs = {lab: float(lab == label) for lab in self.prompts.label_sets[batch[i].label_set]}
            preds.append(self._prediction(prep, i, label, probs, value, raw_text=text))
        return preds

    def _prediction(
        self, prep: PreparedBatch, i: int, label: str | None, probs: dict[str, float], value: float | None,
        raw_text: str | None = None,
    ) -> Prediction:
        score = float("nan") if value is None else self.prompts.snap_score(value)
        return Prediction(
            emotion=label or "unknown",
            emotion_probs=probs,
            sentiment_score=score,
            sentiment_label=self.prompts.sentiment_label(score) if value is not None else "unknown",
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
