"""The WebSocket protocol of the service without starting Ray: the start message (``deploy.start.parse_start``) and
the binary framing of audio and JPEG video frames with every bad input (``deploy.protocol``), fed into a real
``PushSource`` with real JPEGs of a talking-head video."""

from __future__ import annotations

import itertools
import json
import struct

import numpy as np
import pytest
from test_streaming_support import SR, TALKING_HEADS

pytest.importorskip("ray.serve")

from deploy.protocol import (
    VIDEO_HEADER_BYTES,
    FrameError,
    InputLimits,
    StreamInput,
    VideoLimits,
    VideoRateLimiter,
    audio_message,
    decode_jpeg,
    encode_jpeg,
    is_untagged_video,
    jpeg_size,
    video_message,
)
from deploy.settings import AppArgs
from deploy.start import StartError, parse_start
from streaming.sources import (
    AudioChunk,
    AVFileSource,
    AVSourceConfig,
    PushSource,
    VideoFrame,
)


def _field(raw, args=None) -> str:
    with pytest.raises(StartError) as e:
        parse_start(raw if isinstance(raw, (str, bytes)) or raw is None else json.dumps(raw), args or AppArgs())
    assert e.value.message
    return e.value.field


def test_defaults_and_full_message():
    s = parse_start(json.dumps({"sample_rate": 16000}), AppArgs())
    assert (s.sample_rate, s.channels, s.sample_format, s.language, s.speakers, s.stream_id, s.video) == \
        (16000, 1, "int16", None, None, None, False)
    s = parse_start(json.dumps({"type": "start", "sample_rate": 44100, "channels": 2, "sample_format": "float32",
                                "language": "en", "speakers": ["Agent", "Customer"], "stream_id": "c1"}), AppArgs())
    assert (s.sample_rate, s.channels, s.sample_format, s.speakers, s.stream_id) == \
        (44100, 2, "float32", ["Agent", "Customer"], "c1")
    assert parse_start(json.dumps({"sample_rate": 16000, "video": True}), AppArgs()).video is True


@pytest.mark.parametrize("raw, field", [
    (None, "start"),  # a binary first frame
    ("{", "start"),
    ("42", "start"),
    ({"type": "audio", "sample_rate": 16000}, "type"),
    ({}, "sample_rate"),
    ({"sample_rate": True}, "sample_rate"),
    ({"sample_rate": 16000.0}, "sample_rate"),
    ({"sample_rate": 4000}, "sample_rate"),
    ({"sample_rate": 96000}, "sample_rate"),
    ({"sample_rate": 16000, "channels": 0}, "channels"),
    ({"sample_rate": 16000, "channels": 3}, "channels"),
    ({"sample_rate": 16000, "sample_format": "int24"}, "sample_format"),
    ({"sample_rate": 16000, "language": 5}, "language"),
    ({"sample_rate": 16000, "speakers": "Bob"}, "speakers"),
    ({"sample_rate": 16000, "channels": 2, "speakers": ["A", ""]}, "speakers"),
    ({"sample_rate": 16000, "stream_id": "x" * 65}, "stream_id"),
    ({"sample_rate": 16000, "video": "yes"}, "video"),
    ({"sample_rate": 16000, "video": 1}, "video"),
])
def test_malformed(raw, field):
    assert _field(raw) == field


def test_token_and_limits_from_config():
    args = AppArgs(auth_token="s3cret", max_sample_rate=16000, max_channels=1)
    assert _field({"sample_rate": 16000}, args) == "token"
    assert _field({"sample_rate": 16000, "token": "nope"}, args) == "token"
    assert parse_start(json.dumps({"sample_rate": 16000, "token": "s3cret"}), args).sample_rate == 16000
    assert _field({"sample_rate": 22050, "token": "s3cret"}, args) == "sample_rate"
    assert _field({"sample_rate": 16000, "channels": 2, "token": "s3cret"}, args) == "channels"


# ------------------------------------------------------------------------------------------------ binary framing


