"""The expert-guided fusion stack: frame features + utterance token embeddings -> pseudo tokens.

This module is everything between the feature extractors and the LLM, and it is the unit that
`python -m export` turns into an ONNX graph, so it only uses ops that export cleanly (no data-dependent
Python control flow, no boolean indexing). Missing modalities are handled by masks all the way through:
a masked frame never contributes to an attention output, a pooled vector or the gate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .config import AblationConfig, FusionConfig



def masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor, heads: int
) -> torch.Tensor:
    """Multi-head scaled dot-product attention over already-projected q/k/v.

    `key_valid` (B, Tk) marks usable keys. A query row whose keys are all invalid gets an exact zero output, so a
    fully missing modality contributes nothing (and its feature values cannot leak through).
    """
    b, tq, d = q.shape
    tk = k.shape[1]
    dh = d // heads
    qh = q.view(b, tq, heads, dh).transpose(1, 2)
    kh = k.view(b, tk, heads, dh).transpose(1, 2)
    vh = v.view(b, tk, heads, dh).transpose(1, 2)
    scores = torch.matmul(qh, kh.transpose(-1, -2)) / math.sqrt(dh)
    valid = key_valid[:, None, None, :]
    scores = scores.masked_fill(~valid, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1) * valid.to(scores.dtype)
    out = torch.matmul(probs, vh).transpose(1, 2).reshape(b, tq, d)
    return out


class CrossAttention(nn.Module):
    """CrossAttention(Q, K, V) with a key padding mask, pre-norm and a residual path."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, context: torch.Tensor, context_valid: torch.Tensor) -> torch.Tensor:
        q = self.q(self.norm_q(query))
        kv = self.norm_kv(context)
        attended = masked_attention(q, self.k(kv), self.v(kv), context_valid, self.heads)
        return query + self.drop(self.out(attended))


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer with masked self-attention (padding and missing frames masked)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attn = CrossAttention(dim, heads, dropout)
        self.norm = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, dim * 2), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim * 2, dim))

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = self.attn(x, x, valid)
        return x + self.ff(self.norm(x))


