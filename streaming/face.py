"""The face features of an utterance's video frames, with the face model loaded on first use.

One :class:`FaceModel` serves every stream of a process (the CLI's analyzer, or an ingress replica of the service):
streams without video never import mediapipe. A load failure is remembered (:attr:`FaceModel.error`, logged once)
and the analysis goes on with audio and text.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

__all__ = ["FaceModel"]

log = logging.getLogger(__name__)


class FaceModel:
    """The :class:`egmf_core.features.visual.FaceFeatureExtractor` of a process, shared by its streams.

    ``enabled=False``: never loaded (``get`` returns None, ``error`` stays None). The extractor holds no stream
    state (each ``extract`` call opens its own landmarker), so streams share it from their worker threads."""

    def __init__(self, model_path: str | None = None, enabled: bool = True):
        self.model_path = model_path
        self.enabled = enabled
        #: Why the face model could not be loaded (one line for a client or a log), None while it could.
        self.error: str | None = None
        self._extractor: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        """The extractor, loaded on the first call; None when disabled or unavailable (``error`` says why)."""
        if self._extractor is not None or self.error is not None or not self.enabled:
            return self._extractor
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

    def features(self, video: list[tuple[float, np.ndarray]] | None,
                 timings_ms: dict[str, float] | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(features (T, 58), valid (T,)) of the frames, or (None, None) when there are no frames, no face model, or
        no frame showed a face: a missing face is a missing modality, never zeros. ``timings_ms["face"]`` gets the
        extraction's wall time when it ran."""
        extractor = self.get() if video else None
        if extractor is None:
            return None, None
        t0 = time.perf_counter()
        vf = extractor.extract(video)
        if timings_ms is not None:
            timings_ms["face"] = (time.perf_counter() - t0) * 1000.0
        if not len(vf) or not bool(np.any(vf.valid)):
            return None, None
        return vf.features, vf.valid
