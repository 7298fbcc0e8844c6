"""WebSocket client of the service: ``python -m deploy.client --url ws://127.0.0.1:8000/v1/stream --file call.wav``
(or ``--mic``).

Decodes the input locally (any file FFmpeg reads, or the microphone), streams 16 kHz float32 PCM in binary frames
after a JSON start message, and prints the events the service sends with the same readable lines (or ``--json``
lines) as ``python -m streaming``. A file with a video track also gets its frames sent (10 fps, JPEG, in the framing
of ``deploy/protocol/``) so that the service analyzes the face too, unless ``--no-video``. Files are sent as fast
as the server takes them unless ``--realtime``.

A dropped connection is resumed (:class:`ResumingStream`): the client reconnects with its ``stream_id`` and the last
utterance id it received, with backoff and bounded retries (``--retries``, ``--backoff``), sends the rest of its
input there and prints each event once (``deploy/README.md``, "Delivery, reconnect and resume").

Exit codes: 0 done, 1 connection/protocol failure, 2 unusable input.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from deploy.protocol import VIDEO_TAG, audio_message, encode_jpeg, video_message
from streaming.cli import EXIT_FAILURE, EXIT_INPUT, EXIT_OK, print_event
from streaming.events import ErrorEvent, Event, EventValidationError, UtteranceEvent, parse_event
from streaming.sources import (
    SAMPLE_RATE,
    AVFileSource,
    AVSourceConfig,
    MicrophoneSource,
    Source,
    SourceError,
    VideoFrame,
)
from streaming.sources.pcm import PCM_DTYPES

__all__ = ["ResumingStream", "RetryPolicy", "build_parser", "main"]

#: Samples per binary frame (100 ms at 16 kHz).
FRAME_SAMPLES = 1600
#: What this client sends: the sources' float32 samples as they are, at SAMPLE_RATE.
SAMPLE_FORMAT = "float32"
_SAMPLE_DTYPE = PCM_DTYPES[SAMPLE_FORMAT]
#: Refusals that mean "try again later" (close 1013): reported only when the retries run out.
_TRY_AGAIN = frozenset({"busy", "stream_in_use", "unavailable"})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deploy.client",
                                description="Stream a file or the microphone to the EGMF service over WebSocket.")
    p.add_argument("--url", default="ws://127.0.0.1:8000/v1/stream", help="service WebSocket URL")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", metavar="PATH", help="audio/video file (its audio, and its video frames if any)")
    src.add_argument("--mic", action="store_true", help="live microphone")
    p.add_argument("--device", metavar="NAME|INDEX", help="microphone to use with --mic")
    p.add_argument("--stereo-speakers", action="store_true", help="left/right channels are two speakers")
    p.add_argument("--speakers", metavar="A,B", help="speaker names per channel")
    p.add_argument("--language", help="speech language code")
    p.add_argument("--token", help="auth token, if the service requires one")
    p.add_argument("--realtime", action="store_true", help="send files at real-time pace")
    p.add_argument("--no-video", action="store_true", help="send only the audio of a video file")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    p.add_argument("--speech-started", action="store_true", help="also print a line when speech starts")
    p.add_argument("--stream-id", help="the stream id (default: a random one); reconnects resume it")
    p.add_argument("--retries", type=int, default=RetryPolicy.retries, metavar="N",
                   help="reconnect attempts in a row without an utterance or speech_started event before "
                        "giving up (0: never reconnect)")
    p.add_argument("--backoff", type=float, default=RetryPolicy.backoff_s, metavar="S",
                   help="seconds before the first reconnect, doubled per failed attempt up to 5 s")
    return p


def _messages(source: Source, video: bool) -> Iterator[bytes]:
    """The binary messages, in source order: 100 ms of float32 PCM each (tagged when the stream has video) and one
    JPEG message per video frame.

    The service's clock counts audio samples from the first one received, while video timestamps are container
    time: audio is padded with silence up to the container time of its first sample so that both clocks agree."""
    sent = 0
    for item in source:
        if isinstance(item, VideoFrame):
            yield video_message(item.t, encode_jpeg(item.image))
            continue
        x = np.ascontiguousarray(item.samples, dtype=_SAMPLE_DTYPE)
        gap = round(item.start_s * SAMPLE_RATE) - sent
        if gap > 0:
            x = np.concatenate([np.zeros((gap, *x.shape[1:]), _SAMPLE_DTYPE), x])
        sent += len(x)
        for i in range(0, len(x), FRAME_SAMPLES):
            pcm = x[i:i + FRAME_SAMPLES].tobytes()
            yield audio_message(pcm) if video else pcm


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how fast to reconnect: after ``retries`` reconnect attempts in a row that brought no utterance
    or ``speech_started`` event (refused, unreachable, dropped or failed before any) the stream ends with a failure
    (0: never reconnect); the wait before attempt ``k`` (from 0) is ``min(max_backoff_s, backoff_s * 2 ** k)``."""

    retries: int = 8
    backoff_s: float = 0.5
    max_backoff_s: float = 5.0

    def delay(self, attempt: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * 2 ** attempt)


