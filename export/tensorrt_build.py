"""TensorRT engines for the fusion graph: optimization profiles, engine building, and a small engine runner.

TensorRT is optional. It needs a CUDA GPU and NVIDIA's wheels (`pip install tensorrt-cu13`, matching
onnxruntime-gpu's CUDA 13 build); the PyPI `tensorrt*` packages are stubs that download the real wheels from
NVIDIA's index, so on machines without that index (or without a GPU) `tensorrt_status()` says why and the export
continues with the ONNX graph alone, which onnxruntime runs on the CUDA or CPU execution provider.

Optimization profiles come from the model config, never from guesses in code: the time axes are utterance seconds
times the feature frame rates (audio rounded up to a multiple of `fusion.audio_stride`, since the graph needs it),
the text axis is bounded by `fusion.max_text_tokens` (the model truncates there). The same profile feeds both the
standalone `fusion.plan` and the onnxruntime TensorRT execution provider (`trt_profile_*_shapes`), so both are
built for the same shapes.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Whisper's fixed 30 s input window: the audio frontend never yields more than this per utterance.
WHISPER_MAX_SECONDS = 30.0
# Heuristic for the text axis' optimum: about 2.5 words/s of speech, ~1.3 tokens per word, plus the newline.
TEXT_TOKENS_PER_SECOND = 3.5


class ProfileError(ValueError):
    """The requested profile bounds are inconsistent."""


class TensorRTUnavailable(RuntimeError):
    """TensorRT (or a CUDA GPU) is not usable here; the message says which and how to get it."""


@dataclass(frozen=True)
class ProfileConfig:
    """Bounds for one TensorRT optimization profile.

    Seconds are utterance lengths. Defaults: `max_seconds` 30 = Whisper's window (the longest utterance the audio
    frontend can produce; the live segmenter caps utterances at 8 s), `opt_seconds` 5 = a typical conversational
    turn, `min_seconds` 0.04 = one downsampled audio position.
    """

    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    min_seconds: float = 0.04
    opt_seconds: float = 5.0
    max_seconds: float = WHISPER_MAX_SECONDS
    min_text_tokens: int = 1
    opt_text_tokens: int | None = None  # None: TEXT_TOKENS_PER_SECOND * opt_seconds, capped by max_text_tokens

    def validate(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ProfileError(
                "batch bounds must satisfy 1 <= min <= opt <= max, got "
                f"{self.min_batch}/{self.opt_batch}/{self.max_batch}"
            )
        if not 0 < self.min_seconds <= self.opt_seconds <= self.max_seconds:
            raise ProfileError(
                "utterance seconds must satisfy 0 < min <= opt <= max, got "
                f"{self.min_seconds}/{self.opt_seconds}/{self.max_seconds}"
            )
        if self.max_seconds > WHISPER_MAX_SECONDS:
            raise ProfileError(
                f"max_seconds {self.max_seconds} exceeds Whisper's {WHISPER_MAX_SECONDS:g} s window: the audio "
                "features of one utterance never cover more"
            )
        if self.min_text_tokens < 1:
            raise ProfileError(f"min_text_tokens must be >= 1, got {self.min_text_tokens}")


@dataclass(frozen=True)
class ShapeRange:
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def audio_frames(fusion_cfg: Any, seconds: float) -> int:
    """Audio feature frames covering `seconds`, rounded UP to a multiple of the stride (at least one stride)."""
    s = int(fusion_cfg.audio_stride)
    frames = math.ceil(round(seconds * fusion_cfg.audio_rate, 6))
    return max(s, math.ceil(frames / s) * s)


def visual_frames(fusion_cfg: Any, seconds: float) -> int:
    """Sampled video frames covering `seconds` (at least 1)."""
    return max(1, math.ceil(round(seconds * fusion_cfg.visual_rate, 6)))


def text_tokens(fusion_cfg: Any, profile: ProfileConfig) -> tuple[int, int, int]:
    hi = int(fusion_cfg.max_text_tokens)
    lo = min(profile.min_text_tokens, hi)
    opt = profile.opt_text_tokens
    if opt is None:
        opt = math.ceil(TEXT_TOKENS_PER_SECOND * profile.opt_seconds)
    opt = min(max(opt, lo), hi)
    return lo, opt, hi


def compute_profiles(fusion_cfg: Any, llm_hidden: int, profile: ProfileConfig | None = None) -> dict[str, ShapeRange]:
    """min/opt/max shapes of every fusion-graph input for one optimization profile."""
    p = profile or ProfileConfig()
    p.validate()
    f = fusion_cfg
    b = (p.min_batch, p.opt_batch, p.max_batch)
    ta = tuple(audio_frames(f, s) for s in (p.min_seconds, p.opt_seconds, p.max_seconds))
    tv = tuple(visual_frames(f, s) for s in (p.min_seconds, p.opt_seconds, p.max_seconds))
    tt = text_tokens(f, p)

    def rng(*per_axis: tuple[int, int, int] | int) -> ShapeRange:
        pick = lambda i: tuple(a[i] if isinstance(a, tuple) else a for a in per_axis)  # noqa: E731
        return ShapeRange(pick(0), pick(1), pick(2))

    return {
        "text_embeds": rng(b, tt, llm_hidden),
        "text_valid": rng(b, tt),
        "audio": rng(b, ta, f.audio_dim),
        "audio_valid": rng(b, ta),
        "visual": rng(b, tv, f.visual_dim),
        "visual_valid": rng(b, tv),
    }


def profiles_to_dict(profiles: dict[str, ShapeRange]) -> dict[str, dict[str, list[int]]]:
    return {name: r.to_dict() for name, r in profiles.items()}


def profiles_from_dict(data: dict[str, dict[str, list[int]]]) -> dict[str, ShapeRange]:
    return {name: ShapeRange(tuple(r["min"]), tuple(r["opt"]), tuple(r["max"])) for name, r in data.items()}


def ort_trt_provider_options(
    profiles: dict[str, ShapeRange], fp16: bool, cache_dir: str | Path | None = None
) -> dict[str, str]:
    """onnxruntime TensorrtExecutionProvider options for the same profile (explicit shape ranges, engine cache)."""

    def fmt(which: str) -> str:
        return ",".join(f"{name}:{'x'.join(str(d) for d in getattr(r, which))}" for name, r in profiles.items())

    options = {
        "trt_fp16_enable": "True" if fp16 else "False",
        "trt_profile_min_shapes": fmt("min"),
        "trt_profile_opt_shapes": fmt("opt"),
        "trt_profile_max_shapes": fmt("max"),
    }
    if cache_dir is not None:
        options.update(trt_engine_cache_enable="True", trt_engine_cache_path=str(cache_dir))
    return options


# -- availability -------------------------------------------------------------------------------------------------
def tensorrt_status() -> tuple[bool, str]:
    """(usable, reason). Usable needs `import tensorrt` and a CUDA GPU visible to torch."""
    try:
        import tensorrt as trt  # noqa: F401
    except Exception as exc:  # ImportError, or a stub package that raises on import
        return False, (
            f"TensorRT is not installed ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no module'}); on a CUDA machine install "
            "NVIDIA's wheels (pip install tensorrt-cu13) to build fusion.plan"
        )
    version = getattr(trt, "__version__", "?")
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a hard dependency
        has_gpu = False
    if not has_gpu:
        return False, (f"TensorRT {version} is installed but no CUDA GPU is visible; engines are built on the GPU they "
                       "run on")
    return True, f"TensorRT {version}"


# -- engine building -------------------------------------------------------------------------------------------
@dataclass
class BuildResult:
    path: str
    seconds: float
    fp16: bool
    tensorrt_version: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    profiles: dict[str, ShapeRange],
    fp16: bool = True,
    workspace_gib: float = 2.0,
    trt: Any = None,
) -> BuildResult:
    """Parse the ONNX graph and build a serialized TensorRT engine with one optimization profile.

    `trt` defaults to the real `tensorrt` module (a test may pass a stand-in). Raises TensorRTUnavailable when it
    cannot be imported and RuntimeError naming the parser's errors or the failed build.
    """
    if trt is None:
        try:
            import tensorrt as trt
        except Exception as exc:
            raise TensorRTUnavailable(tensorrt_status()[1]) from exc
    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    major = int(str(getattr(trt, "__version__", "10")).split(".")[0])
    if major < 10 and hasattr(trt, "NetworkDefinitionCreationFlag"):  # explicit batch is the only mode from TRT 10
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: " + "; ".join(errors[:5]))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if fp16:
        if not getattr(builder, "platform_has_fast_fp16", True):
            raise RuntimeError("--fp16 asked for, but this GPU has no fast fp16 path")
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    missing = [n for n in names if n not in profiles]
    if missing:
        raise RuntimeError(f"no optimization profile for network input(s) {missing}")
    for name in names:
        r = profiles[name]
        profile.set_shape(name, r.min, r.opt, r.max)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see the TensorRT log above)")
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    data = bytes(serialized)
    engine_path.write_bytes(data)
    return BuildResult(str(engine_path), time.perf_counter() - start, fp16, str(getattr(trt, "__version__", "?")),
                       len(data))


class TensorRTFusionEngine:
    """Runs `fusion.plan` directly with the TensorRT runtime on CUDA torch tensors (parity checks, benchmarks).

    Serving uses `export.runner.FusionEngine` (onnxruntime, TensorRT EP first); this class exists to check the
    standalone engine that Triton or trtexec users deploy.
    """

    def __init__(self, engine_path: str | Path):
        import tensorrt as trt
        import torch

        self._trt = trt
        self._torch = torch
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"could not deserialize the TensorRT engine {engine_path}")
        self.context = self.engine.create_execution_context()
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def __call__(self, feeds: dict[str, Any]) -> dict[str, Any]:
        torch, trt = self._torch, self._trt
        dtypes = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bool: torch.bool, trt.int32: torch.int32}
        keep = {}
        for name in self.inputs:
            t = torch.as_tensor(feeds[name]).cuda().contiguous()
            keep[name] = t
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            outs[name] = torch.empty(shape, dtype=dtypes[self.engine.get_tensor_dtype(name)], device="cuda")
            self.context.set_tensor_address(name, outs[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return {n: t.float().cpu().numpy() for n, t in outs.items()}
