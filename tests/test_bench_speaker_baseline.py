"""The speaker-baseline benchmark's live-like baseline: built only from the same speaker's other utterances whose
label the scenario allows, never from the utterance itself, and shrunk toward the population."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_speaker_baseline import speaker_centred, stream_centred  # noqa: E402


def _data():
    actors = np.array(["a"] * 6 + ["b"] * 6)
    labels = np.array(["calm", "calm", "angry", "angry", "sad", "sad"] * 2)
    x = np.arange(12, dtype=float)[:, None] * np.array([[1.0, 10.0]])
    return x, actors, labels


def test_stream_baseline_uses_only_the_speakers_allowed_history_shrunk_toward_the_population():
    x, actors, labels = _data()
    population = np.array([100.0, 1000.0])
    rng = np.random.default_rng(0)
    # Row 2 (actor a, angry), a calm-only history: rows 0 and 1, with 3 population pseudo-utterances.
    out = stream_centred(x, actors, labels, np.array([2]), population, lambda j: ("calm",), rng, history=10,
                         pseudo_count=3.0)
    np.testing.assert_allclose(out[0], x[2] - (x[0] + x[1] + 3.0 * population) / 5.0)
    # Any history: the speaker's five other rows, never row 2 itself nor actor b's rows.
    out = stream_centred(x, actors, labels, np.array([2]), population, lambda j: None, rng, history=10,
                         pseudo_count=3.0)
    others = [0, 1, 3, 4, 5]
    np.testing.assert_allclose(out[0], x[2] - (x[others].sum(axis=0) + 3.0 * population) / 8.0)
    # No history allowed: the population mean alone.
    out = stream_centred(x, actors, labels, np.array([7]), population, lambda j: (), rng)
    np.testing.assert_allclose(out[0], x[7] - population)
    # A history longer than allowed is cut to `history` utterances drawn from the pool.
    out = stream_centred(x, actors, labels, np.array([2]), population, lambda j: None, rng, history=2,
                         pseudo_count=0.0)
    diffs = {tuple(x[2] - (x[i] + x[j]) / 2.0) for i in others for j in others if i < j}
    assert tuple(out[0]) in diffs


def test_speaker_centring_removes_each_speakers_mean():
    x, actors, _ = _data()
    out = speaker_centred(x, actors)
    for a in ("a", "b"):
        np.testing.assert_allclose(out[actors == a].mean(axis=0), 0.0, atol=1e-12)
