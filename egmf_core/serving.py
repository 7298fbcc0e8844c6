"""Inference-only rewrites of the LLM for CPU serving: linear layers with their weight stored transposed, in fp32,
bfloat16 or int8 (`egmf_core.precision`); and `freeze_loaded_heap`, for a process that has loaded its models.

In fp32 they change the speed, not the answers (same outputs within float rounding); in bfloat16 and int8 the answers
agree with fp32 as `benchmarks/results/llm_precision.md` reports.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

#: SmoothQuant's migration strength: 0.5 shares an outlier channel's range evenly between input and weight.
SMOOTH_ALPHA = 0.5


class TransposedLinear(nn.Module):
    """`nn.Linear` for CPU inference with the weight stored transposed and contiguous, (in, out): MKL's sgemm is
    faster on the few-row inputs of the answer pass than with the transposed view `F.linear` hands it. The weight is
    a buffer: nothing here trains.

    ``dtype`` bfloat16: the weight is stored in bfloat16 and the input cast to it for the matmul (oneDNN accumulates in
    fp32); the output and the bias stay in the input's dtype, so everything around the projection runs as before."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.register_buffer("weight_t", linear.weight.detach().t().to(dtype).contiguous())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight_t
        y = torch.matmul(x, w) if x.dtype == w.dtype else torch.matmul(x.to(w.dtype), w).to(x.dtype)
        return y if self.bias is None else y + self.bias


class Int8Linear(nn.Module):
    """`nn.Linear` for CPU inference in int8: the weight quantized once, symmetric per output channel; the input
    quantized on every call, symmetric per row (per token, so that one loud token does not coarsen the others); the
    int8 x int8 -> int32 product by ``torch._int_mm`` (oneDNN; VNNI dot products where the CPU has them), rescaled to
    the input's dtype. The weight is a buffer: nothing here trains.

    ``input_absmax`` (in,): the largest input magnitude per channel seen on calibration prompts. The LLM's
    activations have outlier channels (10-20x the median channel), which per-row int8 alone rounds the other channels
    away on; with it the layer is smoothed as SmoothQuant does (Xiao et al., 2023): each input channel j divided by
    s_j = absmax_j^alpha / max_i |W_ij|^(1 - alpha) and the weight's column multiplied by it, the same product with
    the range shared between the two operands."""

    def __init__(self, linear: nn.Linear, input_absmax: torch.Tensor | None = None, alpha: float = SMOOTH_ALPHA):
        super().__init__()
        w = linear.weight.detach().float()
        smooth = None
        if input_absmax is not None:
            smooth = (input_absmax.float().clamp_min(1e-5).pow(alpha)
                      / w.abs().amax(dim=0).clamp_min(1e-5).pow(1 - alpha)).clamp(1e-2, 1e2)
            w = w * smooth[None, :]
        scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
        self.register_buffer("weight_t", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).t()
                             .contiguous())
        self.register_buffer("weight_scale", scale)
        self.register_buffer("input_divisor", None if smooth is None else smooth)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).float()
        if self.input_divisor is not None:
            rows = rows / self.input_divisor
        row_scale = rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
        q = torch.round(rows / row_scale).to(torch.int8)
        y = (torch._int_mm(q, self.weight_t).float() * row_scale * self.weight_scale).to(x.dtype)
        y = y.reshape(*x.shape[:-1], y.shape[-1])
        return y if self.bias is None else y + self.bias


class PrecisionSwitch:
    """Which copy of its weights every `CheckedInt8Linear` of one model runs: int8 (``reference`` False) or the fp32
    reference. One object shared by all of a model's layers, flipped by `EGMFModel.reference_precision`."""

    def __init__(self) -> None:
        self.reference = False


class CheckedInt8Linear(nn.Module):
    """An `Int8Linear` with its fp32 `TransposedLinear` kept beside it, so that a pass can be re-run exactly as the
    fp32 reference runs it: int8's rounding moves the answers that are near ties (`EGMFPredictor`'s int8 check
    re-scores those in fp32). Costs the fp32 weights' memory on top of the int8 ones."""

    def __init__(self, fast: Int8Linear, reference: TransposedLinear, switch: PrecisionSwitch):
        super().__init__()
        self.fast = fast
        self.reference = reference
        self.switch = switch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reference(x) if self.switch.reference else self.fast(x)


def projections(decoder: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """Every plain `nn.Linear` projection of `decoder`'s layers as (parent, attribute name, linear); for a merged peft
    layer, its base (which holds W + BA)."""
    found = []
    for layer in decoder.layers:
        for parent in layer.children():
            for name, child in list(parent.named_children()):
                linear = getattr(child, "base_layer", child)
                if type(linear) is nn.Linear:
                    found.append((parent, name, linear))
    return found


def input_absmax(decoder: nn.Module, run: Callable[[], object]) -> dict[nn.Linear, torch.Tensor]:
    """The largest input magnitude per channel of each projection (`projections`) while ``run()`` runs the model:
    what `Int8Linear` smooths by."""
    seen: dict[nn.Linear, torch.Tensor] = {}

    def record(module: nn.Module, args: tuple) -> None:
        m = args[0].detach().reshape(-1, args[0].shape[-1]).abs().amax(dim=0).float()
        seen[module] = m if module not in seen else torch.maximum(seen[module], m)

    hooks = [linear.register_forward_pre_hook(record) for _, _, linear in projections(decoder)]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    return seen


def transpose_linear_weights(decoder: nn.Module, dtype: torch.dtype = torch.float32,
                             calibration: Callable[[], object] | None = None,
                             reference: PrecisionSwitch | None = None) -> int:
    """Replace every projection of `decoder`'s layers (`projections`) by a `TransposedLinear` with its weight in
    ``dtype``, or for ``torch.int8`` by an `Int8Linear` smoothed by the inputs seen while ``calibration()`` runs the
    model (None: unsmoothed), wrapped with its fp32 copy in a `CheckedInt8Linear` run by ``reference`` where given.
    Returns how many were replaced."""
    absmax = input_absmax(decoder, calibration) if dtype == torch.int8 and calibration is not None else {}
    found = projections(decoder)
    for parent, name, linear in found:
        if dtype != torch.int8:
            rewritten: nn.Module = TransposedLinear(linear, dtype)
        elif reference is None:
            rewritten = Int8Linear(linear, absmax.get(linear))
        else:
            rewritten = CheckedInt8Linear(Int8Linear(linear, absmax.get(linear)), TransposedLinear(linear), reference)
        setattr(parent, name, rewritten)
    return len(found)


@contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` for the block, then restored (None: left as they are). For a predictor
    whose passes are faster on fewer threads than the process has (`precision.pass_threads`); the calling thread
    must be the only one running torch work meanwhile, as under `EGMFPredictor`'s lock."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def freeze_loaded_heap() -> int:
    """Collect once, then move every object alive into the garbage collector's permanent generation (`gc.freeze`);
    returns how many objects are frozen. For a long-running process that has loaded its models (the predictor's and
    the recognizer's `warm_up` call it).

    The loaded models and their libraries are ~440k Python objects that live as long as the process, and CPython's
    full collections rescan all of them: ~230 ms on a 2-core EPYC once everything is loaded (0.05 ms frozen), landing
    on whichever utterance is being analyzed (it was the third utterance of every stream in the latency benchmark,
    `docs/results.md`, "Streaming latency"). Frozen objects are skipped by the collector; they are still freed by
    reference counting, so only a reference cycle among them would stay in memory."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
