"""benchmarks/bench_voice_features.py: candidate voice features scored by leave-two-actors-out CV over RAVDESS 01-12
(real live cuts, real Whisper states, real openSMILE), never touching the test actors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_voice_features as bench  # noqa: E402


def test_speech_statistics_leave_out_the_framing() -> None:
    states = np.zeros((200, 4))
    states[bench.SPEECH_TRIM_FRAMES:-bench.SPEECH_TRIM_FRAMES] = 1.0  # speech inside, room tone outside
    stats = bench.speech_statistics(states)
    assert stats.shape == (8,) and np.allclose(stats[:4], 1.0) and np.allclose(stats[4:], 0.0)
    short = np.arange(20.0)[:, None] * np.ones((1, 4))  # too short to trim: every frame counts
    assert np.allclose(bench.speech_statistics(short)[:4], 9.5)



def test_dynamics_and_percentiles_read_the_speech_frames_only() -> None:
    t = bench.SPEECH_TRIM_FRAMES
    states = np.full((200, 3), 50.0)  # room tone far from the speech: any leak would show
    states[t:-t] = np.arange(200 - 2 * t, dtype=float)[:, None] * np.array([[1.0, 2.0, 0.0]])  # a steady ramp
    assert np.allclose(bench.speech_dynamics(states), 0.0)  # constant steps: no spread
    p10_p90 = bench.speech_percentiles(states)
    ramp = np.arange(200 - 2 * t, dtype=float)
    assert p10_p90.shape == (6,)
    assert np.allclose(p10_p90[:3], [np.percentile(ramp, 10), 2 * np.percentile(ramp, 10), 0.0])
    assert np.allclose(p10_p90[3:], [np.percentile(ramp, 90), 2 * np.percentile(ramp, 90), 0.0])


@pytest.mark.slow
def test_cross_validation_report_on_real_cuts(tmp_path) -> None:
    out = tmp_path / "vf"
    assert bench.main(["--limit", "48", "--degraded-copies", "1", "--candidates", "whisper", "egemaps",
                       "whisper-speech+egemaps", "--training-actors", "4", "--draws", "1", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    dims = {name: r["dims"] for name, r in result["candidates"].items()}
    assert dims == {"whisper": 768, "egemaps": 88, "whisper-speech+egemaps": 856}
    for r in result["candidates"].values():
        assert len(r["folds"]) == 6 and all(0 <= a <= 100 for a in r["folds"])
        assert r["c"] in bench.C_GRID and 0 <= r["unseen_chain"] <= 100
        assert set(r["learning_curve"]) == {"4"} and 0 <= r["learning_curve"]["4"] <= 100
    assert "| egemaps | 88 |" in out.with_suffix(".md").read_text()
    assert "| K = 4 |" in out.with_suffix(".md").read_text()