@pytest.fixture(scope="module")
def faces():
    """Real frames (RGB, 10 fps, as the client sends them) of a talking-head video, and their JPEGs."""
    if not (TALKING_HEADS / "1.mp4").is_file():
        pytest.skip("../shared/data/media/talking_heads missing")
    frames = [item for item in AVFileSource(TALKING_HEADS / "1.mp4", AVSourceConfig(audio=False))
              if isinstance(item, VideoFrame)]
    return frames, [encode_jpeg(f.image) for f in frames]


def _source(video: bool, sample_rate: int = SR, channels: int = 1) -> PushSource:
    return PushSource(sample_rate, channels, has_video=video, max_queue=100_000)


def _items(source: PushSource) -> list:
    source.end()
    return list(source)


def _input(video: bool, sample_format: str = "int16", **video_limits) -> StreamInput:
    limits = InputLimits(max_message_bytes=64000, push_timeout_s=1.0,
                         video=VideoLimits(**video_limits) if video else None)
    return StreamInput(_source(video), sample_format, limits)


def _pcm(seconds: float, sample_format: str = "int16") -> bytes:
    x = 0.1 * np.sin(np.arange(int(seconds * SR)) * 0.05)
    return (x * 32767).astype("<i2").tobytes() if sample_format == "int16" else x.astype("<f4").tobytes()


def test_message_layout(faces):
    _, jpegs = faces
    m = video_message(1.25, jpegs[0])
    assert m[:4] == b"EGV1" and struct.unpack("<d", m[4:12]) == (1.25,) and m[12:] == jpegs[0]
    assert VIDEO_HEADER_BYTES == 12 and jpegs[0][:3] == b"\xff\xd8\xff"
    assert audio_message(b"\x01\x02") == b"EGA1\x01\x02"


def test_pcm_is_never_taken_for_a_video_frame(faces):
    _, jpegs = faces
    assert is_untagged_video(video_message(0.0, jpegs[0]))
    rng = np.random.default_rng(0)
    assert not any(is_untagged_video(rng.integers(0, 256, 3200, dtype=np.uint8).tobytes()) for _ in range(2000))
    assert not is_untagged_video(b"EGV1" + b"\x00" * 3196)  # PCM that happens to start with the tag


def test_jpeg_round_trip_and_downscale(faces):
    frames, jpegs = faces
    original = frames[0].image  # 640 x 640 (the source downscales 700 x 700)
    rgb = decode_jpeg(jpegs[0], max_pixels=4096 * 2160, max_width=640)
    assert rgb.shape == original.shape and rgb.dtype == np.uint8 and rgb.flags["C_CONTIGUOUS"]
    assert np.abs(rgb.astype(int) - original).mean() < 4
    assert jpeg_size(jpegs[0]) == (640, 640)
    small = decode_jpeg(jpegs[0], max_pixels=4096 * 2160, max_width=321)  # odd width: padded rows made contiguous
    assert small.shape == (320, 321, 3) and small.flags["C_CONTIGUOUS"]


def _bomb(jpeg: bytes, width: int, height: int) -> bytes:
    i = jpeg.index(b"\xff\xc0")  # baseline start-of-frame: FF C0, length, precision, height, width
    return jpeg[:i + 5] + struct.pack(">HH", height, width) + jpeg[i + 9:]


