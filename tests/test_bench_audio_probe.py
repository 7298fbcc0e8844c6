"""The RAVDESS audio probe (``benchmarks/bench_audio_probe.py``): the speaker mapping does what its docstring says,
histories never contain the clip itself, and a small run on real clips writes every row."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from test_streaming_support import REPO, needs_ravdess

sys.path.insert(0, str(REPO / "benchmarks"))
import bench_audio_probe  # noqa: E402
from bench_audio_probe import Population, Split, history_rows, speaker_mapped  # noqa: E402


def _clips(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(loc=3.0, scale=2.0, size=(int(rng.integers(40, 90)), 6)) for _ in range(4)]


def test_a_speaker_mapped_onto_the_population_has_its_statistics():
    pop = Population.of(_clips(1))
    clip = _clips(2)[0]
    mapped = speaker_mapped(clip, [clip], pop, n0=0)  # the speaker's statistics are the clip's own
    np.testing.assert_allclose(mapped.mean(0), pop.mean, atol=1e-9)
    np.testing.assert_allclose(mapped.std(0), pop.std, atol=1e-9)
    np.testing.assert_allclose(speaker_mapped(clip, [], pop, n0=1), clip, atol=1e-9)  # no history: unchanged
    near = speaker_mapped(clip, _clips(3), pop, n0=1e9)  # shrunk all the way: the population's own statistics
    np.testing.assert_allclose(near, clip, atol=1e-5)
    with pytest.raises(ValueError, match="n0 > 0"):
        speaker_mapped(clip, [], pop, n0=0)


def test_histories_never_hold_the_clip_and_one_emotion_rows_skip_that_emotion():
    labels = np.array(["angry", "sad", "angry", "neutral", "sad", "angry"])
    split = Split([np.zeros((2, 2))] * 6, labels, np.array(["a"] * 6))
    others = lambda i: [j for j in range(6) if j != i]  # noqa: E731
    for name, histories in history_rows(split, np.random.default_rng(0)).items():
        for history in histories:
            for i in range(6):
                if history.scores(i):
                    assert i not in history.pick(i, others(i)), name
    (own,) = history_rows(split, np.random.default_rng(0))["clips of the utterance's own emotion"]
    assert own.pick(0, others(0)) == [2, 5] and all(own.scores(i) for i in range(6))
    one_other = history_rows(split, np.random.default_rng(0))["clips of one other emotion (mean over emotions)"]
    assert len(one_other) == 3  # one history per emotion present
    angry_only = one_other[0]
    assert not angry_only.scores(0) and angry_only.scores(1) and angry_only.pick(1, others(1)) == [0, 2, 5]

@pytest.mark.slow
@needs_ravdess
def test_probe_report_on_real_clips(tmp_path):
    out = tmp_path / "audio_probe"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_audio_probe.py"), "--limit", "16", "--out",
                    str(out)],
                   check=True, cwd=REPO, capture_output=True, timeout=900)
    res = json.loads(out.with_suffix(".json").read_text())
    assert res["data"].startswith("RAVDESS train (actors 01-10) 16 clips, dev (11-12) 16, test (13-16) 16")
    assert str(res["C"]) in res["by_C"] and 0 <= res["refit_01_12_test"] <= 100
    rows = res["speaker_mapped_test"]
    assert len(rows) == 8
    for row in rows.values():
        assert set(row) == {"same clips, not normalized", "n0=0", "n0=2"}
        assert all(v is None or 0 <= v <= 100 for v in row.values())
        assert row["n0=2"] is not None  # shrinkage always leaves something to normalize by
    assert rows["1 random other clips"]["same clips, not normalized"] == res["train_01_10"]["test"]
    assert "| clips of the utterance's own emotion |" in out.with_suffix(".md").read_text()
    model = res["model_speaker_mapped_test"]  # the shipped checkpoint on the same clips, mapped and not
    assert res["checkpoint"] == "default" and list(model) == list(bench_audio_probe.MODEL_ROWS)
    assert model["4 random other clips"]["n"] == 16
    for r in model.values():
        assert 0 < r["n"] <= 16 and all(0 <= r[k] <= 100 for k in ("llm_raw", "llm_mapped", "aux_raw", "aux_mapped"))
    assert (model["4 random other clips"]["llm_raw"]
            == model["all other clips of the speaker (balanced emotions)"]["llm_raw"])
