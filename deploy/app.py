"""Ray Serve application: ``serve run deploy/config.yaml`` (builder ``deploy.app:app``).

Three deployments, composed with DeploymentHandles and scaled on their own:

* ``Ingress`` (FastAPI, here): ``WS /v1/stream``, ``POST /v1/analyze``, ``GET /health``, ``GET /`` (the dashboard).
  It holds the per-stream sessions (:func:`deploy.session.run_stream`): a :class:`deploy.protocol.StreamInput`
  (binary framing, limits, JPEG decoding) feeding a :class:`streaming.sources.PushSource` (PCM decoding, resampling)
  whose buffered audio is bounded in seconds (:class:`deploy.protocol.AudioBudget`), and a
  :class:`streaming.pipeline.StreamAnalyzer` (VAD segmentation, utterance ids, video alignment, latency, event
  schema) whose per-utterance step (:class:`deploy.remote_analyzer.RemoteAnalyzer`) computes the face features of the
  utterance's video frames here and calls the two model deployments, each call with a timeout. It also keeps each
  stream's recent events for a client that reconnects (:class:`deploy.resume.StreamRecord`).
* ``ASR`` and ``ModelServer`` (``deploy/replicas.py``): the Whisper frontend, and fusion + LLM scoring batched across
  streams.

The rest of the package: ``settings.py`` (:class:`~deploy.settings.AppArgs`, the exposure, token, Origin and
language checks), ``start.py`` (the start message), ``protocol/`` (the binary messages), ``remote_analyzer.py``,
``session.py`` (one WebSocket connection of a stream, after the ingress accepted it), ``resume.py``,
``replicas.py``, ``client.py`` (``python -m deploy.client``). Every deployment's ``check_health``
makes a tiny real call (cached for ``health_cache_s``), so a replica whose calls fail is restarted by Serve. The
WebSocket protocol, the limits, the error codes and the close codes are documented in ``deploy/README.md``.
"""

# No `from __future__ import annotations`: FastAPI must see the real WebSocket/Request types of the class-based
# ingress methods (string annotations make it treat `ws` as a query parameter and refuse the connection).
import asyncio
import logging
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from deploy.remote_analyzer import RemoteAnalyzer, ServiceFailure, new_history
from deploy.replicas import ASR, ModelServer
from deploy.resume import StreamRecord
from deploy.session import CLOSE_POLICY, CLOSE_TRY_AGAIN, run_stream
from deploy.settings import (AppArgs, Timeouts, check_exposure, check_language, check_precision, origin_allowed,
                             serve_http_host, single_node, token_ok)
from deploy.start import StartError, parse_start
from streaming.events import ErrorEvent
from streaming.face import FaceModel
from streaming.pipeline import StreamAnalyzer, StreamConfig
from streaming.sources import AVFileSource, AVSourceConfig, SourceError

log = logging.getLogger("deploy")

STATIC_DIR = Path(__file__).resolve().parent / "static"
# The ingress's own health check: its worker pool must run a no-op within this long.
_POOL_CHECK_TIMEOUT_S = 10.0
#: Least time the once-per-ingress service-information calls (model version, languages) get.
INFO_TIMEOUT_FLOOR_S = 5.0


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
        host = serve_http_host()
        if host is not None:  # also checked by the builder; here for an ingress bound by other code
            check_exposure(host, self.args)
        self.asr = asr
        self.model = model
        self.face = FaceModel(self.args.face_model_path)
        self._info: _ServiceInfo | None = None  # asked of the deployments on first use (never block the loop)
        self._streams = 0
        self._uploads = 0
        self._records: dict[str, StreamRecord] = {}
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
            # Metadata, not an utterance: a replica-call timeout set for analysis (model_timeout_s may be far below a
            # second) must not refuse streams because this first call met a busy machine.
            model_s, asr_s = (max(t, INFO_TIMEOUT_FLOOR_S)
                              for t in (self.args.model_timeout_s, self.args.asr_timeout_s))
            try:
                version = await asyncio.wait_for(_awaitable(self.model.version.remote()), model_s)
                languages = await asyncio.wait_for(_awaitable(self.asr.languages.remote()), asr_s)
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
        """Each model deployment's health (a cached real call, see ``deploy.replicas.HealthProbe``), each asked with
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
                                "deployments": {"ASR": asr, "ModelServer": model}}
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
            await run_stream(ws, start, record, replay, args=args, blocking=self._blocking, face_error=self._face_error,
                             remote_analyzer=lambda next_id: self._analyzer(info, start.language, stream_id, next_id))
        finally:
            with self._lock:
                self._streams -= 1
                record.active = False
                record.ended_at = time.monotonic()

    def _record(self, stream_id: str) -> StreamRecord:
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
            record = StreamRecord(stream_id, new_history())
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


# ------------------------------------------------------------------------------------------------------ builder


def app(args: dict[str, Any] | None = None) -> serve.Application:
    """Application builder for ``deploy/config.yaml`` (``import_path: deploy.app:app``, ``args: {...}``)."""
    a = AppArgs(**(args or {}))
    host = serve_http_host()  # `serve run` starts Serve with the config's http_options before building
    if host is not None:
        check_exposure(host, a)  # fail before any model is loaded
    if single_node():
        check_precision(a)  # likewise, where the model replicas run on this machine
    from egmf_core.checkpoint import read_metadata, resolve

    model_cfg, _ = read_metadata(resolve(a.checkpoint))  # the recognizer normalizes audio as the model was trained
    asr = ASR.bind(a.whisper_model_path, a.asr_cpu_threads, a.language, a.asr_window_s, a.asr_device,
                   model_cfg.fusion.audio_loudness_lufs, health_cache_s=a.health_cache_s)
    model = ModelServer.bind(a.checkpoint, a.device, a.engines, a.torch_threads, a.max_batch_size,
                           a.batch_wait_timeout_s, health_cache_s=a.health_cache_s, llm_precision=a.llm_precision)
    return Ingress.bind(asr, model, a.model_dump())
