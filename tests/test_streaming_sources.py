"""Sources: a real talking-head video through PyAV, several containers, pacing, pushed PCM, clear input errors."""

from __future__ import annotations

import functools
import http.server
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest
from test_streaming_support import (
    RAVDESS,
    SR,
    TALKING_HEADS,
    load_audio,
    needs_ravdess,
    needs_talking_heads,
    write_wav,
)

from streaming.sources import (
    AudioChunk,
    AVFileSource,
    MicrophoneSource,
    PushSource,
    SourceError,
    VideoFrame,
    list_input_devices,
)


def collect(source):
    audio, video = [], []
    for item in source:
        (audio if isinstance(item, AudioChunk) else video).append(item)
    return audio, video


@needs_talking_heads
def test_talking_head_video_gives_16k_audio_and_timed_frames():
    import av

    path = TALKING_HEADS / "1.mp4"
    with av.open(str(path)) as c:
        a_dur = c.streams.audio[0].duration * c.streams.audio[0].time_base
        v_fps = float(c.streams.video[0].average_rate)
    src = AVFileSource(path, video_fps=10)
    audio, video = collect(src)
    assert src.has_video
    # audio: float32 mono 16 kHz, contiguous stream time from 0, as long as the container's audio track
    assert all(c.sample_rate == SR and c.samples.dtype == np.float32 and c.samples.ndim == 1 for c in audio)
    assert audio[0].start_s == 0.0
    for a, b in zip(audio, audio[1:]):
        assert b.start_s == pytest.approx(a.end_s, abs=1e-9)
    total = sum(c.n_samples for c in audio) / SR
    assert total == pytest.approx(float(a_dur), abs=0.05)
    x = np.concatenate([c.samples for c in audio])
    assert 0.01 < np.sqrt(np.mean(x**2)) and np.abs(x).max() <= 1.0  # real speech, not silence
    # video: RGB uint8 frames, increasing timestamps ~0.1 s apart, covering the clip
    assert len(video) == pytest.approx(total * 10, abs=3)
    ts = np.array([f.t for f in video])
    assert np.all(np.diff(ts) > 0) and ts[0] < 0.1 and ts[-1] > total - 0.3
    assert np.median(np.diff(ts)) == pytest.approx(0.1, abs=1.0 / v_fps)
    t, img = video[0]  # unpacks as (timestamp, image)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.shape[1] <= 640
    assert img.std() > 10  # a real picture


@needs_talking_heads
def test_video_can_be_skipped_and_stereo_kept():
    audio, video = collect(AVFileSource(TALKING_HEADS / "2.mp4", video=False, stereo=True))
    assert video == []
    assert audio[0].samples.ndim == 2 and audio[0].samples.shape[1] == 2 and audio[0].channels == 2


@needs_ravdess
@pytest.mark.parametrize("ext, codec, rate", [("wav", "pcm_s16le", 44100), ("flac", "flac", 22050),
                                              ("mp3", "libmp3lame", 44100), ("mkv", "libopus", 48000),
                                              ("webm", "libopus", 48000)])
