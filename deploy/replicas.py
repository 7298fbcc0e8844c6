"""The two model deployments the ingress calls, each with a health check made of real work.

* :class:`ASR`: the Whisper frontend (one encoder pass gives the transcript and the audio features).
* :class:`ModelServer`: fusion + LLM scoring through :class:`egmf_core.predictor.EGMFPredictor` (PyTorch, or the
  onnxruntime/TensorRT fusion engine when ``engines`` names a ``python -m export`` folder); requests of all streams
  are batched with ``@serve.batch`` into one ``EGMFPredictor.score`` call. It is stateless: the per-stream
  conversation (tokenized turns) lives in the ingress and travels with each request, so any replica can serve any
  stream. What a replica keeps is a speed-up only: the KV caches of recent prompt beginnings, and, with a
  "context_first" checkpoint, each stream's next context computed in the background after each utterance
  (``EGMFPredictor.prime_context_later``); a replica without them encodes the context in the utterance's own prompt
  pass.

Each one's ``check_health`` is a :class:`HealthProbe`: a tiny real call, made only when no call succeeded for
``health_cache_s``, so a replica whose calls fail is restarted by Serve while a busy one never pays for a probe.
"""

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
from ray import serve

from egmf_core.features.live_cut import LIVE_WINDOW_S
from streaming.analysis import prediction_fields
from streaming.sources import SAMPLE_RATE

log = logging.getLogger("deploy")


class HealthProbe:
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
        self._health = HealthProbe(self._probe, health_cache_s)

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> dict[str, Any]:
        with self._lock:  # one CTranslate2 pass at a time per replica (threads are configured per replica)
            a = self.frontend.process(np.ascontiguousarray(audio, dtype=np.float32), language=language or self.language)
        self._health.succeeded()
        return {"text": a.text.strip(), "language": a.language, "encoder_states": a.encoder_states,
                "asr_ms": a.asr_ms, "encoder_ms": a.encoder_ms}

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
class ModelServer:
    """Fusion + LLM scoring; utterances of all streams are batched into one ``EGMFPredictor.score`` call."""

    def __init__(self, checkpoint: str = "default", device: str | None = None, engines: str | None = None,
                 torch_threads: int = 1, max_batch_size: int = 8, batch_wait_timeout_s: float = 0.01,
                 health_cache_s: float = 30.0, llm_precision: str = "auto"):
        import torch

        from egmf_core.predictor import EGMFPredictor
        from export.runner import engines_preparer

        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        prepare = engines_preparer(engines) if engines else None  # the exported engines, where the config names them
        self.predictor = EGMFPredictor.load(checkpoint, device=device, prepare=prepare,
                                             llm_precision=llm_precision)
        self.predictor.warm_up()
        self._batch.set_max_batch_size(max_batch_size)
        self._batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.batch_sizes: deque[int] = deque(maxlen=1000)
        self._health = HealthProbe(self._probe, health_cache_s)

    def version(self) -> str:
        return self.predictor.version

    def stats(self) -> dict[str, Any]:
        sizes = list(self.batch_sizes)
        return {"batches": len(sizes), "mean_batch_size": float(np.mean(sizes)) if sizes else 0.0,
                "max_batch_size": max(sizes) if sizes else 0}

    async def predict(self, request: dict[str, Any]) -> dict[str, Any]:
        """``request``: text, speaker, audio_features (T, 384) or None, visual_features (T, 58) + visual_valid (T,)
        or None, language, context (a list of the stream's previous turns as returned here). Returns the prediction's
        fields (``streaming.analysis.prediction_fields``: the labels, probabilities, gate weights and modalities, the
        model's stage timings and prompt token counts) and ``turn`` (this utterance, tokenized, for the stream's
        context)."""
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
        """The request's model input and tokenized turn (``EGMFPredictor.prepare_input``)."""
        return self.predictor.prepare_input(req.get("context") or (), req["text"], req.get("speaker"),
                                            req.get("audio_features"), req.get("visual_features"),
                                            req.get("visual_valid"), req.get("language"))

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
                preds = self.predictor.score(inputs)
            except Exception:  # one bad input must not fail the other streams' utterances: retry one by one
                log.exception("batched scoring failed; scoring the batch's %d inputs one by one", len(inputs))
                preds = []
                for x in inputs:
                    try:
                        preds.append(self.predictor.score([x])[0])
                    except Exception as e:
                        preds.append(e)
            for i, x, turn, p in zip(idx, inputs, turns, preds):
                if isinstance(p, Exception):
                    out[i] = {"error": f"{type(p).__name__}: {p}"}
                    continue
                if turn.text.strip():  # the stream's likely next context: its KV cache, ready before it is needed
                    self.predictor.prime_context_later((*x.context, turn), x.language)
                out[i] = {**prediction_fields(p), "turn": turn if turn.text.strip() else None}
        return out  # type: ignore[return-value]

    def _probe(self) -> None:
        """Score one short text-only utterance, as a stream's first would be (no priming: nothing to keep)."""
        x, _ = self._input({"text": "Thank you, that helps.", "speaker": "Speaker"})
        self.predictor.score([x])

    async def health(self) -> dict[str, Any]:
        age = await asyncio.to_thread(self._health.check)
        return {"last_success_s": round(age, 1), "llm_precision": self.predictor.llm_precision,
                "batches": self.stats()}

    async def check_health(self) -> None:
        await asyncio.to_thread(self._health.check)
