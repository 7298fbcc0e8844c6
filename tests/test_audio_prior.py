"""The voice prior (egmf_core.audio_prior): stored in the checkpoint exactly, loaded with it, and applied by
EGMFModel.score to the label choice and the probabilities alike, only where there is audio; a voice unlike the ones
the audio was learned from is answered without its audio."""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from egmf_core.audio_prior import METADATA_KEY, AudioPrior, voice_statistics
from egmf_core.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, read_audio_prior, read_file, write_file
from egmf_core.model_io import ModelInput

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LABELS = ("anger", "calm", "disgust", "fear", "joy", "neutral", "sadness", "surprise")


def _prior(dim: int, favour: str, strength: float) -> AudioPrior:
    """A prior that puts (almost) all its mass on `favour` whatever the voice."""
    bias = np.where(np.array(LABELS) == favour, 20.0, 0.0).astype(np.float32)
    return AudioPrior(LABELS, np.zeros(2 * dim, np.float32), np.ones(2 * dim, np.float32),
                      np.zeros((len(LABELS), 2 * dim), np.float32), bias,
                      {"default": strength, "ravdess": strength}, {"calm": "neutral"}, "test")


def test_prior_round_trips_exactly_and_merges_classes() -> None:
    rng = np.random.default_rng(0)
    p = AudioPrior(LABELS, rng.normal(size=8).astype(np.float32), rng.uniform(0.5, 2, 8).astype(np.float32),
                   rng.normal(size=(8, 8)).astype(np.float32), rng.normal(size=8).astype(np.float32),
                   {"default": 1.25}, {"calm": "neutral"}, "unit")
    q = AudioPrior.from_json(p.to_json())
    for name in ("mean", "scale", "weight", "bias"):
        np.testing.assert_array_equal(getattr(p, name), getattr(q, name))
    assert (q.labels, q.strength, q.merge) == (p.labels, p.strength, p.merge)
    frames = rng.normal(size=(50, 4)).astype(np.float32)
    full = np.exp(p.log_probs(frames))
    seven = [lab for lab in LABELS if lab != "calm"]
    merged = np.exp(p.label_log_probs(frames, seven))
    assert merged.sum() == pytest.approx(1.0, abs=1e-6)
    assert merged[seven.index("neutral")] == pytest.approx(full[1] + full[5], rel=1e-6)
    assert p.bias_for("default", None, seven) is None  # no audio: the LLM alone
    assert p.bias_for("ravdess", frames, LABELS) is None  # no strength for the set
    assert p.bias_for("default", frames[:, :3], seven) is None  # encoder states of another width
    with pytest.raises(ValueError, match="audio_prior: inconsistent shapes"):
        AudioPrior(LABELS, p.mean, p.scale, p.weight[:3], p.bias)
    with pytest.raises(ValueError, match="voice statistics"):
        voice_statistics(np.zeros((0, 4)))


@pytest.mark.slow
def test_score_applies_the_prior_to_label_and_probabilities(tmp_path) -> None:
    """On a real RAVDESS clip's encoder states, a prior sure of "sadness" with a large strength makes the answer
    sadness and its probability the largest; the same utterance without audio is answered as without a prior; the
    prior written into a copy of the shipped file is read back by load_checkpoint."""
    from egmf_core.features.audio import WhisperFrontend, WhisperFrontendConfig, load_audio
    from egmf_core.features.live_cut import LIVE_WINDOW_S, live_cut

    with open(DATA / "ravdess" / "labels.csv", newline="") as fh:
        row = next(r for r in csv.DictReader(fh) if r["actor"] == "13" and r["emotion"] == "angry")
    model = load_checkpoint(DEFAULT_CHECKPOINT)
    frontend = WhisperFrontend(WhisperFrontendConfig(window_s=LIVE_WINDOW_S,
                                                     loudness_lufs=model.cfg.fusion.audio_loudness_lufs))
    states = frontend.encoder_states(live_cut(load_audio(DATA / "ravdess" / row["file"])).audio)
    turn = model.prompts.make_turn("Speaker", row["statement"] + ".")
    with_audio = ModelInput(context=[], current=turn, audio=states)
    text_only = ModelInput(context=[], current=turn)

    model.audio_prior = None
    base_audio, base_text = model.score([with_audio, text_only])
    prior = _prior(states.shape[1], "sadness", 8.0)
    tensors, meta = read_file(DEFAULT_CHECKPOINT)
    meta[METADATA_KEY] = prior.to_json()
    path = write_file(tensors, meta, tmp_path / "prior.safetensors")
    assert read_audio_prior(path).to_json() == prior.to_json()
    model = load_checkpoint(path)
    guided, text = model.score([with_audio, text_only])
    assert guided.emotion == "sadness" and max(guided.emotion_probs, key=guided.emotion_probs.get) == "sadness"
    assert base_audio.emotion != "sadness" or base_audio.emotion_probs["sadness"] < guided.emotion_probs["sadness"]
    assert text.emotion == base_text.emotion
    assert text.emotion_probs == pytest.approx(base_text.emotion_probs, abs=1e-5)


