"""WebSocket client of the service: ``python -m deploy.client --url ws://127.0.0.1:8000/v1/stream --file call.wav``
(or ``--mic``).

Decodes the input locally (any file FFmpeg reads, or the microphone), streams 16 kHz float32 PCM in binary frames
after a JSON start message, and prints the events the service sends with the same readable lines (or ``--json``
lines) as ``python -m streaming``. A file with a video track also gets its frames sent (10 fps, JPEG, in the framing
of ``deploy/protocol.py``) so that the service analyzes the face too, unless ``--no-video``. Files are sent as fast
as the server takes them unless ``--realtime``.

Exit codes: 0 done, 1 connection/protocol failure, 2 unusable input.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import TextIO

import numpy as np

from deploy.protocol import audio_message, encode_jpeg, video_message
from streaming.cli import EXIT_FAILURE, EXIT_INPUT, EXIT_OK, _emit
from streaming.events import EventValidationError, parse_event
from streaming.sources import (
    SAMPLE_RATE,
    AVFileSource,
    AVSourceConfig,
    MicrophoneSource,
    Source,
    SourceError,
    VideoFrame,
)

__all__ = ["build_parser", "main"]

#: Samples per binary frame (100 ms at 16 kHz).
FRAME_SAMPLES = 1600


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
        x = np.ascontiguousarray(item.samples, dtype="<f4")
        gap = round(item.start_s * SAMPLE_RATE) - sent
        if gap > 0:
            x = np.concatenate([np.zeros((gap, *x.shape[1:]), "<f4"), x])
        sent += len(x)
        for i in range(0, len(x), FRAME_SAMPLES):
            pcm = x[i:i + FRAME_SAMPLES].tobytes()
            yield audio_message(pcm) if video else pcm


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect
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
    start = {"type": "start", "sample_rate": SAMPLE_RATE, "channels": channels, "sample_format": "float32",
             "video": video}
    for key, val in (("language", args.language), ("speakers", speakers), ("token", args.token)):
        if val is not None:
            start[key] = val
    try:
        ws = connect(args.url, max_size=None, open_timeout=30)
    except (OSError, Exception) as e:  # noqa: BLE001 - refused, DNS, handshake: one line
        source.close()
        print(f"error: cannot connect to {args.url}: {e}", file=err)
        return EXIT_FAILURE

    failed: list[str] = []

    def receive() -> None:
        try:
            for msg in ws:
                try:
                    ev = parse_event(json.loads(msg))
                except (ValueError, EventValidationError) as e:
                    failed.append(f"bad event from the server: {e}")
                    continue
                _emit(ev, args.json, args.speech_started, out, err)
        except ConnectionClosed as e:
            if e.rcvd is None or e.rcvd.code not in (1000, 1001):
                failed.append(f"connection closed: {e}")

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    try:
        ws.send(json.dumps(start))
        for message in _messages(source, video):
            ws.send(message)
        ws.send(json.dumps({"type": "end"}))
    except KeyboardInterrupt:  # stop sending; the server still analyzes what it received
        source.close()
        try:
            ws.send(json.dumps({"type": "end"}))
        except ConnectionClosed:
            pass
    except ConnectionClosed:
        pass  # the receiver reports why
    except SourceError as e:
        print(f"error: {e}", file=err)
        ws.close()
        return EXIT_INPUT
    finally:
        source.close()
    while receiver.is_alive():
        receiver.join(0.2)
    ws.close()
    for f in failed:
        print(f"error: {f}", file=err)
    return EXIT_FAILURE if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
