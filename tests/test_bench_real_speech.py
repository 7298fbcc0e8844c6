"""The real-speech benchmark (``benchmarks/bench_real_speech.py``) on eight RAVDESS test clips under two channel
conditions: accuracy, macro F1, calibration error and false alarms per condition, the summary and both report files.
No accuracy thresholds (eight clips); the structure, the counts and the media list are checked."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_streaming_support import REPO, needs_ravdess

pytestmark = [pytest.mark.slow, needs_ravdess]


def test_real_speech_report(tmp_path):
    out = tmp_path / "real_speech"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_real_speech.py"), "--conditions", "clean",
                    "noise_10dB", "--limit", "8", "--no-recordings", "--out", str(out)],
                   check=True, cwd=REPO, capture_output=True, timeout=900)
    res = json.loads(out.with_suffix(".json").read_text())
    assert list(res["ravdess"]) == ["clean", "noise_10dB"]
    assert res["loudness_lufs"] == -23.0 and res["temperatures"]["ravdess"] != 1.0  # the shipped model's settings
    for r in res["ravdess"].values():
        assert r["n"] == 8 and 0 <= r["accuracy"] <= 100 and 0 <= r["macro_f1"] <= 100 and 0 <= r["ece"] <= 1
        # actor 13's first eight clips are its neutral and calm ones: every one is a false-alarm candidate
        fa = r["false_alarm"]
        assert fa["n"] == 8 and len(fa["labels"]) == round(fa["rate"] * 8)
        assert not {"neutral", "calm"} & set(fa["labels"])
    s = res["summary"]
    assert s["worst_drop"] == res["ravdess"][s["worst_condition"]]["accuracy"] - res["ravdess"]["clean"]["accuracy"]
    assert res["recordings"] == [] and s["talking_heads_utterances"] == 0
    assert "| noise_10dB |" in out.with_suffix(".md").read_text()


def test_media_list_is_the_recordings_with_sound():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_real_speech import media_files

    files = media_files()
    assert sum(kind == "calm" for _, kind in files) == 5  # the talking heads
    assert all(p.is_file() for p, _ in files) and ("sadness" in {kind for _, kind in files})
