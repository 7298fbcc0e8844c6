"""A batch of `ModelInput`s as the padded tensors one LLM pass takes: media features with validity masks, the
utterances' text ids for the fusion stack, and the left-padded prompt layout [cached; prefix; pseudo; suffix+task
(; answer)] with its attention mask, positions and answer targets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .config import FusionConfig
from .fusion import FusionOutput
from .model_io import ModelInput

IGNORE = -100  # answer target of a position that has no loss


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


def _check_features(name: str, arr: np.ndarray, dim: int) -> None:
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.shape[1] != dim:
        shape = getattr(arr, "shape", type(arr).__name__)
        raise ValueError(f"{name} features: expected an array of shape (frames, {dim}), got {shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} features contain NaN or inf")


def pad_media(batch: Sequence[ModelInput], f: FusionConfig) -> tuple[np.ndarray, ...]:
    """Audio/visual features padded into arrays with validity masks (absent modality = all-false mask): audio,
    audio_valid, visual, visual_valid. Each row's audio is cut to a whole number of `f.audio_stride` frames, its own
    and not the batch's: a frame left over from the stride would be padding for the downsampled encoder but count
    in the audio statistics, so a row's answer would depend on the lengths of the rows batched with it."""
    ta = max([f.audio_stride] + [len(x.audio) - len(x.audio) % f.audio_stride for x in batch if x.audio is not None])
    tv = max([1] + [len(x.visual) for x in batch if x.visual is not None])
    audio = np.zeros((len(batch), ta, f.audio_dim), np.float32)
    a_valid = np.zeros((len(batch), ta), bool)
    visual = np.zeros((len(batch), tv, f.visual_dim), np.float32)
    v_valid = np.zeros((len(batch), tv), bool)
    for i, x in enumerate(batch):
        if x.audio is not None and len(x.audio):
            _check_features("audio", x.audio, f.audio_dim)
            n = len(x.audio) - len(x.audio) % f.audio_stride
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
    return audio, a_valid, visual, v_valid


def pad_text(batch: Sequence[ModelInput], max_tokens: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The utterances' first `max_tokens` text ids, right-padded, and which are valid (none for an empty text)."""
    tt = max(1, max(len(x.current.text_ids[:max_tokens]) for x in batch))
    ids = torch.full((len(batch), tt), pad, dtype=torch.long)
    t_valid = torch.zeros((len(batch), tt), dtype=torch.bool)
    for i, x in enumerate(batch):
        tid = x.current.text_ids[:max_tokens]
        ids[i, : len(tid)] = torch.tensor(tid, dtype=torch.long)
        t_valid[i, : len(tid)] = bool(x.current.text.strip())
    return ids, t_valid


@dataclass
class PromptLayout:
    """Left-padded prompt rows [pad; cached; pad; before; pseudo; after]: the ids to embed (without the cached
    ones), where the pseudo tokens go, the attention mask over cache + ids and the ids' positions."""

    ids: torch.Tensor  # (B, L) token ids (pad at the pseudo token slots and the padding)
    is_pseudo: torch.Tensor  # (B, L) bool
    attention_mask: torch.Tensor  # (B, C + L): C = the most cached ids of a row
    position_ids: torch.Tensor  # (B, L): continuing after each row's cached ids

    @classmethod
    def of(cls, rows: Sequence[tuple[Sequence[int], Sequence[int]]], pseudo_tokens: int, pad: int,
           cached: Sequence[int]) -> "PromptLayout":
        """`rows`: per row the ids before and after the pseudo tokens; `cached`: per row how many ids before those
        are already in a KV cache whose rows are left-padded to the longest."""
        k = pseudo_tokens
        lengths = [len(b) + k + len(a) for b, a in rows]
        seq = max(lengths)
        ids = torch.full((len(rows), seq), pad, dtype=torch.long)
        is_pseudo = torch.zeros((len(rows), seq), dtype=torch.bool)
        attn = torch.zeros((len(rows), seq), dtype=torch.long)
        for i, ((before, after), n) in enumerate(zip(rows, lengths)):
            start = seq - n
            ids[i, start : start + len(before)] = torch.tensor(before)
            is_pseudo[i, start + len(before) : start + len(before) + k] = True
            ids[i, start + len(before) + k :] = torch.tensor(after)
            attn[i, start:] = 1
        if max(cached):
            past = torch.zeros((len(rows), max(cached)), dtype=attn.dtype)
            for i, n_cached in enumerate(cached):
                past[i, past.shape[1] - n_cached:] = 1
            attn = torch.cat([past, attn], dim=1)
        position_ids = (attn.cumsum(-1) - 1).clamp(min=0)[:, -seq:]
        return cls(ids, is_pseudo, attn, position_ids)


def answer_labels(answers: Sequence[tuple[Sequence[int], int]]) -> torch.Tensor:
    """Answer targets (B, A), right-aligned: per row its answer ids, of which the first `n_loss` are trained
    (IGNORE elsewhere)."""
    a = max(len(ans) for ans, _ in answers)
    labels = torch.full((len(answers), a), IGNORE, dtype=torch.long)
    for i, (ans, n_loss) in enumerate(answers):
        if ans:
            labels[i, a - len(ans) : a - len(ans) + n_loss] = torch.tensor(ans[:n_loss])
    return labels
