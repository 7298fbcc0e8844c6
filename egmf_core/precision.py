"""Which number format the LLM's matmuls run in on CPU, chosen at start-up from what the CPU can do.

The prompt pass is most of an utterance's analysis, and almost all of it is the decoder layers' linear projections.
On a CPU with AVX512-BF16 or AMX-BF16, oneDNN runs a bfloat16 matmul (fp32 accumulation) much faster than an fp32
one; without those instructions bfloat16 is emulated and slower, so fp32 stays. Only the projections' weights and
inputs are bfloat16 (`serving.TransposedLinear`): residual stream, norms, attention, the KV cache and the answer logits
stay fp32, which keeps the answers those of the fp32 reference (`benchmarks/bench_llm_precision.py` measures the
agreement; `tests/test_llm_precision.py` checks it on a fixed sample).

- ``"fp32"``: the reference; training and evaluation always use it.
- ``"bf16"``: bfloat16 projections, on a CPU with native bf16 dot products (`BF16_FLAGS`); for checks or by
  choice (on a 2-core Intel Xeon with AVX512-BF16 they are slower than fp32, see "auto").
- ``"int8"``: int8 projections (`serving.Int8Linear`: per-channel weights, per-token inputs, smoothed on a short
  calibration call at load). Alone it is not exact: its labels differ from fp32's on a few percent of utterances,
  all of them near ties. So it is checked: an answer whose closest decision is a logit gap under `INT8_CHECK_MARGIN`
  is re-scored with the projections' fp32 copies, kept beside the int8 ones (`EGMFPredictor.score`), which brings
  the labels to fp32's on >= 99 % of utterances at the cost of a second pass for the near ties
  (`benchmarks/results/llm_precision_int8_checked.md`). Only a user who asks gets it. Its kernel follows the CPU
  (`int8_kernel`): ``torch._int_mm`` (oneDNN) where the CPU has VNNI (`INT8_FLAGS`), onnxruntime's MLAS where it
  has AVX2 only (`INT8_ORT_FLAGS`, `serving.OrtInt8Projection`); both compute the same integers.
- ``"auto"``: bf16 where the CPU has AVX512-BF16 or AMX-BF16 *and* a bf16 matmul at the prompt pass's shapes is
  measurably faster than fp32's on this machine (`bf16_speedup`, timed once at load, ~0.1 s), else fp32. What the
  CLI and the service use. The flags alone are not enough: on a 2-core Intel Xeon with AVX512-BF16 (no AMX) oneDNN's
  bf16 matmul ran at 75 GFLOP/s against fp32's 156, and "bf16 because the flag is there" made the service's 16
  streams fall 17 s behind (`benchmarks/results/llm_precision_xeon.md`), while on a 2-core AMD EPYC (Zen 4) bf16 is
  the faster one.

bf16 or int8 asked for on a CPU that would emulate them is refused with an error that says so, not run: torch then
falls back to generic kernels, and on a 2-core AMD EPYC with AVX2 only (no AVX512, no VNNI) a bf16 or torch int8
matmul at the prompt pass's shapes ran at 1.4-1.5 GFLOP/s against fp32's 57-70, a prompt pass of ~10 s instead of
~0.3 s (`benchmarks/results/llm_precision_avx2.md`). bf16 needs `BF16_FLAGS`; int8 runs on onnxruntime there
instead, and is refused only on a CPU without AVX2.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, get_args

__all__ = ["PRECISIONS", "INT8_CHECK_MARGIN", "LlmPrecision", "bf16_speedup", "cpu_has_bf16", "cpu_has_int8",
           "cpu_has_native", "int8_kernel", "pass_threads", "resolve_precision"]

log = logging.getLogger("egmf_core.precision")

LlmPrecision = Literal["auto", "fp32", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(LlmPrecision)

#: int8's check (`EGMFPredictor.score`): answers whose closest decision is a logit gap under this are re-scored in
#: fp32. Fitted on dev data (MELD dev, RAVDESS dev actors 11-12) by `benchmarks/bench_llm_precision.py --fit-check`.
INT8_CHECK_MARGIN = 0.75

#: /proc/cpuinfo flags of native bfloat16 dot products (Intel Cooper Lake+/Sapphire Rapids+, AMD Zen 4+).
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
#: /proc/cpuinfo flags of native int8 dot products (VNNI: Intel Cascade Lake+/Alder Lake+, AMD Zen 4+), which
#: `torch._int_mm` (oneDNN) needs to be fast.
INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
#: /proc/cpuinfo flags under which onnxruntime's MLAS runs int8 matmuls fast without VNNI (AVX2 integer kernels):
#: `serving.OrtInt8Projection`, ~134 GOP/s on one core of a 2-core AVX2 EPYC where torch's `_int_mm` runs ~1.5.
INT8_ORT_FLAGS = frozenset({"avx2"})
#: The formats that need the CPU's own instructions, and the flags under which one of their kernels is fast.
NATIVE_FLAGS = {"bf16": BF16_FLAGS, "int8": INT8_FLAGS | INT8_ORT_FLAGS}


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The first CPU's feature flags (empty where /proc/cpuinfo cannot be read, e.g. not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def cpu_has_native(precision: str, cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU runs `precision` ("bf16", "int8") fast, with instructions a kernel of ours uses
    (`NATIVE_FLAGS`; int8: VNNI for torch's, AVX2 for onnxruntime's)."""
    return bool(NATIVE_FLAGS[precision] & cpu_flags(cpuinfo))