def test_containers_decode_to_the_same_speech(tmp_path, ext, codec, rate):
    if not shutil.which("ffmpeg"):
        pytest.skip("ffmpeg CLI not installed")
    src = RAVDESS / "Actor_01" / "03-01-03-01-01-01-01.flac"
    out = tmp_path / f"clip.{ext}"
    r = subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(src), "-ar", str(rate), "-c:a", codec,
                        str(out)], capture_output=True)
    if r.returncode:
        pytest.skip(f"ffmpeg has no {codec}: {r.stderr.decode()[-200:]}")
    ref = load_audio(src)
    audio, _ = collect(AVFileSource(out))
    x = np.concatenate([c.samples for c in audio])
    assert abs(len(x) - len(ref)) <= 0.08 * SR  # codec padding (mp3/opus priming) only
    n = min(len(x), len(ref))
    # same loudness envelope (lossy codecs and resampling change the waveform, not the speech)
    env = lambda y: np.sqrt(np.mean(y[: n // 1600 * 1600].reshape(-1, 1600) ** 2, axis=1))
    lag = max(range(0, 1600, 80), key=lambda k: np.corrcoef(env(np.r_[x[k:], np.zeros(k, np.float32)]),
                                                            env(ref))[0, 1])
    assert np.corrcoef(env(np.r_[x[lag:], np.zeros(lag, np.float32)]), env(ref))[0, 1] > 0.95


def test_realtime_pacing(tmp_path):
    tone = (0.1 * np.sin(2 * np.pi * 300 * np.arange(int(1.2 * SR)) / SR)).astype(np.float32)
    path = write_wav(tmp_path / "tone.wav", tone)
    t0 = time.monotonic()
    fast, _ = collect(AVFileSource(path))
    fast_s = time.monotonic() - t0
    t0 = time.monotonic()
    paced, _ = collect(AVFileSource(path, realtime=True))
    paced_s = time.monotonic() - t0
    assert fast_s < 0.5
    assert 1.0 <= paced_s <= 1.8
    assert sum(c.n_samples for c in paced) == sum(c.n_samples for c in fast) == len(tone)


def test_close_stops_a_paced_file_from_another_thread(tmp_path):
    path = write_wav(tmp_path / "long.wav", np.zeros(30 * SR, np.float32))
    src = AVFileSource(path, realtime=True)
    threading.Timer(0.3, src.close).start()
    t0 = time.monotonic()
    audio, _ = collect(src)
    assert time.monotonic() - t0 < 2.0
    assert 0 < sum(c.n_samples for c in audio) < 5 * SR


def test_http_url(tmp_path):
    tone = (0.1 * np.sin(2 * np.pi * 300 * np.arange(SR) / SR)).astype(np.float32)
    write_wav(tmp_path / "tone.wav", tone)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        src = AVFileSource(f"http://127.0.0.1:{server.server_port}/tone.wav")
        assert src.is_url and src.is_live
        audio, _ = collect(src)
        assert sum(c.n_samples for c in audio) == SR
        with pytest.raises(SourceError) as ei:
            AVFileSource(f"http://127.0.0.1:{server.server_port}/missing.wav").open()
        assert ei.value.field == "url" and "missing.wav" in str(ei.value)
    finally:
        server.shutdown()


@pytest.mark.parametrize("target, kwargs, field, words", [
    ("/nonexistent/call.wav", {}, "file", "file not found"),
    ("rtsp://127.0.0.1:9/stream", {"open_timeout_s": 2}, "url", "cannot open url"),
    ("/dev/video99", {"format": "v4l2", "audio": False}, "device", "not found"),
])
def test_unusable_inputs_raise_one_line_source_errors(target, kwargs, field, words):
    with pytest.raises(SourceError) as ei:
        AVFileSource(target, **kwargs).open()
    assert ei.value.field == field
    assert words in str(ei.value) and "\n" not in str(ei.value)


def test_unreadable_and_unsuitable_files(tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("this is not audio\n")
    with pytest.raises(SourceError, match="not a readable media file") as ei:
        AVFileSource(bad).open()
    assert ei.value.field == "file" and "wav" in str(ei.value)
    with pytest.raises(SourceError, match="directory"):
        AVFileSource(tmp_path).open()
    mono = write_wav(tmp_path / "mono.wav", np.zeros(SR, np.float32))
    with pytest.raises(SourceError, match="2-channel") as ei:
        AVFileSource(mono, stereo=True).open()
    assert ei.value.field == "stereo"
    with pytest.raises(SourceError, match="video_fps"):
        AVFileSource(mono, video_fps=0)


@needs_talking_heads
def test_video_only_request_on_a_file(tmp_path):
    # A video file decoded without audio (as a webcam would be) yields frames only.
    audio, video = collect(AVFileSource(TALKING_HEADS / "3.mp4", audio=False, video_fps=5))
    assert audio == [] and len(video) > 10


def test_microphone_without_input_device_is_a_clear_error():
    if list_input_devices():
        pytest.skip("this machine has an audio input device")
    with pytest.raises(SourceError) as ei:
        MicrophoneSource().open()
    msg = str(ei.value)
    assert ei.value.field == "device"
    assert "no audio input device" in msg and "\n" not in msg and "Traceback" not in msg
    with pytest.raises(SourceError):
        MicrophoneSource(device="USB").open()


# ------------------------------------------------------------------------------------------------------ push


def test_push_source_int16_bytes_float32_and_frames():
    src = PushSource(has_video=True)
    pcm = (np.arange(1600) % 200 - 100).astype(np.int16)
    src.push_audio(pcm.tobytes(), dtype="int16")
    src.push_audio(np.full(800, 0.25, np.float32))
    src.push_video(0.05, np.zeros((4, 6, 3), np.uint8))
    src.push_audio(np.full((400, 1), 0.5, np.float32))  # (n, 1) is accepted as mono
    src.end()
    items = list(src)
    assert [type(i).__name__ for i in items] == ["AudioChunk", "AudioChunk", "VideoFrame", "AudioChunk"]
    assert [i.start_s for i in items if isinstance(i, AudioChunk)] == [0.0, 0.1, 0.15]
    np.testing.assert_allclose(items[0].samples, pcm / 32768.0)
    assert items[2] == (0.05, items[2].image) and isinstance(items[2], VideoFrame)


def test_push_source_resamples_other_rates():
    src = PushSource(sample_rate=48000)
    t = np.arange(48000) / 48000
    x = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    for i in range(0, len(x), 4800):
        src.push_audio(x[i:i + 4800])
    src.end()
    y = np.concatenate([c.samples for c in src])
    assert len(y) == SR
    spec = np.abs(np.fft.rfft(y[2000:14000]))
    assert np.argmax(spec) * SR / 12000 == pytest.approx(440, abs=3)


def test_push_source_stereo_and_errors():
    src = PushSource(channels=2)
    src.push_audio(np.zeros((10, 2), np.float32))
    with pytest.raises(SourceError, match=r"shape \(n, 2\)") as ei:
        src.push_audio(np.zeros(10, np.float32))
    assert ei.value.field == "audio"
    with pytest.raises(SourceError, match="multiple of 2 bytes x 2") as ei:
        src.push_audio(b"\x00" * 6, dtype="int16")
    with pytest.raises(SourceError, match="dtype") as ei:
        src.push_audio(b"\x00\x00", dtype=None)
    assert ei.value.field == "dtype"
    with pytest.raises(SourceError, match="int16 or float32"):
        src.push_audio(np.zeros((4, 2), np.int32))
    with pytest.raises(SourceError, match="NaN"):
        src.push_audio(np.full((4, 2), np.nan, np.float32))
    with pytest.raises(SourceError, match="RGB uint8") as ei:
        src.push_video(0.0, np.zeros((4, 4), np.uint8))
    assert ei.value.field == "video.image"
    with pytest.raises(SourceError, match="timestamp"):
        src.push_video(-1.0, np.zeros((4, 4, 3), np.uint8))
    src.end()
    with pytest.raises(SourceError, match="after the end"):
        src.push_audio(np.zeros((4, 2), np.float32))
    with pytest.raises(SourceError, match="channels"):
        PushSource(channels=3)
    with pytest.raises(SourceError, match="sample_rate"):
        PushSource(sample_rate=44100.0)


def test_push_source_consumed_from_another_thread():
    src = PushSource()
    got = []
    th = threading.Thread(target=lambda: got.extend(src))
    th.start()
    for _ in range(50):
        src.push_audio(np.zeros(320, np.int16))
    src.end()
    th.join(5)
    assert not th.is_alive() and sum(c.n_samples for c in got) == 50 * 320
