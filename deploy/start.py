"""The start message of ``WS /v1/stream`` (the first message of a connection; the spec is in ``deploy/README.md``).

:func:`parse_start` validates the JSON text message against the service's settings (the token, the limits, the
recognizer's languages) and returns a :class:`StartMessage`, or raises :class:`StartError` naming the field at fault
(its ``code`` and ``field`` go into the error event). The binary messages that follow are ``deploy/protocol/``'s.
Nothing here imports Ray, so the unit tests load it cheaply.
"""

from dataclasses import dataclass

from deploy.protocol import loads_json
from deploy.settings import AppArgs, check_language, token_ok
from streaming.sources.pcm import MIN_PCM_RATE, PCM_DTYPES

#: Text messages are a start message or {"type": "end"}; anything longer is refused before it is parsed.
MAX_TEXT_CHARS = 1 << 16


class StartError(ValueError):
    """A start message that cannot be used: ``code`` (``invalid_start``, ``unauthorized``) and ``field`` go into
    the error event."""

    def __init__(self, field: str, message: str, code: str = "invalid_start"):
        super().__init__(message)
        self.field = field
        self.message = message
        self.code = code


@dataclass
class StartMessage:
    sample_rate: int
    channels: int
    sample_format: str
    language: str | None
    speakers: list[str] | None
    stream_id: str | None
    #: The client will send JPEG video frames; every binary message then carries a tag (deploy/protocol/).
    video: bool = False
    #: Resume: the last utterance id the client received on this ``stream_id`` (-1: none); the events after it are
    #: sent again first.
    last_utterance_id: int | None = None


def parse_start(raw: str | bytes | None, args: AppArgs, languages: list[str] | None = None) -> StartMessage:
    """Validate the JSON start message; raises :class:`StartError` naming the field at fault. ``languages``: the
    codes the recognizer can do (None: any)."""
    if raw is None:
        raise StartError("start", "the first message must be a JSON text start message, got a binary frame")
    if len(raw) > MAX_TEXT_CHARS:
        raise StartError("start", f"start message of {len(raw)} characters: at most {MAX_TEXT_CHARS}")
    try:
        d = loads_json(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise StartError("start", f"start message is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise StartError("start", f"start message must be a JSON object, got {type(d).__name__}")
    if d.get("type", "start") != "start":
        raise StartError("type", f"first message must have type 'start', got {d.get('type')!r}")
    if args.auth_token is not None and not token_ok(d.get("token"), args.auth_token):
        raise StartError("token", "missing or wrong token: this service needs the \"token\" field", "unauthorized")
    sr = d.get("sample_rate")
    if isinstance(sr, bool) or not isinstance(sr, int) or not MIN_PCM_RATE <= sr <= args.max_sample_rate:
        raise StartError("sample_rate",
                         f"must be an integer from {MIN_PCM_RATE} to {args.max_sample_rate} Hz, got {sr!r}")
    ch = d.get("channels", 1)
    if isinstance(ch, bool) or not isinstance(ch, int) or not 1 <= ch <= min(args.max_channels, 2):
        raise StartError("channels", f"must be 1 or {min(args.max_channels, 2)}, got {ch!r}")
    fmt = d.get("sample_format", "int16")
    if not isinstance(fmt, str) or fmt not in PCM_DTYPES:
        raise StartError("sample_format", f"must be one of {list(PCM_DTYPES)}, got {fmt!r}")
    lang = d.get("language")
    if lang is not None and (problem := check_language(lang, languages)):
        raise StartError("language", problem)
    speakers = d.get("speakers")
    if speakers is not None:
        if (not isinstance(speakers, list) or len(speakers) != ch
                or not all(isinstance(s, str) and 0 < len(s) <= 64 for s in speakers)):
            raise StartError("speakers", f"must be a list of {ch} name(s) (1-64 characters), one per channel")
    sid = d.get("stream_id")
    if sid is not None and (not isinstance(sid, str) or not 0 < len(sid) <= 64):
        raise StartError("stream_id", "must be a string of 1-64 characters")
    video = d.get("video", False)
    if not isinstance(video, bool):
        raise StartError("video", f"must be true or false, got {video!r}")
    last = d.get("last_utterance_id")
    if last is not None:
        if isinstance(last, bool) or not isinstance(last, int) or last < -1:
            raise StartError("last_utterance_id", f"must be an integer >= -1 (-1: none received), got {last!r}")
        if sid is None:
            raise StartError("last_utterance_id", "resuming needs the stream_id of the stream to resume")
    return StartMessage(sr, ch, fmt, lang, speakers, sid, video, last)