def time_encoding(seconds: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal encoding of time in seconds, so audio (50 Hz) and video (10 Hz) frames share one time axis."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=seconds.device) * (-math.log(1000.0) / half))
    angles = seconds[..., None] * 25.0 * freqs  # 25 = position units per second (audio rate after stride 2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class AudioVisualEncoder(nn.Module):
    """Projects audio and visual frames to d_h, adds modality + time information and encodes them jointly."""

    def __init__(self, cfg: FusionConfig):
        super().__init__()
        d = cfg.hidden
        self.cfg = cfg
        self.audio_in = nn.Sequential(nn.LayerNorm(cfg.audio_dim), nn.Linear(cfg.audio_dim, d))
        # Strided conv halves the 50 Hz whisper frame rate: 8 s of speech -> 200 positions.
        self.audio_down = nn.Conv1d(d, d, kernel_size=cfg.audio_stride, stride=cfg.audio_stride)
        self.visual_in = nn.Sequential(nn.LayerNorm(cfg.visual_dim), nn.Linear(cfg.visual_dim, d))
        self.modality = nn.Parameter(torch.zeros(2, d))
        nn.init.normal_(self.modality, std=0.02)
        self.layers = nn.ModuleList(EncoderLayer(d, cfg.heads, cfg.dropout) for _ in range(cfg.encoder_layers))
        self.norm = nn.LayerNorm(d)

    def forward(
        self, audio: torch.Tensor, audio_valid: torch.Tensor, visual: torch.Tensor, visual_valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.cfg.audio_stride
        b, ta, _ = audio.shape
        ta_out = ta // s
        a = self.audio_in(audio)
        a = self.audio_down(a.transpose(1, 2)).transpose(1, 2)  # (B, Ta//s, d)
        # A downsampled position is valid only if every frame under it was valid (no leak from masked frames).
        a_valid = audio_valid[:, : ta_out * s].reshape(b, ta_out, s).all(dim=-1)
        a = a * a_valid[..., None].to(a.dtype)
        a_time = (torch.arange(ta_out, device=a.device, dtype=torch.float32) * s + (s - 1) / 2) / self.cfg.audio_rate
        a = a + self.modality[0] + time_encoding(a_time, a.shape[-1])[None]

        tv = visual.shape[1]
        v = self.visual_in(visual) * visual_valid[..., None].to(audio.dtype)
        v_time = torch.arange(tv, device=v.device, dtype=torch.float32) / self.cfg.visual_rate
        v = v + self.modality[1] + time_encoding(v_time, v.shape[-1])[None]

        h = torch.cat([a, v], dim=1)
        valid = torch.cat([a_valid, visual_valid], dim=1)
        for layer in self.layers:
            h = layer(h, valid)
        return self.norm(h), valid


class Expert(nn.Module):
    """Bottleneck MLP expert: d -> d/r -> d with its own activation."""

    def __init__(self, dim: int, reduction: int, activation: nn.Module, dropout: float):
        super().__init__()
        self.bottleneck = dim // reduction
        self.net = nn.Sequential(
            nn.Linear(dim, self.bottleneck), activation, nn.Dropout(dropout), nn.Linear(self.bottleneck, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AdaptiveFeatureEnhancer(nn.Module):
    """Three experts mixed by hierarchical dynamic gating.

    w = GateNetwork(f) is a first, coarse routing; alpha = softmax(MLP([f; w])) refines it with the input, and
    f_enhanced = LayerNorm(f + sum_i alpha_i E_i(f)). Dropped experts get alpha = 0; "uniform" gating replaces
    alpha by equal weights over the active experts (the paper's ablation).
    """

    SPECS = (("local", 8, nn.Mish), ("semantic", 4, nn.GELU), ("global", 2, nn.SiLU))

    def __init__(self, dim: int, dropout: float, ablation: AblationConfig):
        super().__init__()
        self.experts = nn.ModuleList(Expert(dim, r, act(), dropout) for _, r, act in self.SPECS)
        self.gate = nn.Sequential(nn.Linear(dim, dim // 4), nn.GELU(), nn.Linear(dim // 4, 3))
        self.refine = nn.Sequential(nn.Linear(dim + 3, dim // 4), nn.GELU(), nn.Linear(dim // 4, 3))
        self.norm = nn.LayerNorm(dim)
        self.uniform = ablation.gating == "uniform"
        self.register_buffer("active", torch.tensor(ablation.experts, dtype=torch.bool), persistent=False)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        outputs = torch.stack([e(f) for e in self.experts], dim=1)  # (B, 3, d)
        if self.uniform:
            logits = torch.zeros(f.shape[0], 3, device=f.device, dtype=f.dtype)
        else:
            w = torch.softmax(self.gate(f).masked_fill(~self.active, torch.finfo(f.dtype).min), dim=-1)
            logits = self.refine(torch.cat([f, w], dim=-1))
        alpha = torch.softmax(logits.masked_fill(~self.active, torch.finfo(logits.dtype).min), dim=-1)
        enhanced = self.norm(f + (alpha[..., None] * outputs).sum(dim=1))
        return enhanced, alpha, outputs


@dataclass
class FusionOutput:
    pseudo_tokens: torch.Tensor  # (B, K, d_llm), at the LLM's input-embedding scale
    alpha: torch.Tensor  # (B, 3) gate weights
    expert_outputs: torch.Tensor  # (B, 3, d_h), for the paper's expert-similarity check
    fused: torch.Tensor  # (B, d_h) f_fusion
    enhanced: torch.Tensor | None = None  # (B, d_h) f_enhanced, the source of the pseudo tokens


class AudioStatistics(nn.Module):
    """Masked mean and standard deviation of the raw audio frames -> d_h, added to the fused vector f.

    Emotion in the voice is largely an utterance-level property (pitch range, energy, rate), which mean+std pooling
    of the recognizer's states captures well: a linear probe on exactly this summary is a strong RAVDESS baseline.
    The attention path has to rediscover it from frames; this gives it a direct route. The last layer starts at zero,
    so adding the block to a trained model changes nothing until it is trained. No valid frame -> exact zeros.
    """

    def __init__(self, audio_dim: int, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(2 * audio_dim), nn.Linear(2 * audio_dim, dim), nn.GELU(),
                                 nn.Linear(dim, dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, audio: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        mean, has = _masked_mean(audio, valid)
        var, _ = _masked_mean((audio - mean[:, None]).pow(2), valid)
        stats = torch.cat([mean, torch.sqrt(var + 1e-6)], dim=-1)
        return self.net(stats) * has[:, None]


class FusionStack(nn.Module):
    """Frame features + text embeddings -> K pseudo tokens (plus gate weights).

    Inputs are padded batches with validity masks; modality presence is derived from the masks, so a missing
    modality is simply a mask of zeros.
    """

    def __init__(
        self, cfg: FusionConfig, ablation: AblationConfig, llm_hidden: int, embed_rms: float, aux_classes: int = 0
    ):
        super().__init__()
        d = cfg.hidden
        self.cfg = cfg
        self.ablation = ablation
        self.llm_hidden = llm_hidden
        self.av_encoder = AudioVisualEncoder(cfg)
        self.text_in = nn.Sequential(nn.LayerNorm(llm_hidden), nn.Linear(llm_hidden, d))
        self.text_to_av = CrossAttention(d, cfg.heads, cfg.dropout)
        self.av_to_text = CrossAttention(d, cfg.heads, cfg.dropout)
        self.presence = nn.Linear(3, d)  # which modalities exist is real information, not fake data
        self.fuse = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.LayerNorm(d))
        self.audio_stats = AudioStatistics(cfg.audio_dim, d) if cfg.audio_stats else None
        self.enhancer = AdaptiveFeatureEnhancer(d, cfg.dropout, ablation)
        self.to_pseudo = nn.Linear(d, cfg.pseudo_tokens * llm_hidden)
        self.pseudo_gain = nn.Parameter(torch.ones(llm_hidden))
        # Training-only auxiliary emotion head on f_enhanced (see TrainConfig.aux_weight): a short gradient path that
        # makes the pseudo tokens' source discriminative before the LLM has learned to read them. Not in forward().
        self.aux_head = nn.Linear(d, aux_classes) if aux_classes else None
        # RMS of the LLM's (scaled) input embeddings: pseudo tokens are produced at that scale.
        self.register_buffer("embed_rms", torch.tensor(float(embed_rms)), persistent=True)

    def forward(
        self,
        text_embeds: torch.Tensor,  # (B, Tt, d_llm) the LLM's own token embeddings of the utterance
        text_valid: torch.Tensor,  # (B, Tt) bool
        audio: torch.Tensor,  # (B, Ta, d_a)
        audio_valid: torch.Tensor,  # (B, Ta) bool
        visual: torch.Tensor,  # (B, Tv, d_v)
        visual_valid: torch.Tensor,  # (B, Tv) bool
    ) -> FusionOutput:
        text_valid = text_valid & self.ablation.use_text
        audio_valid = audio_valid & self.ablation.use_audio
        visual_valid = visual_valid & self.ablation.use_video

        h_t = self.text_in(text_embeds) * text_valid[..., None].to(text_embeds.dtype)
        h_av, av_valid = self.av_encoder(audio, audio_valid, visual, visual_valid)

        z_t = self.text_to_av(h_t, h_av, av_valid)  # CrossAttention(H^t, H^av, H^av)
        z_av = self.av_to_text(h_av, h_t, text_valid)  # CrossAttention(H^av, H^t, H^t)
        pooled_t, has_t = _masked_mean(z_t, text_valid)
        pooled_av, has_av = _masked_mean(z_av, av_valid)
        present = torch.stack(
            [has_t, audio_valid.any(dim=1).to(has_t.dtype), visual_valid.any(dim=1).to(has_t.dtype)], dim=-1
        )
        fused = self.fuse(torch.cat([pooled_t, pooled_av], dim=-1)) + self.presence(present)
        if self.audio_stats is not None:
            fused = fused + self.audio_stats(audio, audio_valid)

        enhanced, alpha, outputs = self.enhancer(fused)
        b = enhanced.shape[0]
        pseudo = self.to_pseudo(enhanced).view(b, self.cfg.pseudo_tokens, self.llm_hidden)
        pseudo = pseudo * torch.rsqrt(pseudo.pow(2).mean(dim=-1, keepdim=True) + 1e-6)
        pseudo = pseudo * self.pseudo_gain * self.embed_rms
        return FusionOutput(pseudo_tokens=pseudo, alpha=alpha, expert_outputs=outputs, fused=fused, enhanced=enhanced)


def _masked_mean(x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over valid positions; rows with no valid position give exact zeros and has=0."""
    w = valid.to(x.dtype)
    count = w.sum(dim=1, keepdim=True)
    pooled = (x * w[..., None]).sum(dim=1) / count.clamp(min=1.0)
    return pooled, (count[:, 0] > 0).to(x.dtype)