class ResumingStream:
    """One stream over as many WebSocket connections as it takes (``deploy/README.md``, "Delivery, reconnect and
    resume"). A connection that ends without its close 1000 after ``{"type": "end"}`` (dropped, a connection error,
    ``stream_failed``, ``busy``/``stream_in_use``/``unavailable``, the server going away) is followed by a new one
    with the same ``stream_id`` and the last utterance id received; a refused start (1008) or a refused handshake
    (HTTP 4xx) is final. Each event reaches ``on_event`` once: utterance events by id, the other events the server
    sends again on resume (those after the last utterance) by their exact text. The protocol does not acknowledge
    audio: the message whose send failed is sent again on the next connection, audio already written to a
    connection that then dropped is what the server received of it (the server analyzes what it got)."""

    def __init__(self, url: str, start: dict, on_event: Callable[[Event], None], *,
                 retry: RetryPolicy = RetryPolicy(), log: Callable[[str], None] = lambda line: None,
                 open_timeout: float = 30):
        self.url = url
        self.start = {"type": "start", **start}
        self.start.setdefault("stream_id", uuid.uuid4().hex[:12])
        self.on_event = on_event
        self.retry = retry
        self.log = log
        self.open_timeout = open_timeout
        self.connection: Any = None  # the current connection (websockets.sync.client.ClientConnection)
        self.connections = 0
        self.last_utterance_id: int | None = None
        self.failures: list[str] = []
        self._since_last: Counter[str] = Counter()  # non-utterance events received after the last utterance
        self._replayed: Counter[str] = Counter()  # of those, the ones a resume sends again
        self._refusal: str | None = None
        self._input_done = False
        self._progress = False  # the current connection brought an utterance or speech_started event

    @property
    def stream_id(self) -> str:
        return self.start["stream_id"]

    def stop_input(self) -> None:
        """No more input (Ctrl-C): the next send is the end message."""
        self._input_done = True

    def _accept(self, text: str) -> None:
        try:
            ev = parse_event(json.loads(text))
        except (ValueError, EventValidationError) as e:
            self.failures.append(f"bad event from the server: {e}")
            return
        if isinstance(ev, UtteranceEvent):
            if self.last_utterance_id is not None and ev.utterance_id <= self.last_utterance_id:
                return  # had it
            self.last_utterance_id = ev.utterance_id
            self._since_last.clear()
            self._replayed.clear()
        elif isinstance(ev, ErrorEvent) and ev.code in _TRY_AGAIN:
            self._refusal = f"{ev.code}: {ev.message}"
            return
        elif self._replayed[text] > 0:
            self._replayed[text] -= 1
            return
        else:
            self._since_last[text] += 1
        self._refusal = None
        if not isinstance(ev, ErrorEvent):  # a server failing every connection (stream_failed) is no progress
            self._progress = True
        self.on_event(ev)

    def _connection(self, ws: Any, items: Iterator[bytes], pending: bytes | None, offset_s: float, video: bool,
                    channels: int) -> tuple[int | None, bool, bytes | None, float]:
        """One connection: the start message, the messages (``pending`` first), the end message, while a thread
        receives the events. Returns (close code, whether the end was sent, the message whose send failed, seconds
        of audio sent)."""
        from websockets.exceptions import ConnectionClosed

        closed: list[int | None] = []

        def receive() -> None:
            try:
                while True:
                    self._accept(ws.recv())
            except ConnectionClosed:
                pass
            closed.append(ws.close_code)

        receiver = threading.Thread(target=receive, daemon=True)
        receiver.start()
        sent_end = False
        audio_s = 0.0
        try:
            ws.send(json.dumps(self.start))
            while not self._input_done:
                message = pending if pending is not None else next(items, None)
                if message is None:
                    break
                pending = message
                if video and message[:4] == VIDEO_TAG:  # on this connection's clock; dropped if before it
                    t = struct.unpack_from("<d", message, 4)[0] - offset_s
                    if t >= 0:
                        ws.send(message[:4] + struct.pack("<d", t) + message[12:])
                else:
                    ws.send(message)
                    audio_s += (len(message) - (4 if video else 0)) / _SAMPLE_DTYPE.itemsize / channels / SAMPLE_RATE
                pending = None
            ws.send(json.dumps({"type": "end"}))
            sent_end = True
        except ConnectionClosed:
            pass  # the receiver has the close code
        except KeyboardInterrupt:  # stop sending; the server still analyzes what it received
            self._input_done = True
            pending = None
            try:
                ws.send(json.dumps({"type": "end"}))
                sent_end = True
            except ConnectionClosed:
                pass
        while receiver.is_alive():
            receiver.join(0.2)
        return (closed[0] if closed else None), sent_end, pending, audio_s

    def run(self, messages: Iterable[bytes], *, video: bool = False, channels: int = 1) -> list[str]:
        """Send the start message, ``messages`` and the end message, reconnecting as needed; the failures (empty:
        every event was received)."""
        from websockets.exceptions import InvalidStatus
        from websockets.sync.client import connect

        items = iter(messages)
        pending: bytes | None = None  # a message whose send failed: the first of the next connection
        offset_s = 0.0  # audio sent on earlier connections: the server's clock for video restarts per connection
        tries = 0  # reconnect attempts since the last connection that brought an utterance or speech_started
        problem = ""
        while True:
            if self.connections:
                if tries >= self.retry.retries:
                    self.failures.append(problem + (f"; gave up after {tries} reconnect attempts in a row without "
                                                    "an utterance or speech_started event" if tries else ""))
                    return self.failures
                wait = self.retry.delay(tries)
                tries += 1
                self.log(f"{problem}: reconnecting in {wait:g} s (attempt {tries} of {self.retry.retries}), resuming "
                         f"stream {self.stream_id!r} after utterance {self.last_utterance_id}")
                time.sleep(wait)
                self.start["last_utterance_id"] = -1 if self.last_utterance_id is None else self.last_utterance_id
                self._replayed = Counter(self._since_last)
            self.connections += 1
            self._progress = False
            try:
                ws = connect(self.url, max_size=None, open_timeout=self.open_timeout)
            except (OSError, Exception) as e:  # noqa: BLE001 - refused, DNS, handshake: one line, retried
                problem = f"cannot connect to {self.url}: {e}"
                if isinstance(e, InvalidStatus) and 400 <= e.response.status_code < 500:
                    self.failures.append(problem)  # refused on purpose (HTTP 403: Origin): final
                    return self.failures
                continue
            with ws as conn:
                self.connection = conn
                code, sent_end, pending, conn_audio_s = self._connection(conn, items, pending, offset_s, video,
                                                                         channels)
            offset_s += conn_audio_s
            if sent_end and code == 1000:
                return self.failures
            if code == 1008:
                self.failures.append(f"the server refused the stream (close code {code})")
                return self.failures
            if self._progress:
                tries = 0
            problem = f"connection closed (code {code}) before the end of the stream" + (
                f" ({self._refusal})" if self._refusal else "")


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        import websockets  # noqa: F401
    except ImportError:
        print("error: the client needs the 'websockets' package", file=err)
        return EXIT_FAILURE
    channels = 2 if args.stereo_speakers else 1
    speakers = [s.strip() for s in args.speakers.split(",")] if args.speakers else None
    if speakers is not None and len(speakers) != channels:
        print(f"error: --speakers needs {channels} name(s), got {len(speakers)}", file=err)
        return EXIT_INPUT
    if args.file:
        source: Source = AVFileSource(args.file, AVSourceConfig(stereo=args.stereo_speakers, video=not args.no_video,
                                                                 realtime=args.realtime))
    else:
        source = MicrophoneSource(device=args.device, channels=channels)
    try:
        source.open()
    except SourceError as e:
        print(f"error: {e}", file=err)
        return EXIT_INPUT

    video = source.has_video
    start = {"sample_rate": SAMPLE_RATE, "channels": channels, "sample_format": SAMPLE_FORMAT, "video": video}
    for key, val in (("language", args.language), ("speakers", speakers), ("token", args.token),
                     ("stream_id", args.stream_id)):
        if val is not None:
            start[key] = val
    stream = ResumingStream(args.url, start, lambda ev: print_event(ev, args.json, args.speech_started, out, err),
                            retry=RetryPolicy(retries=args.retries, backoff_s=args.backoff),
                            log=lambda line: print(f"client: {line}", file=err, flush=True))
    try:
        failed = stream.run(_messages(source, video), video=video, channels=channels)
    except SourceError as e:
        print(f"error: {e}", file=err)
        return EXIT_INPUT
    finally:
        source.close()
    for f in failed:
        print(f"error: {f}", file=err)
    return EXIT_FAILURE if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
