"""The text prior (egmf_core.text_prior): stored in the checkpoint exactly, loaded with its sentence encoder, and
applied by EGMFModel.score to the label choice and the calibrated probabilities of text-led rows only."""

from __future__ import annotations

import numpy as np
import pytest

from egmf_core.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, read_file, read_text_prior, write_file
from egmf_core.model_io import ModelInput
from egmf_core.text_prior import ENCODER_NAME, METADATA_KEY, SentenceEncoder, TextPrior

SEVEN = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")


def test_prior_round_trips_exactly_and_is_checked() -> None:
    rng = np.random.default_rng(0)
    p = TextPrior(SEVEN, rng.normal(size=(7, 16)).astype(np.float32), rng.normal(size=7).astype(np.float32),
                  {"default": 2.5}, ENCODER_NAME, "unit")
    q = TextPrior.from_json(p.to_json())
    np.testing.assert_array_equal(p.weight, q.weight)
    np.testing.assert_array_equal(p.bias, q.bias)
    assert (q.labels, q.strength, q.encoder) == (p.labels, p.strength, p.encoder)
    e = rng.normal(size=16).astype(np.float32)
    lp = p.log_probs(e[None])[0]
    assert np.exp(lp).sum() == pytest.approx(1.0, abs=1e-9)
    order = ["sadness", "anger", "joy", "neutral", "fear", "surprise", "disgust"]
    np.testing.assert_allclose(p.bias_for("default", e, order), 2.5 * lp[[SEVEN.index(x) for x in order]], rtol=1e-6)
    assert p.bias_for("ravdess", e, order) is None  # no strength for the set
    assert p.bias_for("default", e, [*order, "calm"]) is None  # a label the classifier has no class for
    with pytest.raises(ValueError, match="text_prior: inconsistent shapes"):
        TextPrior(SEVEN, p.weight[:3], p.bias)
    with pytest.raises(ValueError, match="text_prior.encoder"):
        TextPrior(SEVEN, p.weight, p.bias, encoder="another/encoder")
    with pytest.raises(ValueError, match="text_prior.strength.default"):
        TextPrior(SEVEN, p.weight, p.bias, {"default": -1.0})
    with pytest.raises(ValueError, match="text_prior.weight"):
        TextPrior.from_json(p.to_json().replace('"shape": [7, 16]', '"shape": [7, 17]'))


def test_sentence_encoder_gives_unit_vectors_that_read_meaning() -> None:
    """The packaged all-MiniLM-L6-v2, loaded from its folder: unit vectors, paraphrases closer than unrelated
    sentences, a batch equal to one-by-one."""
    enc = SentenceEncoder()
    texts = ["I am so angry with you right now.", "You make me really furious.", "The train leaves at nine."]
    v = enc.embed(texts)
    assert v.shape == (3, enc.dim) == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    np.testing.assert_allclose(np.concatenate([enc.embed([t]) for t in texts]), v, atol=1e-5)


@pytest.mark.slow
def test_score_applies_the_prior_to_text_led_rows_only(tmp_path) -> None:
    """A copy of the shipped file with a prior sure of "sadness": a text-only row's answer becomes sadness, and its
    calibrated log-probabilities move by exactly bias / T (softmax((z + b) / T)); a row the voice prior guides is
    unchanged; load_checkpoint reads the prior back and loads the encoder."""
    from egmf_core.research.eval_examples import dataset_examples

    model = load_checkpoint(DEFAULT_CHECKPOINT)
    meld = [e.input for e in dataset_examples(model, "meld", "dev", limit=6)]
    voiced = dataset_examples(model, "ravdess", "dev", limit=1, audio_view="live", label_set="default")[0].input
    model.text_prior = None
    base = model.score([*meld, voiced])
    prior = TextPrior(SEVEN, np.zeros((7, 384), np.float32),
                      np.where(np.array(SEVEN) == "sadness", 6.0, 0.0).astype(np.float32), {"default": 3.0})
    tensors, meta = read_file(DEFAULT_CHECKPOINT)
    meta[METADATA_KEY] = prior.to_json()
    path = write_file(tensors, meta, tmp_path / "text_prior.safetensors")
    assert read_text_prior(path).to_json() == prior.to_json()
    model = load_checkpoint(path)
    assert model.sentence_encoder is not None
    guided = model.score([*meld, voiced])
    t = model.calibration.temperature("default", voiced=False)
    bias = prior.bias_for("default", np.zeros(384, np.float32), SEVEN)
    for b, g in zip(base[:-1], guided[:-1]):
        assert g.emotion == "sadness" and not g.voice_prior
        shift = np.log([g.emotion_probs[x] for x in SEVEN]) - np.log([b.emotion_probs[x] for x in SEVEN])
        np.testing.assert_allclose(shift - bias / t, (shift - bias / t).mean(), atol=1e-4)
    assert guided[-1].voice_prior and base[-1].voice_prior
    assert guided[-1].emotion == base[-1].emotion
    assert guided[-1].emotion_probs == pytest.approx(base[-1].emotion_probs, abs=1e-6)


def test_shipped_checkpoint_carries_its_text_prior() -> None:
    """The shipped file guides MELD's seven labels with a prior on the packaged encoder's 384-wide vectors."""
    prior = read_text_prior(DEFAULT_CHECKPOINT)
    assert prior is not None and prior.labels == SEVEN and prior.dim == 384
    assert prior.encoder == ENCODER_NAME and prior.strength.get("default", 0) > 0
    assert "MELD train" in prior.fitted_on


def test_text_only_input_without_words_is_not_guided() -> None:
    """An utterance whose transcript is empty has no words to read: the text prior stays out (LLM alone)."""
    model = load_checkpoint(DEFAULT_CHECKPOINT)
    empty = ModelInput(context=[], current=model.prompts.make_turn("Speaker", ""))
    worded = ModelInput(context=[], current=model.prompts.make_turn("Speaker", "I hate this so much."))
    (b0, v0), (b1, v1) = model.label_priors([empty, worded])
    assert b0 is None and not v0
    assert b1 is not None and b1.shape == (7,) and not v1


def test_fit_selects_the_strength_that_helps_and_checks_it_on_held_out_dialogues() -> None:
    """fit_text_prior's selection: with an LLM that confuses two labels and a classifier that separates them, a
    strength > 0 wins on the fitting rows and the held-out dialogues gain; with an uninformative classifier, 0 wins."""
    from egmf_core.research.fit_text_prior import held_out_gain, select

    rng = np.random.default_rng(0)
    n = 600
    gold = rng.integers(0, 3, n)
    llm = np.log(np.full((n, 3), 0.2))
    llm[np.arange(n), np.where(gold == 2, 2, 0)] = np.log(0.6)  # labels 0 and 1 both come out as 0
    informative = np.log(np.full((n, 3), 0.1))
    informative[np.arange(n), gold] = np.log(0.8)
    flat = np.log(np.full((n, 3), 1 / 3))
    dialogues = np.repeat(np.arange(n // 6), 6)
    f1, c, s = select(llm, {0.3: informative, 1.0: flat}, gold, np.ones(n, bool))
    assert c == 0.3 and s > 0
    assert f1 > 99
    check = held_out_gain(llm, {0.3: informative}, gold, dialogues)
    assert check["gain"] > 10 and check["folds_gaining"] == check["folds"]
    _, _, s_flat = select(llm, {1.0: flat}, gold, np.ones(n, bool))
    assert s_flat == 0.0
