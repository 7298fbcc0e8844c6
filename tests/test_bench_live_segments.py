"""The live-cut benchmark (``benchmarks/bench_live_segments.py``) on four RAVDESS dev clips: every setting and the
whole clip get a word error rate, an accuracy and an agreement, the cuts keep what the segmenter was told to keep,
and the report is written. No timing thresholds."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_streaming_support import REPO, needs_ravdess

pytestmark = [pytest.mark.slow, needs_ravdess]


def test_live_segments_report(tmp_path):
    out = tmp_path / "live_segments"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_live_segments.py"), "--settings",
                    "pre300/post120", "pre1000/post60/frame1.0", "--limit", "4", "--out", str(out)],
                   check=True, cwd=REPO, capture_output=True, timeout=600)
    res = json.loads(out.with_suffix(".json").read_text())
    assert res["data"] == "RAVDESS dev (actors 11-12), 4 clips"
    settings = res["settings"]
    assert list(settings) == ["pre300/post120", "pre1000/post60/frame1", "clip"]
    for r in settings.values():
        assert 0 <= r["wer_mean"] <= 100 and 0 <= r["accuracy8"] <= 100
        assert 0 <= r["agreement_with_pre300/post120"] <= 100 and r["clips_with_no_segment"] == 0
    assert settings["pre300/post120"]["agreement_with_pre300/post120"] == 100.0
    # the audio the cut kept after the end of speech is the post-roll (the VAD's end trims a quiet decay at most)
    assert settings["pre300/post120"]["tail_ms_p50"] >= 120 and settings["pre1000/post60/frame1"]["tail_ms_p50"] >= 60
    assert settings["clip"]["tail_ms_p50"] is None
    assert "| pre1000/post60/frame1 |" in out.with_suffix(".md").read_text()

    with pytest.raises(subprocess.CalledProcessError) as err:
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_live_segments.py"), "--settings", "post60"],
                       check=True, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "expected preMS/postMS[/frameS]" in err.value.stderr
