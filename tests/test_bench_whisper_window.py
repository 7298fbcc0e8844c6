"""The encoder-window benchmark (``benchmarks/bench_whisper_window.py``) on four RAVDESS dev clips: every window gets
its encoder time, word error rate, accuracy and agreement, and the report is written. No timing thresholds."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from test_streaming_support import REPO, needs_ravdess

pytestmark = [pytest.mark.slow, needs_ravdess]


def test_window_report(tmp_path):
    out = tmp_path / "whisper_window"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_whisper_window.py"), "--windows", "30", "10",
                    "--limit", "4", "--out", str(out)], check=True, cwd=REPO, capture_output=True, timeout=600)
    res = json.loads(out.with_suffix(".json").read_text())
    assert res["data"] == "RAVDESS dev (actors 11-12), 4 clips"
    assert set(res["windows"]) == {"30", "10"}
    for w, r in res["windows"].items():
        assert r["encoder_ms_p50"] > 0 and 0 <= r["wer_mean"] <= 100
        for text in ("sentence", "transcript"):  # the known sentence, the recognizer's transcript as the text
            t = r[text]
            assert 0 <= t["accuracy8"] <= 100 and 0 <= t["agreement_with_30s"] <= 100
            # paired counts: their difference is the accuracy difference to the 30 s window
            diff = (t["only_this_right"] - t["only_30s_right"]) * 100 / 4
            assert diff == pytest.approx(t["accuracy8"] - res["windows"]["30"][text]["accuracy8"], abs=0.01)
    for text in ("sentence", "transcript"):
        native = res["windows"]["30"][text]
        assert native["agreement_with_30s"] == 100.0 and native["only_30s_right"] == native["only_this_right"] == 0
    assert "| 10 |" in out.with_suffix(".md").read_text()
