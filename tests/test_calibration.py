"""Confidence calibration: fitted temperatures are stored in the checkpoint, loaded with it and applied on every
path (evaluation's batch scoring, the live predictor), changing the confidences but never the labels."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors import safe_open

from egmf_core.calibration import METADATA_KEY, Calibration
from egmf_core.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, read_calibration
from egmf_core.research.eval_examples import dataset_examples
from egmf_core.research.fit_calibration import write_calibrated
from egmf_core.research.metrics import calibration_report, fit_temperature


def test_fit_temperature_recovers_the_temperature_that_made_the_labels() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4000, 7))
    p = np.exp(logits / 2.5)
    p /= p.sum(1, keepdims=True)
    gold = np.array([rng.choice(7, p=row) for row in p])
    assert fit_temperature(logits, gold) == pytest.approx(2.5, rel=0.08)


def test_calibration_report_measures_overconfidence() -> None:
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.4, 1.0, 5000)
    gold = (rng.uniform(size=5000) < conf).astype(int)  # right exactly as often as it says: calibrated
    probs = np.stack([conf, 1 - conf], 1)
    fair = calibration_report(probs, 1 - gold)  # class 0 is predicted; correct when gold==1 -> index 0
    assert fair["ece"] < 0.03
    sharp = calibration_report(np.stack([np.full(5000, 0.99), np.full(5000, 0.01)], 1), 1 - gold)
    assert sharp["ece"] > 0.2 and sum(sharp["bins"]["count"]) == 5000
    with pytest.raises(ValueError, match="emotion_temperature.default"):
        Calibration({"default": 0.0})


def test_write_calibrated_changes_only_the_calibration(tmp_path) -> None:
    out = write_calibrated(DEFAULT_CHECKPOINT, tmp_path / "c.safetensors", Calibration({"default": 1.7}, "test"))
    assert read_calibration(out) == Calibration({"default": 1.7}, "test")
    with safe_open(str(DEFAULT_CHECKPOINT), framework="pt") as a, safe_open(str(out), framework="pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        assert all(a.get_tensor(k).equal(b.get_tensor(k)) for k in a.keys())
        meta_a, meta_b = a.metadata(), b.metadata()
    assert ({k: v for k, v in meta_a.items() if k != METADATA_KEY}
            == {k: v for k, v in meta_b.items() if k != METADATA_KEY})


@pytest.mark.slow
def test_shipped_calibration_is_loaded_and_applied_everywhere() -> None:
    from egmf_core.predictor import EGMFPredictor

    shipped = read_calibration("default")
    assert shipped.temperature("default") != 1.0 and shipped.temperature("ravdess") != 1.0
    model = load_checkpoint("default")
    assert model.calibration == shipped
    inputs = [e.input for e in dataset_examples(model, "meld", "dev", limit=12)]
    calibrated = model.score(inputs)
    model.calibration = Calibration()
    raw = model.score(inputs)
    t = shipped.temperature("default")
    for c, r in zip(calibrated, raw):
        assert c.emotion == r.emotion and c.sentiment_score == r.sentiment_score  # labels never move
        labels = list(r.emotion_probs)
        expected = np.exp(np.log([r.emotion_probs[k] for k in labels]) / t)
        np.testing.assert_allclose([c.emotion_probs[k] for k in labels], expected / expected.sum(), atol=1e-4)
    # the live path (CLI and service load the predictor) carries the same calibration
    predictor = EGMFPredictor.load("default")
    assert predictor.model.calibration == shipped
    p = predictor.predict(predictor.new_conversation(), text=inputs[0].current.text, speaker="Speaker")
    assert max(p.emotion_probs.values()) < 0.999


def test_voice_guided_rows_have_their_own_temperature() -> None:
    cal = Calibration.from_json(Calibration({"default": 2.0, "default+voice": 4.0, "ravdess": 3.0}).to_json())
    assert cal.temperature("default") == 2.0 and cal.temperature("default", voiced=True) == 4.0
    assert cal.temperature("ravdess", voiced=True) == 3.0  # no "+voice" entry: the label set's own
    assert cal.temperature("iemocap6", voiced=True) == 1.0
    assert Calibration.key("default", voiced=True) == "default+voice" and Calibration.key("default") == "default"
    np.testing.assert_array_equal(cal.row_temperatures("default", [True, False]), [4.0, 2.0])


@pytest.mark.slow
def test_the_voice_guided_temperature_is_applied_where_the_prior_guided_the_answer() -> None:
    """On real inputs through the shipped model: RAVDESS dev live cuts (a familiar voice: the voice prior guides the
    answer) get the `default+voice` temperature, MELD dev lines (no audio) the `default` one."""
    from egmf_core.research.fit_calibration import as_default_label_set

    model = load_checkpoint("default")
    voice = as_default_label_set(dataset_examples(model, "ravdess", "dev", limit=3, audio_view="live"))
    text = dataset_examples(model, "meld", "dev", limit=3)
    inputs = [e.input for e in voice + text]
    model.calibration = Calibration()
    raw = model.score(inputs)
    model.calibration = Calibration({"default": 2.0, "default+voice": 4.0})
    calibrated = model.score(inputs)
    assert [p.voice_prior for p in raw] == [True] * len(voice) + [False] * len(text)
    for c, r in zip(calibrated, raw):
        t = 4.0 if r.voice_prior else 2.0
        labels = list(r.emotion_probs)
        expected = np.exp(np.log([r.emotion_probs[k] for k in labels]) / t)
        np.testing.assert_allclose([c.emotion_probs[k] for k in labels], expected / expected.sum(), atol=1e-4)
        assert c.emotion == r.emotion and c.voice_prior == r.voice_prior