def test_shipped_checkpoint_carries_its_voice_prior() -> None:
    """The shipped file guides both label sets with a prior over RAVDESS's eight classes on tiny.en's 384-wide states,
    calm counted as neutral for MELD's seven."""
    prior = read_audio_prior(DEFAULT_CHECKPOINT)
    assert prior is not None and set(prior.labels) == set(LABELS) and prior.dim == 384
    assert prior.strength.get("default", 0) > 0 and prior.strength.get("ravdess", 0) > 0
    assert prior.merge == {"calm": "neutral"}
    assert prior.domain_threshold is not None and prior.domain_basis.shape[1] == 2 * prior.dim


def test_prior_domain_round_trips_and_is_checked() -> None:
    rng = np.random.default_rng(1)
    d = 8
    center, basis = rng.normal(size=d).astype(np.float32), np.linalg.qr(rng.normal(size=(d, 3)))[0].T.astype(np.float32)
    p = AudioPrior(LABELS, np.zeros(d, np.float32), np.ones(d, np.float32), np.zeros((8, d), np.float32),
                   np.zeros(8, np.float32), domain_center=center, domain_basis=basis, domain_threshold=0.5)
    q = AudioPrior.from_json(p.to_json())
    np.testing.assert_array_equal(q.domain_basis, basis)
    near = np.tile(center[:4], (20, 1)) + rng.normal(0, 1e-3, (20, 4)).astype(np.float32)  # mean ~ center, std ~ 0
    far = rng.normal(0, 30, (20, 4)).astype(np.float32)
    assert q.domain_residual(near) == pytest.approx(p.domain_residual(near))
    assert [q.familiar(near), q.familiar(far)] == [p.familiar(near), p.familiar(far)]
    assert not p.familiar(far) and p.domain_residual(far) > 0.5
    with pytest.raises(ValueError, match="domain"):
        AudioPrior(LABELS, np.zeros(d, np.float32), np.ones(d, np.float32), np.zeros((8, d), np.float32),
                   np.zeros(8, np.float32), domain_basis=basis, domain_threshold=0.5)


@pytest.mark.skipif(not shutil.which("espeak-ng"), reason="needs espeak-ng")
def test_an_unfamiliar_voice_is_answered_without_its_audio(tmp_path) -> None:
    """The shipped checkpoint keeps the audio of a RAVDESS test actor (a voice like those it learned from, never
    trained on) and drops that of an espeak-ng voice (synthetic: unlike any actor): the latter's answer is exactly the
    text-only answer and says the audio was not used."""
    from egmf_core.features.audio import WhisperFrontend, WhisperFrontendConfig, load_audio
    from egmf_core.features.live_cut import LIVE_WINDOW_S, live_cut

    model = load_checkpoint(DEFAULT_CHECKPOINT)
    frontend = WhisperFrontend(WhisperFrontendConfig(window_s=LIVE_WINDOW_S,
                                                     loudness_lufs=model.cfg.fusion.audio_loudness_lufs))
    with open(DATA / "ravdess" / "labels.csv", newline="") as fh:
        row = next(r for r in csv.DictReader(fh) if r["actor"] == "14" and r["emotion"] == "happy")
    wav = tmp_path / "synthetic.wav"
    text = "I really did not expect the call to go this way."
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(wav), text], check=True)
    for audio_file, words, familiar in ((DATA / "ravdess" / row["file"], row["statement"] + ".", True),
                                        (wav, text, False)):
        states = frontend.encoder_states(live_cut(load_audio(audio_file)).audio)
        assert model.audio_prior.familiar(states) is familiar, (audio_file, model.audio_prior.domain_residual(states))
        turn = model.prompts.make_turn("Speaker", words)
        with_audio, text_only = model.score([ModelInput(context=[], current=turn, audio=states),
                                             ModelInput(context=[], current=turn)])
        assert with_audio.modalities["audio"] is familiar
        if not familiar:
            assert with_audio.emotion == text_only.emotion
            assert with_audio.emotion_probs == pytest.approx(text_only.emotion_probs, abs=1e-5)


def test_refit_on_every_actor_keeps_what_was_fitted_on_unheard_speakers() -> None:
    """fit_audio_prior's step 4 refits only the shipped prior's classifier, in the prior's own standardized
    coordinates: the strengths, the familiar-voice domain (both fitted on speakers the prior had not heard) and the
    label merge stay exactly as they were, and the new classifier fits the data it was given."""
    from egmf_core.research.fit_audio_prior import prior_accuracy, refit_on

    prior = read_audio_prior(DEFAULT_CHECKPOINT)
    rng = np.random.default_rng(3)
    y = np.array(LABELS)[rng.integers(0, len(LABELS), 400)]
    centers = {lab: rng.normal(scale=2.0, size=prior.mean.shape) for lab in LABELS}
    z = np.stack([centers[lab] for lab in y]) + rng.normal(size=(len(y), len(prior.mean)))
    x = (prior.mean + prior.scale * z).astype(np.float32)
    new = refit_on(prior, x, y, 0.1, "unit")
    for name in ("mean", "scale", "domain_center", "domain_basis"):
        np.testing.assert_array_equal(getattr(new, name), getattr(prior, name))
    assert (new.labels, new.strength, new.merge, new.domain_threshold) == (
        prior.labels, prior.strength, prior.merge, prior.domain_threshold)
    assert new.fitted_on == "unit" and not np.array_equal(new.weight, prior.weight)
    assert prior_accuracy(new, x, y) > 95.0
