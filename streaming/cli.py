"""Command line: ``python -m streaming --file call.wav | --mic | --url rtsp://... | --webcam [/dev/video0]``.

Prints one line per utterance as it is analyzed::

    [00:03.2-00:05.9] Speaker 1: "I told you twice already"  anger 0.82 | negative -0.6

or, with ``--json``, one event per line in the schema of :mod:`streaming.events` (utterance, speech_started and
error events). Ctrl-C (or SIGTERM) stops the input, analyzes the utterance in progress, prints it and exits 0; a
second Ctrl-C aborts at once.

Exit codes: 0 done, 1 unexpected failure, 2 unusable input (no microphone, unreadable file, bad arguments),
3 model unavailable.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TextIO

from egmf_core.features.live_cut import LIVE_WINDOW_S, TRAINING_FRAME_S
from egmf_core.precision import PRECISIONS
from .events import ErrorEvent, Event, SpeechStartedEvent, UtteranceEvent
from .pipeline import StreamAnalyzer, StreamConfig, UtteranceAnalyzer
from egmf_core.features.segmenter import SegmenterConfig
from .sources import (
    AVFileSource,
    AVSourceConfig,
    MergedSource,
    MicrophoneSource,
    Source,
    SourceError,
)

__all__ = ["main", "build_parser", "format_event", "format_time", "print_event"]

log = logging.getLogger("streaming")

EXIT_OK, EXIT_FAILURE, EXIT_INPUT, EXIT_MODEL = 0, 1, 2, 3

AnalyzerFactory = Callable[[argparse.Namespace], UtteranceAnalyzer]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m streaming",
        description="Live emotion and sentiment of each utterance of a call, a microphone, a file or a stream.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", metavar="PATH", help="audio/video file (wav, flac, mp3, mp4, mkv, webm, ...)")
    src.add_argument("--mic", action="store_true", help="live microphone (16 kHz mono)")
    src.add_argument("--url", metavar="URL", help="network stream (rtsp://, http(s)://, ...)")
    src.add_argument("--webcam", nargs="?", const="/dev/video0", metavar="DEVICE",
                     help="v4l2 webcam for video (default /dev/video0) with the microphone for audio")
    p.add_argument("--device", metavar="NAME|INDEX", help="microphone to use with --mic/--webcam (name part or index)")
    p.add_argument("--json", action="store_true", help="print JSON lines (one event per line) instead of text")
    p.add_argument("--stereo-speakers", action="store_true",
                   help="channel diarization: left and right channels are two speakers (call-center recordings)")
    p.add_argument("--speakers", metavar="A,B", help="speaker names per channel (default 'Speaker 1,Speaker 2')")
    p.add_argument("--realtime", action="store_true", help="read files at real-time pace (as if live)")
    p.add_argument("--checkpoint", default="default", help="EGMF checkpoint path, or 'default' (the shipped model)")
    p.add_argument("--language", help="speech language (default: the recognizer's, 'en' for the bundled tiny.en)")
    p.add_argument("--whisper-model", metavar="DIR", help="local CTranslate2 Whisper model folder")
    p.add_argument("--asr-window-s", type=float, default=LIVE_WINDOW_S,
                   help="recognizer encoder window in seconds (default 10: a fifth of the cost of Whisper's native "
                        "30, and the window of the shipped model's last training stage; 30: the features of its "
                        "earlier, whole-clip stages)")
    p.add_argument("--frame-s", type=float, default=TRAINING_FRAME_S,
                   help="seconds of room tone given to the recognizer and the model on each side of an utterance's "
                        "speech (default 1.0: the framing of the clips the model was trained on; 0: the VAD's cut)")
    p.add_argument("--llm-precision", choices=PRECISIONS, default="auto",
                   help="number format of the LLM's matmuls on CPU (default auto: bfloat16 where the CPU has "
                        "AVX512-BF16/AMX and a bf16 matmul measured at start-up is faster, else fp32, the reference; the labels agree, see "
                        "benchmarks/results/llm_precision.md; int8: int8 matmuls (torch with VNNI, onnxruntime on AVX2 CPUs), near "
                        "ties re-scored in fp32, labels >= 99 %% equal, benchmarks/results/llm_precision_int8_checked.md; "
                        "bf16 and int8 are refused on a CPU that would emulate them ~50x slower)")
    p.add_argument("--no-speculation", action="store_true",
                   help="live input: analyze an utterance only after the VAD's end-of-speech hangover, not during it "
                        "(events come ~330 ms later; no work is spent on pauses that turn out not to be ends)")
    p.add_argument("--no-video", action="store_true", help="ignore video even if the input has it")
    p.add_argument("--video-fps", type=float, default=10.0, help="video frames per second to analyze (default 10)")
    p.add_argument("--stream-id", help="stream id used in the events (default: random)")
    p.add_argument("--vad-aggressiveness", type=int, choices=(0, 1, 2, 3), default=2,
                   help="webrtcvad mode, 3 filters non-speech most aggressively (default 2)")
    p.add_argument("--max-utterance-s", type=float, default=8.0, help="split longer turns (default 8 s)")
    p.add_argument("--speech-started", action="store_true", help="also print a line when speech starts (text mode)")
    p.add_argument("--analyzer", metavar="MODULE:NAME",
                   help="use another UtteranceAnalyzer: a class or factory importable as MODULE:NAME, called with "
                        "no arguments (instead of the EGMF model)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log progress to stderr (-vv: debug)")
    return p


# --------------------------------------------------------------------------------------------------------- output


def format_time(t: float) -> str:
    """``mm:ss.d`` (``h:mm:ss.d`` past an hour)."""
    tenths = int(round(max(0.0, t) * 10))
    s, d = divmod(tenths, 10)
    m, s = divmod(s, 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}.{d}" if h else f"{m:02d}:{s:02d}.{d}"


def format_event(ev: Event) -> str:
    """One readable line for an event."""
    if isinstance(ev, UtteranceEvent):
        return (f"[{format_time(ev.start)}-{format_time(ev.end)}] {ev.speaker}: \"{ev.text}\"  "
                f"{ev.emotion.label} {ev.emotion.confidence:.2f} | {ev.sentiment.label} {ev.sentiment.score:+.1f}")
    if isinstance(ev, SpeechStartedEvent):
        return f"[{format_time(ev.start)}-     ] {ev.speaker}: ..."
    span = "" if ev.start is None else f"[{format_time(ev.start)}-{format_time(ev.end)}] "
    return f"{span}error ({ev.code}{', ' + ev.field if ev.field else ''}): {ev.message}"


def print_event(ev: Event, as_json: bool, show_starts: bool, out: TextIO, err: TextIO) -> None:
    """Print one event as ``python -m streaming`` does (the service client prints the same way): with ``as_json``
    every event as one JSON line on ``out``; otherwise errors as a readable line on ``err``, utterances on ``out``,
    and speech starts on ``out`` only when ``show_starts``."""
    if as_json:
        print(ev.to_json(), file=out, flush=True)
    elif isinstance(ev, ErrorEvent):
        print(format_event(ev), file=err, flush=True)
    elif isinstance(ev, UtteranceEvent) or show_starts:
        print(format_event(ev), file=out, flush=True)


# --------------------------------------------------------------------------------------------------------- set-up


def make_source(args: argparse.Namespace) -> Source:
    """The source the arguments ask for (not opened)."""
    video = not args.no_video
    av_cfg = AVSourceConfig(stereo=args.stereo_speakers, video=video, video_fps=args.video_fps,
                            realtime=args.realtime)
    if args.file:
        return AVFileSource(args.file, av_cfg)
    if args.url:
        return AVFileSource(args.url, av_cfg)
    mic = MicrophoneSource(device=args.device, channels=2 if args.stereo_speakers else 1)
    if args.mic:
        return mic
    cam = AVFileSource(args.webcam, replace(av_cfg, format="v4l2", audio=False, video=True, stereo=False))
    return mic if args.no_video else MergedSource(mic, cam)


def _load_factory(spec: str) -> Callable[[], UtteranceAnalyzer]:
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise ValueError(f"--analyzer must look like MODULE:NAME, got {spec!r}")
    obj: Any = importlib.import_module(mod_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def make_analyzer(args: argparse.Namespace) -> UtteranceAnalyzer:
    if args.analyzer:
        return _load_factory(args.analyzer)()
    from .analyzer import EGMFAnalyzerConfig, EGMFUtteranceAnalyzer

    return EGMFUtteranceAnalyzer(EGMFAnalyzerConfig(
        checkpoint=args.checkpoint, whisper_model_path=args.whisper_model, language=args.language,
        use_video=not args.no_video, asr_window_s=args.asr_window_s, frame_s=args.frame_s,
        llm_precision=args.llm_precision))


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("streaming").setLevel(level)


# --------------------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None, *, analyzer_factory: AnalyzerFactory | None = None,
         out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the CLI; returns the exit code. ``analyzer_factory`` replaces the model (tests, embedding)."""
    try:
        return _main(argv, analyzer_factory, out, err)
    except KeyboardInterrupt:  # Ctrl-C before streaming started (e.g. while the model loads), or a second one
        return 130