@pytest.mark.parametrize("damage, words", [
    (lambda j: b"\x89PNG\r\n\x1a\n" + j[8:], "not a JPEG"),
    (lambda j: b"", "not a JPEG"),
    (lambda j: j[: len(j) // 2], "truncated or corrupt"),
    (lambda j: j[:2000] + b"\x00" * 500 + j[2500:], "truncated or corrupt"),
    (lambda j: j[:2] + b"\xff\xd9", "start-of-frame"),
    (lambda j: _bomb(j, 40000, 40000), "40000 x 40000 pixels"),
])
def test_bad_jpegs_are_refused(faces, damage, words):
    _, jpegs = faces
    with pytest.raises(FrameError) as e:
        decode_jpeg(damage(jpegs[0]), max_pixels=4096 * 2160, max_width=640)
    assert (e.value.code, e.value.field) == ("invalid_video", "video.jpeg") and words in e.value.message


def test_audio_only_stream_is_unchanged_and_refuses_video(faces):
    _, jpegs = faces
    s = _input(video=False)
    assert s.handle(_pcm(0.1)) == []
    [err] = s.handle(video_message(0.05, jpegs[0]))
    assert (err.code, err.field) == ("video_not_enabled", "video") and '"video": true' in err.message
    [err] = s.handle(b"\x01\x02\x03")
    assert (err.code, err.field) == ("invalid_audio", "audio") and "multiple of 2 bytes" in err.message
    [err] = s.handle(b"\x00" * 64002)
    assert (err.code, err.field) == ("message_too_large", "audio")
    assert s.handle(_pcm(0.1)) == []
    items = _items(s.source)
    assert [type(i) for i in items] == [AudioChunk, AudioChunk] and sum(len(i.samples) for i in items) == 2 * 1600


def test_video_stream_frames_reach_the_source(faces):
    frames, jpegs = faces
    s = _input(video=True, sample_format="float32")
    sent = []
    for f, j in zip(frames[:10], jpegs[:10]):
        assert s.handle(audio_message(_pcm(0.1, "float32"))) == []
        assert s.handle(video_message(f.t, j)) == []
        sent.append(f.t)
    assert s.finish() == [] and s.audio_s == pytest.approx(1.0)
    items = _items(s.source)
    video = [i for i in items if isinstance(i, VideoFrame)]
    assert [v.t for v in video] == sent and s.source.has_video
    assert all(v.image.shape == (640, 640, 3) and v.image.dtype == np.uint8 for v in video)
    assert sum(len(i.samples) for i in items if isinstance(i, AudioChunk)) == SR


@pytest.mark.parametrize("message, code, field, words", [
    (lambda j: _pcm(0.1), "invalid_frame", "tag", "must start with b'EGA1' (audio) or b'EGV1' (video)"),
    (lambda j: b"EGV1\x00\x00", "invalid_video", "video.header", "shorter than its 12-byte header"),
    (lambda j: b"EGV1", "invalid_video", "video.header", "shorter than its 12-byte header"),
    (lambda j: video_message(0.25, j + b"\x00" * 200_000), "message_too_large", "video", "limit of 100000 bytes"),
    (lambda j: video_message(0.25, b"hello"), "invalid_video", "video.jpeg", "not a JPEG"),
    (lambda j: video_message(0.25, j[:len(j) // 2]), "invalid_video", "video.jpeg", "truncated or corrupt"),
    (lambda j: video_message(0.1, j), "invalid_video", "video.t", "not after the previous frame's 0.200 s"),
    (lambda j: video_message(0.2, j), "invalid_video", "video.t", "timestamps must increase"),  # repeated
    (lambda j: video_message(float("nan"), j), "invalid_video", "video.t", "finite number"),
    (lambda j: video_message(-1.0, j), "invalid_video", "video.t", "finite number"),
    (lambda j: video_message(3.5, j), "invalid_video", "video.t", "ahead of the audio received so far (1.00 s)"),
    (lambda j: b"EGA1\x01\x02\x03", "invalid_audio", "audio", "multiple of 2 bytes"),
    (lambda j: b"EGA1" + b"\x00" * 64002, "message_too_large", "audio", "limit of 64000 bytes"),
], ids=["untagged", "short-header", "tag-only", "oversized", "not-jpeg", "truncated-jpeg", "backwards", "repeated",
        "nan", "negative", "too-far-ahead", "odd-pcm", "large-audio"])
def test_bad_video_stream_messages_give_one_error_and_the_stream_goes_on(faces, message, code, field, words):
    _, jpegs = faces
    s = _input(video=True, max_frame_bytes=100_000)
    assert s.handle(audio_message(_pcm(1.0))) == []
    assert s.handle(video_message(0.2, jpegs[2])) == []
    errors = s.handle(message(jpegs[3]))
    assert len(errors) == 1 and (errors[0].code, errors[0].field) == (code, field), errors
    assert words in errors[0].message and errors[0].message.endswith("; dropped")
    assert s.handle(video_message(0.3, jpegs[3])) == [] and s.handle(audio_message(_pcm(0.1))) == []
    items = _items(s.source)
    assert [i.t for i in items if isinstance(i, VideoFrame)] == [0.2, 0.3]


def test_too_high_frame_rate_is_dropped_counted_and_reported(faces):
    """30 fps for 3 s of stream time against a limit of 15 in any 1 s: half the frames are dropped, every drop is
    reported, with at most one report per second of stream time."""
    _, jpegs = faces
    s = _input(video=True, max_fps=15)
    reports = []
    for k in range(90):
        if k % 3 == 0:
            assert s.handle(audio_message(_pcm(0.1))) == []
        reports += [(k / 30, e) for e in s.handle(video_message(k / 30, jpegs[0]))]
    reports += [(None, e) for e in s.finish()]
    kept = [i for i in _items(s.source) if isinstance(i, VideoFrame)]
    assert all(e.code == "video_frames_dropped" and e.field == "video" for _, e in reports)
    counts = [int(e.message.split()[0]) for _, e in reports]
    assert len(kept) == 45 and sum(counts) == 45 and "(45 in all)" in reports[-1][1].message
    assert reports[0][0] == 15 / 30  # the first drop is reported at once
    times = [t for t, _ in reports if t is not None]
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(times)) and len(reports) <= 5


def test_rate_limit_tolerates_jitter_below_the_limit():
    rng = np.random.default_rng(1)
    limiter = VideoRateLimiter(15)
    t = np.arange(300) / 10 + rng.uniform(-0.03, 0.03, 300)  # 10 fps +-30 ms
    assert all(limiter.admit(x) for x in np.sort(t))
    limiter = VideoRateLimiter(15)
    assert all(limiter.admit(k / 15) for k in range(150))  # exactly at the limit
    assert not limiter.admit(150 / 15 - 0.001) and limiter.dropped == 1  # a 16th frame within 1 s


def test_video_limits_are_validated():
    with pytest.raises(ValueError, match="max_fps"):
        VideoLimits(max_fps=0)
    with pytest.raises(ValueError, match="max_lead_s"):
        VideoLimits(max_lead_s=0)


def test_client_messages_parse_without_error(faces):
    """What ``python -m deploy.client --file talking.mp4`` sends goes through the server's parser without one
    error: tagged audio from time 0, 10 fps JPEG frames on the same clock."""
    from deploy.client import _messages

    source = AVFileSource(TALKING_HEADS / "1.mp4")
    source.open()
    assert source.has_video
    s = _input(video=True, sample_format="float32")
    errors = [e for m in _messages(source, video=True) for e in s.handle(m)] + s.finish()
    assert errors == []
    items = _items(s.source)
    video = [i.t for i in items if isinstance(i, VideoFrame)]
    assert 55 <= len(video) <= 62 and video == sorted(video)
    assert abs(s.audio_s - 6.1) < 0.1 and video[-1] < s.audio_s


# ------------------------------------------------------------------------------------------------ hardening (issue 26)


def test_non_loopback_host_without_token_refuses_to_start():
    from deploy.settings import check_exposure

    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"):
        check_exposure(host, AppArgs())  # loopback: only local users reach it
    for host in ("0.0.0.0", "::", "10.1.2.3", "my-host.example"):
        with pytest.raises(ValueError, match="refusing to start.*auth_token.*auth: none"):
            check_exposure(host, AppArgs())
        check_exposure(host, AppArgs(auth_token="s3cret"))
        check_exposure(host, AppArgs(auth="none"))  # on purpose


def test_auth_settings_are_consistent():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="auth: token needs auth_token"):
        AppArgs(auth="token")
    with pytest.raises(ValidationError, match="contradicts"):
        AppArgs(auth="none", auth_token="s3cret")
    with pytest.raises(ValidationError, match="open other files"):
        AppArgs(upload_formats=["wav", "concat"])
    with pytest.raises(ValidationError, match="max_stream"):
        AppArgs(max_streamz=3)  # a misspelt limit is an error, not a silent default


def test_token_compare_and_origins():
    from deploy.settings import origin_allowed, token_ok

    assert token_ok("s3cret", "s3cret") and not token_ok("s3cre", "s3cret") and not token_ok(None, "s3cret")
    assert not token_ok(5, "s3cret") and token_ok("pässwort", "pässwort")
    host = "127.0.0.1:8000"
    assert origin_allowed(None, host, [])  # not a browser
    assert origin_allowed("http://127.0.0.1:8000", host, []) and origin_allowed("HTTP://127.0.0.1:8000/", host, [])
    assert not origin_allowed("http://127.0.0.1:8001", host, []) and not origin_allowed("null", host, [])
    assert not origin_allowed("http://evil.example", host, [])
    assert origin_allowed("https://dash.example.com", host, ["https://dash.example.com/"])
    assert origin_allowed("http://evil.example", host, ["*"])


def test_language_and_resume_fields_of_the_start_message():
    assert parse_start(json.dumps({"sample_rate": 16000, "language": "en"}), AppArgs(), ["en"]).language == "en"
    with pytest.raises(StartError) as e:
        parse_start(json.dumps({"sample_rate": 16000, "language": "de"}), AppArgs(), ["en"])
    assert e.value.field == "language" and "cannot do 'de'" in e.value.message
    assert parse_start(json.dumps({"sample_rate": 16000, "language": "de"}), AppArgs(), None).language == "de"
    s = parse_start(json.dumps({"sample_rate": 16000, "stream_id": "c1", "last_utterance_id": 4}), AppArgs())
    assert s.last_utterance_id == 4
    assert _field({"sample_rate": 16000, "last_utterance_id": 4}) == "last_utterance_id"  # no stream_id
    assert _field({"sample_rate": 16000, "stream_id": "c1", "last_utterance_id": -2}) == "last_utterance_id"
    assert _field("[" * 5000 + "]" * 5000) == "start"  # RecursionError inside json: an error, not a crash
    with pytest.raises(StartError) as e:
        parse_start(json.dumps({"sample_rate": 16000, "token": "nope"}), AppArgs(auth_token="s3cret"))
    assert (e.value.code, e.value.field) == ("unauthorized", "token")


def test_buffered_audio_is_bounded_in_seconds():
    """A stream may have at most max_buffered_audio_s of audio waiting for its analyzer, whatever the message
    size: a producer past it waits, is refused after push_timeout_s, and goes on once the analyzer reads."""
    import threading

    from deploy.protocol import AudioBudget, MeteredSource

    push = PushSource(SR, 1, max_queue=100_000)
    budget = AudioBudget(2.0)
    s = StreamInput(push, "int16", InputLimits(max_message_bytes=64000, push_timeout_s=0.3), budget)
    assert all(s.handle(_pcm(0.5)) == [] for _ in range(4))  # 2 s buffered
    [err] = s.handle(_pcm(0.5))
    assert err.code == "invalid_audio" and "max_buffered_audio_s 2 s" in err.message
    assert budget.buffered_s == pytest.approx(2.0)
    items = iter(MeteredSource(push, budget))
    next(items)  # the analyzer takes 0.5 s
    assert s.handle(_pcm(0.5)) == [] and budget.buffered_s == pytest.approx(2.0)
    waiting = threading.Thread(target=lambda: s.handle(_pcm(0.5)))  # waits for room ...
    waiting.start()
    next(items)
    waiting.join(2)
    assert not waiting.is_alive() and budget.buffered_s == pytest.approx(2.0)  # ... and gets it
    budget.close()  # the analysis stopped: a waiting producer is told at once, not after push_timeout_s
    [err] = s.handle(_pcm(0.5))
    assert err.code == "stream_closed"


def test_config_yaml_args_are_valid():
    """Every arg of deploy/config.yaml is an AppArgs field (a misspelt limit would otherwise be ignored)."""
    from pathlib import Path

    import yaml

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "deploy" / "config.yaml").read_text())
    [app] = cfg["applications"]
    args = AppArgs(**app["args"])
    assert args.auth is None and args.auth_token is None and cfg["http_options"]["host"] == "127.0.0.1"
    names = {d["name"] for d in app["deployments"]}
    assert names == {"Ingress", "ASR", "ModelServer"}
    assert all("autoscaling_config" in d for d in app["deployments"] if d["name"] != "Ingress")
