"""The WebSocket start message of the service (``deploy.app.parse_start``), without starting Ray."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("ray.serve")

from deploy.app import AppArgs, StartError, parse_start


def _field(raw, args=None) -> str:
    with pytest.raises(StartError) as e:
        parse_start(raw if isinstance(raw, (str, bytes)) or raw is None else json.dumps(raw), args or AppArgs())
    assert e.value.message
    return e.value.field


def test_defaults_and_full_message():
    s = parse_start(json.dumps({"sample_rate": 16000}), AppArgs())
    assert (s.sample_rate, s.channels, s.sample_format, s.language, s.speakers, s.stream_id) == \
        (16000, 1, "int16", None, None, None)
    s = parse_start(json.dumps({"type": "start", "sample_rate": 44100, "channels": 2, "sample_format": "float32",
                                "language": "en", "speakers": ["Agent", "Customer"], "stream_id": "c1"}), AppArgs())
    assert (s.sample_rate, s.channels, s.sample_format, s.speakers, s.stream_id) == \
        (44100, 2, "float32", ["Agent", "Customer"], "c1")


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