def _main(argv: Sequence[str] | None, analyzer_factory: AnalyzerFactory | None, out: TextIO | None,
          err: TextIO | None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)

    speakers = [s.strip() for s in args.speakers.split(",")] if args.speakers else None
    if speakers is not None and len(speakers) != (2 if args.stereo_speakers else 1):
        print(f"error: --speakers needs {2 if args.stereo_speakers else 1} name(s), got {len(speakers)}", file=err)
        return EXIT_INPUT
    try:
        seg_cfg = SegmenterConfig(aggressiveness=args.vad_aggressiveness, max_utterance_s=args.max_utterance_s)
        seg_cfg.validate()
        if not args.frame_s >= 0:
            raise ValueError(f"--frame-s: expected seconds >= 0, got {args.frame_s}")
    except ValueError as e:
        print(f"error: {e}", file=err)
        return EXIT_INPUT

    # Open the input first: a missing microphone or a bad path is reported in a second, before the model loads.
    source = make_source(args)
    try:
        source.open()
    except SourceError as e:
        print(f"error: {e}", file=err)
        return EXIT_INPUT

    try:
        analyzer = analyzer_factory(args) if analyzer_factory else make_analyzer(args)
    except Exception as e:
        source.close()
        log.debug("model load failed", exc_info=True)
        print(f"error: model unavailable: {' '.join(str(e).split()) or type(e).__name__}", file=err)
        return EXIT_MODEL

    # A file read as fast as possible has no one waiting at the end of an utterance: speculation would only waste work.
    live = not args.file or args.realtime
    stream = StreamAnalyzer(analyzer, StreamConfig(stream_id=args.stream_id, segmenter=seg_cfg,
                                                   stereo_speakers=args.stereo_speakers, speakers=speakers,
                                                   speculative=live and not args.no_speculation))
    stopping = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        if stopping:  # second Ctrl-C: abort now
            raise KeyboardInterrupt
        stopping = True
        log.info("stopping: finishing the utterance in progress")
        stream.stop()

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, on_signal)
        except ValueError:  # not the main thread (embedded use): no signal handling
            pass
    n = 0
    try:
        for ev in stream.run(source):
            print_event(ev, args.json, args.speech_started, out, err)
            n += isinstance(ev, UtteranceEvent)
    except SourceError as e:
        print(f"error: {e}", file=err)
        return EXIT_INPUT
    except KeyboardInterrupt:
        source.close()
        raise
    except BrokenPipeError:  # `python -m streaming ... | head`
        return EXIT_OK
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    lat = sorted(stream.latencies_ms)
    if lat:
        log.info("%d utterances, latency p50 %.0f ms, max %.0f ms", n, lat[len(lat) // 2], lat[-1])
    return EXIT_OK
