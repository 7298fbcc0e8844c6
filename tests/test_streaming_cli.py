"""``python -m streaming``: input errors exit 2 with one line, JSON lines and readable output, Ctrl-C flushes.

The model is replaced by the segmentation-only stand-in (``--analyzer test_streaming_support:...``); what is
checked here is the command line itself."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from test_streaming_support import (
    REPO,
    SR,
    Clip,
    espeak_conversation,
    join_with_silence,
    needs_espeak,
    needs_ravdess,
    ravdess_clips,
    write_wav,
)

from streaming.cli import format_time, main
from streaming.events import UtteranceEvent, parse_event
from streaming.sources import list_input_devices

STAND_IN = "test_streaming_support:SegmentationOnlyAnalyzer"


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    return subprocess.run([sys.executable, "-m", "streaming", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("args", [["--mic"], ["--mic", "--device", "USB Audio"], ["--webcam"]])
def test_missing_microphone_exits_2_with_one_line(args):
    if list_input_devices():
        pytest.skip("this machine has an audio input device")
    r = run_cli(*args)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and "no audio input device" in lines[0]
    assert "Traceback" not in r.stderr


def test_bad_file_exits_2(tmp_path):
    r = run_cli("--file", str(tmp_path / "missing.wav"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "file not found" in r.stderr
    (tmp_path / "x.mp3").write_bytes(b"\x00" * 100)
    r = run_cli("--file", str(tmp_path / "x.mp3"))
    assert r.returncode == 2 and "not a readable media file" in r.stderr and "Traceback" not in r.stderr


def test_unknown_analyzer_exits_3_with_one_line(tmp_path):
    path = write_wav(tmp_path / "a.wav", __import__("numpy").zeros(1600, "float32"))
    r = run_cli("--file", str(path), "--analyzer", "no_such_module:Thing")
    assert r.returncode == 3 and r.stderr.strip().startswith("error: model unavailable")
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0


def test_usage_errors_exit_2():
    assert run_cli().returncode == 2  # a source is required
    assert run_cli("--file", "a.wav", "--mic").returncode == 2  # only one source


@needs_espeak
def test_json_lines_for_a_stereo_call(tmp_path):
    path, turns = espeak_conversation(tmp_path)
    r = run_cli("--file", str(path), "--json", "--stereo-speakers", "--speakers", "Agent,Customer",
                "--stream-id", "call-1", "--analyzer", STAND_IN)
    assert r.returncode == 0, r.stderr
    events = [parse_event(line) for line in r.stdout.splitlines()]  # every line is one valid event
    utts = [e for e in events if isinstance(e, UtteranceEvent)]
    assert len(utts) == len(turns)
    assert [u.speaker for u in utts] == [["Agent", "Customer"][t.channel] for t in turns]
    assert {e.stream_id for e in events} == {"call-1"}
    assert sum(e.type == "speech_started" for e in events) == len(turns)
    assert json.loads(r.stdout.splitlines()[0])["type"] in ("speech_started", "utterance")


@needs_ravdess
def test_readable_lines_in_process(tmp_path):
    x, refs = join_with_silence(ravdess_clips(3))
    path = write_wav(tmp_path / "three.wav", x)
    out, err = io.StringIO(), io.StringIO()
    from test_streaming_support import SegmentationOnlyAnalyzer

    code = main(["--file", str(path)], analyzer_factory=lambda args: SegmentationOnlyAnalyzer(), out=out, err=err)
    assert code == 0, err.getvalue()
    lines = out.getvalue().splitlines()
    assert len(lines) == len(refs)
    pat = re.compile(r'^\[(\d\d):(\d\d\.\d)-(\d\d):(\d\d\.\d)\] Speaker: "" {2}neutral 1\.00 \| neutral \+0\.0$')
    for line, (b, e) in zip(lines, refs):
        m = pat.match(line)
        assert m, line
        start = int(m.group(1)) * 60 + float(m.group(2))
        assert abs(start - b) <= 0.2


def test_format_time():
    assert format_time(3.24) == "00:03.2"
    assert format_time(65.96) == "01:06.0"
    assert format_time(3725.0) == "1:02:05.0"


@needs_ravdess
def test_ctrl_c_flushes_the_utterance_in_progress(tmp_path):
    """SIGINT while the second clip is being spoken (file paced in real time): the CLI stops reading, still prints
    the second, cut-off utterance, and exits 0."""
    # clips trimmed to their speech (plus 100 ms) so the real-time run stays short
    clips = [Clip(c.file, c.emotion, c.audio[int((c.bounds[0] - 0.1) * SR):int((c.bounds[1] + 0.1) * SR)],
                  (0.1, 0.1 + c.bounds[1] - c.bounds[0])) for c in ravdess_clips(2)]
    x, refs = join_with_silence(clips, gap_s=0.6)
    path = write_wav(tmp_path / "two.wav", x)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    p = subprocess.Popen([sys.executable, "-m", "streaming", "--file", str(path), "--realtime", "--json",
                          "--analyzer", STAND_IN], cwd=REPO, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        events = []
        t_deadline = time.monotonic() + 30
        while time.monotonic() < t_deadline:  # wait for the second utterance to start
            line = p.stdout.readline()
            if not line:
                break
            events.append(parse_event(line))
            if sum(e.type == "speech_started" for e in events) == 2:
                break
        assert sum(e.type == "speech_started" for e in events) == 2, events
        time.sleep(0.4)
        t_sig = time.monotonic()
        p.send_signal(signal.SIGINT)
        rest, err = p.communicate(timeout=10)
        stopped_in = time.monotonic() - t_sig
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    events += [parse_event(line) for line in rest.splitlines()]
    utts = [e for e in events if isinstance(e, UtteranceEvent)]
    assert len(utts) == 2
    assert abs(utts[1].start - refs[1][0]) <= 0.15
    assert utts[1].end < refs[1][1] - 0.3  # cut off by the interrupt, not the natural end
    assert stopped_in < 3.0
    assert "Traceback" not in err
