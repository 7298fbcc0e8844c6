"""The fusion stack on its own: expert shapes, gating, modality masking, pseudo-token scale (no LLM needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from egmf_core.config import AblationConfig, ConfigError, EGMFConfig, FusionConfig
from egmf_core.data import resolve_data_dir
from egmf_core.features import WhisperFrontend, load_audio
from egmf_core.fusion import FusionStack

LLM_HIDDEN, EMBED_RMS = 576, 0.12


@pytest.fixture(scope="module")
def real_audio() -> list[np.ndarray]:
    """Whisper encoder states of two real RAVDESS clips (angry / sad)."""
    fe = WhisperFrontend()
    root = resolve_data_dir() / "ravdess" / "Actor_01"
    return [fe.encoder_states(load_audio(root / f)) for f in ("03-01-05-02-01-01-01.flac", "03-01-04-01-01-01-01.flac")]


def make_stack(ablation: AblationConfig | None = None, seed: int = 0) -> FusionStack:
    torch.manual_seed(seed)
    stack = FusionStack(FusionConfig(), ablation or AblationConfig(), LLM_HIDDEN, EMBED_RMS)
    return stack.eval()


def inputs(audio: np.ndarray, t_text: int = 12, t_vis: int = 20, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ta = len(audio) - len(audio) % 2
    return dict(
        text_embeds=torch.randn(1, t_text, LLM_HIDDEN, generator=g) * EMBED_RMS,
        text_valid=torch.ones(1, t_text, dtype=torch.bool),
        audio=torch.from_numpy(audio[:ta])[None],
        audio_valid=torch.ones(1, ta, dtype=torch.bool),
        visual=torch.rand(1, t_vis, 58, generator=g),
        visual_valid=torch.ones(1, t_vis, dtype=torch.bool),
    )


def test_experts_have_the_papers_bottlenecks_and_activations():
    stack = make_stack()
    d = FusionConfig().hidden
    experts = stack.enhancer.experts
    assert [e.bottleneck for e in experts] == [d // 8, d // 4, d // 2]
    assert [type(e.net[1]) for e in experts] == [nn.Mish, nn.GELU, nn.SiLU]
    for e in experts:
        assert e.net[0].in_features == d and e.net[-1].out_features == d


def test_alpha_is_a_distribution_that_depends_on_the_input(real_audio):
    stack = make_stack()
    with torch.no_grad():
        a1 = stack(**inputs(real_audio[0], seed=1)).alpha
        a2 = stack(**inputs(real_audio[1], seed=2)).alpha
    for a in (a1, a2):
        assert a.shape == (1, 3)
        assert torch.all(a >= 0) and torch.allclose(a.sum(-1), torch.ones(1))
    assert not torch.allclose(a1, a2, atol=1e-4)


@pytest.mark.parametrize("modality", ["audio", "visual", "text_embeds"])
def test_masked_modality_has_no_influence(real_audio, modality):
    stack = make_stack()
    valid_key = {"audio": "audio_valid", "visual": "visual_valid", "text_embeds": "text_valid"}[modality]
    x1 = inputs(real_audio[0])
    x1[valid_key] = torch.zeros_like(x1[valid_key])
    x2 = dict(x1)
    x2[modality] = x1[modality] * -3.0 + 7.0  # entirely different values under the mask
    with torch.no_grad():
        o1, o2 = stack(**x1), stack(**x2)
    assert torch.equal(o1.pseudo_tokens, o2.pseudo_tokens)
    assert torch.equal(o1.alpha, o2.alpha)
    # ... while the same change to a present modality does change the output
    x3 = inputs(real_audio[0])
    x4 = dict(x3)
    x4[modality] = x3[modality] * -3.0 + 7.0
    with torch.no_grad():
        assert not torch.allclose(stack(**x3).pseudo_tokens, stack(**x4).pseudo_tokens)


def test_all_media_missing_still_gives_finite_tokens(real_audio):
    stack = make_stack()
    x = inputs(real_audio[0])
    x["audio_valid"][:] = False
    x["visual_valid"][:] = False
    with torch.no_grad():
        out = stack(**x)
    assert torch.isfinite(out.pseudo_tokens).all() and torch.isfinite(out.alpha).all()


def test_padding_frames_are_ignored(real_audio):
    """A batch of two clips gives each the same output as running it alone (padding is masked)."""
    stack = make_stack()
    a, b = real_audio
    with torch.no_grad():
        alone = stack(**inputs(a)).pseudo_tokens
        x = inputs(a)
        tb = len(b) - len(b) % 2
        pad = max(x["audio"].shape[1], tb)
        audio = torch.zeros(2, pad, 384)
        valid = torch.zeros(2, pad, dtype=torch.bool)
        audio[0, : x["audio"].shape[1]] = x["audio"][0]
        valid[0, : x["audio"].shape[1]] = True
        audio[1, :tb] = torch.from_numpy(b[:tb])
        valid[1, :tb] = True
        batched = stack(
            text_embeds=x["text_embeds"].repeat(2, 1, 1), text_valid=x["text_valid"].repeat(2, 1),
            audio=audio, audio_valid=valid,
            visual=x["visual"].repeat(2, 1, 1), visual_valid=x["visual_valid"].repeat(2, 1),
        ).pseudo_tokens
    assert torch.allclose(batched[0], alone[0], atol=1e-5)


def test_pseudo_tokens_match_the_llm_embedding_scale(real_audio):
    stack = make_stack()
    with torch.no_grad():
        p = stack(**inputs(real_audio[0])).pseudo_tokens
    assert p.shape == (1, FusionConfig().pseudo_tokens, LLM_HIDDEN)
    rms = p.pow(2).mean(-1).sqrt()
    assert torch.allclose(rms, torch.full_like(rms, EMBED_RMS), rtol=1e-3)


def test_dropped_expert_and_uniform_gating(real_audio):
    dropped = make_stack(AblationConfig(experts=[True, False, True]))
    uniform = make_stack(AblationConfig(gating="uniform"))
    with torch.no_grad():
        a = dropped(**inputs(real_audio[0])).alpha[0]
        u = uniform(**inputs(real_audio[0])).alpha[0]
    assert a[1].item() == 0.0 and abs(a.sum().item() - 1) < 1e-6
    assert torch.allclose(u, torch.full((3,), 1 / 3))


def test_config_validation_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match="fusion.hiden"):
        EGMFConfig.from_dict({"fusion": {"hiden": 128}})
    with pytest.raises(ConfigError, match="lora.r: expected an integer"):
        EGMFConfig.from_dict({"lora": {"r": "eight"}})
    with pytest.raises(ConfigError, match="ablation.gating"):
        EGMFConfig.from_dict({"ablation": {"gating": "random"}})
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  fusion:\n    hidden: 128\n    pseudo_tokens: 4\n  lora:\n    enabled: false\n")
    cfg = EGMFConfig.from_yaml(path)
    assert cfg.fusion.hidden == 128 and cfg.fusion.pseudo_tokens == 4 and not cfg.lora.enabled
    assert EGMFConfig.from_dict(cfg.to_dict()) == cfg


def test_audio_statistics_block_starts_as_a_no_op_and_ignores_padding(real_audio):
    """The zero-initialised statistics block can join a trained stack without changing it; once trained, padded
    frames and clips without audio still contribute nothing."""
    import dataclasses

    from egmf_core.fusion import AudioStatistics

    plain = make_stack()
    torch.manual_seed(0)
    with_stats = FusionStack(dataclasses.replace(FusionConfig(), audio_stats=True), AblationConfig(), LLM_HIDDEN,
                             EMBED_RMS)
    with_stats.load_state_dict(plain.state_dict(), strict=False)
    with_stats.eval()
    x = inputs(real_audio[0])
    with torch.no_grad():
        assert torch.equal(with_stats(**x).pseudo_tokens, plain(**x).pseudo_tokens)

    block = AudioStatistics(384, 32)
    nn.init.normal_(block.net[-1].weight)  # as if trained
    a = x["audio"]
    padded = torch.cat([a, torch.randn(1, 30, 384) * 50], dim=1)
    valid = torch.cat([x["audio_valid"], torch.zeros(1, 30, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        out = block(a, x["audio_valid"])
        assert out.abs().sum() > 0
        assert torch.allclose(block(padded, valid), out, atol=1e-5)
        assert torch.equal(block(a, torch.zeros_like(x["audio_valid"])), torch.zeros_like(out))