def cpu_has_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    return cpu_has_native("bf16", cpuinfo)


def cpu_has_int8(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    return cpu_has_native("int8", cpuinfo)


def int8_kernel(cpuinfo: str | Path = "/proc/cpuinfo") -> Literal["torch", "onnxruntime"] | None:
    """Which kernel runs `serving.Int8Linear`'s int8 products on this CPU: "torch" (``torch._int_mm``, oneDNN) where
    it has VNNI (`INT8_FLAGS`), "onnxruntime" (MLAS) where it has AVX2 only, None where neither is fast. Both give
    the same integers; each is the fast one where it is chosen (`benchmarks/bench_matmul_backends.py`)."""
    flags = cpu_flags(cpuinfo)
    if INT8_FLAGS & flags:
        return "torch"
    if INT8_ORT_FLAGS & flags:
        return "onnxruntime"
    return None


#: "auto" takes bf16 only when its probe matmuls run at least this much faster than fp32's: a margin for the probe's
#: noise and for the casts around each bf16 projection, which the plain matmul does not pay.
BF16_MIN_SPEEDUP = 1.15

#: The probe's matmuls: a live prompt pass's new ids (~30-90) through SmolLM2-135M's projection shapes (hidden 576,
#: MLP 1536), (rows, in, out).
_PROBE_SHAPES = ((64, 576, 1536), (64, 1536, 576), (64, 576, 576))


def bf16_speedup(rounds: int = 5, reps: int = 4) -> float:
    """fp32 time / bf16 time of the probe matmuls (`_PROBE_SHAPES`) on ONE thread, as the bf16 passes run
    (`pass_threads`); > 1 means bf16 is faster here. Rounds alternate the two so that machine noise falls on both;
    the median round counts. Imports torch (the rest of this module does not), hence the imports inside."""
    import torch

    from .serving import intra_op_threads

    gen = torch.Generator().manual_seed(0)
    pairs = [(torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)) for m, k, n in _PROBE_SHAPES]
    operands = {torch.float32: pairs,
                torch.bfloat16: [(x.to(torch.bfloat16), w.to(torch.bfloat16)) for x, w in pairs]}

    def seconds(dtype: torch.dtype) -> float:
        t0 = time.perf_counter()
        for _ in range(reps):
            for x, w in operands[dtype]:
                torch.matmul(x, w)
        return time.perf_counter() - t0

    with intra_op_threads(1):
        seconds(torch.float32), seconds(torch.bfloat16)  # warm-up: oneDNN builds its kernels on the first call
        ratios = sorted(seconds(torch.float32) / max(seconds(torch.bfloat16), 1e-9) for _ in range(rounds))
    return ratios[len(ratios) // 2]


def pass_threads(precision: str, cores: int | None = None) -> int:
    """How many intra-op threads the live LLM passes should run on in this precision (``cores``: the CPUs this
    process may use, default its affinity): 1 for bf16 and int8; for fp32 every core but one, which stays with the
    recognizer, the VAD and the background KV priming that run beside the pass (1 on two cores).

    A live prompt pass is ~30-75 new ids over a cached context. With bf16 or int8 projections its matmuls are short,
    and on two threads the pass is dominated by OpenMP's hand-offs around each of the ~4,000 small operations (once
    one crosses torch's grain size it goes parallel: int8's quantize-and-rescale ops at 57+ rows of 576 channels).
    Measured on a 2-core EPYC, 3-turn cached context, 26-50 new ids (`benchmarks/bench_prompt_pass_threads.py`):
    int8 86-109 ms on one thread vs 111-193 on two; bf16 119-154 vs 111-164 (one thread wins from 39 ids on). fp32
    alone on an idle machine gains from the second core there (184-235 vs 155-208), but on the live path, beside the
    recognizer, it does not: one stream end of speech -> event p50 / p95 on one vs two threads 647 / 838 vs 746 / 1416
    ms on a 2-core AMD EPYC with AVX2 only (`benchmarks/results/streaming_latency_avx2`), 394 / 474 vs 421 / 485 ms on
    a 2-core Intel Xeon (`streaming_latency_xeon_fp32_threads`), where two threads also gave the multi-second tails.
    Machines with more cores were not measured; batched evaluation (`EGMFModel.score` directly) keeps the process's
    setting."""
    if precision in ("bf16", "int8"):
        return 1
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def resolve_precision(requested: str, device_type: str = "cpu", cpuinfo: str | Path = "/proc/cpuinfo",
                      speedup: Callable[[], float] = bf16_speedup) -> Literal["fp32", "bf16", "int8"]:
    """The precision to run: ``requested`` with ``"auto"`` decided by the CPU: bf16 where it has native bf16 and
    ``speedup()`` (fp32 time / bf16 time, measured) is at least `BF16_MIN_SPEEDUP`, else fp32. Off the CPU
    (``device_type`` "cuda") the LLM keeps its fp32 weights here: a GPU is served by the exported engines
    (`python -m export`). An explicit bf16 or int8 on a CPU without fast kernels for it (`NATIVE_FLAGS`) raises
    ValueError.

    No torch import at module level: the streaming layer validates its configuration with this module before loading
    models (only the "auto" probe imports it)."""
    if requested not in PRECISIONS:
        raise ValueError(f"llm_precision: expected one of {', '.join(PRECISIONS)}, got {requested!r}")
    if device_type != "cpu":
        return "fp32"
    if requested == "auto":
        if not cpu_has_native("bf16", cpuinfo):
            return "fp32"  # bf16 would be emulated: always slower
        ratio = speedup()
        choice: Literal["fp32", "bf16"] = "bf16" if ratio >= BF16_MIN_SPEEDUP else "fp32"
        log.info("llm_precision auto: bf16 matmul %.2fx fp32's on this CPU (needs %.2fx) -> %s", ratio,
                 BF16_MIN_SPEEDUP, choice)
        return choice
    if requested in NATIVE_FLAGS and not cpu_has_native(requested, cpuinfo):
        raise ValueError(
            f"llm_precision: {requested} needs a CPU with fast {requested} matmuls "
            f"({' or '.join(sorted(NATIVE_FLAGS[requested]))} in /proc/cpuinfo) and this one has none: they would be "
            f"emulated at a few percent of fp32's speed (~10 s per utterance); use auto or fp32")
    return requested  # type: ignore[return-value]
