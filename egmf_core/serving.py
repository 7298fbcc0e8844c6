"""Inference-only rewrites of the LLM for CPU serving: linear layers with their weight stored transposed, in fp32,
bfloat16 or int8 (`egmf_core.precision`; int8's product by torch with VNNI, by onnxruntime on AVX2 CPUs without it);
and `freeze_loaded_heap`, for a process that has loaded its models.

In fp32 they change the speed, not the answers (same outputs within float rounding); in bfloat16 and int8 the answers
agree with fp32 as `benchmarks/results/llm_precision.md` reports.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
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


class OrtInt8Projection:
    """`Int8Linear`'s whole forward (smooth, quantize per row, int8 x int8 -> int32, rescale, bias) as one
    onnxruntime graph on one thread: the int8 kernel on CPUs without VNNI, where torch's ``_int_mm`` is emulated
    (~1.5 GOP/s on a 2-core AVX2 EPYC) and onnxruntime's MLAS runs int8 products at ~140 GOP/s (fp32 sgemm: ~68
    GFLOP/s; `benchmarks/bench_matmul_backends.py`). One call per projection instead of ~12 torch operations around
    the product: those cost ~0.25 ms per projection, ~50 ms per prompt pass, as much as int8 saved.

    The graph does what `Int8Linear.forward` does in torch, in the same order (IEEE division, round half to even),
    so the quantized inputs are the same integers. The product is ``MatMulInteger`` with both operands as uint8,
    zero point 128 (an int8 value v is the byte v + 128): MLAS's AVX2 uint8 x int8 kernel sums pairs of products in
    int16 (``vpmaddubsw``) and saturates on full-range operands (errors of 10^4 on the int32 result, measured), its
    int8 x int8 one runs ~20 GOP/s; uint8 x uint8 widens first and is exact. So this returns what the torch kernel
    does, within float rounding of the rescale, and the answers do not depend on which kernel ran them."""

    def __init__(self, weight_t: torch.Tensor, weight_scale: torch.Tensor, input_divisor: torch.Tensor | None,
                 bias: torch.Tensor | None):
        import onnxruntime as ort

        model = _int8_projection_graph(weight_t, weight_scale, input_divisor, bias)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # int8 passes run on one thread (`precision.pass_threads`)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # No per-session arena: a model has ~200 of these sessions, and each arena keeps the largest intermediates
        # it has seen (a batch of 56 prompts grew one process past 20 GiB); plain allocation measured as fast.
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        self._session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows``: float32, contiguous (rows, in) -> (rows, out) float32."""
        return torch.from_numpy(self._session.run(["y"], {"x": rows.numpy()})[0])


def _int8_projection_graph(weight_t: torch.Tensor, weight_scale: torch.Tensor, input_divisor: torch.Tensor | None,
                           bias: torch.Tensor | None):
    """The ONNX graph of `Int8Linear.forward` for `OrtInt8Projection` (opset 17: ReduceMax takes its axes as an
    attribute)."""
    from onnx import TensorProto, helper, numpy_helper

    k, n = weight_t.shape
    consts = {"w": (weight_t.contiguous().view(torch.uint8) ^ 0x80).numpy(), "zero": np.array(128, np.uint8),
              "weight_scale": weight_scale.float().numpy(), "tiny": np.array(1e-12, np.float32),
              "q_max": np.array(127.0, np.float32), "offset": np.array(128.0, np.float32)}
    node = helper.make_node
    nodes = []
    rows = "x"
    if input_divisor is not None:
        consts["divisor"] = input_divisor.float().numpy()
        nodes.append(node("Div", ["x", "divisor"], ["smoothed"]))
        rows = "smoothed"
    nodes += [node("Abs", [rows], ["magnitude"]),
              node("ReduceMax", ["magnitude"], ["absmax"], axes=[1], keepdims=1),
              node("Max", ["absmax", "tiny"], ["absmax_floor"]),
              node("Div", ["absmax_floor", "q_max"], ["row_scale"]),
              node("Div", [rows, "row_scale"], ["scaled"]),
              node("Round", ["scaled"], ["rounded"]),
              node("Add", ["rounded", "offset"], ["shifted"]),
              node("Cast", ["shifted"], ["q"], to=TensorProto.UINT8),
              node("MatMulInteger", ["q", "w", "zero", "zero"], ["product"]),
              node("Cast", ["product"], ["product_f"], to=TensorProto.FLOAT),
              node("Mul", ["product_f", "row_scale"], ["by_row"]),
              node("Mul", ["by_row", "weight_scale"], ["y" if bias is None else "unbiased"])]
    if bias is not None:
        consts["bias"] = bias.float().numpy()
        nodes.append(node("Add", ["unbiased", "bias"], ["y"]))
    graph = helper.make_graph(nodes, "int8_projection",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
                              [numpy_helper.from_array(np.ascontiguousarray(v), name) for name, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


#: `Int8Linear`'s int8 x int8 -> int32 kernels (`precision.int8_kernel` picks one by the CPU's flags).
INT8_KERNELS = ("torch", "onnxruntime")


class Int8Linear(nn.Module):
    """`nn.Linear` for CPU inference in int8: the weight quantized once, symmetric per output channel; the input
    quantized on every call, symmetric per row (per token, so that one loud token does not coarsen the others); the
    int8 x int8 -> int32 product by ``kernel``, rescaled to the input's dtype: "torch" is ``torch._int_mm`` (oneDNN,
    VNNI dot products), "onnxruntime" `OrtInt8Projection` (MLAS, AVX2); the two return the same integers. The weight
    is a buffer: nothing here trains.

    ``input_absmax`` (in,): the largest input magnitude per channel seen on calibration prompts. The LLM's
    activations have outlier channels (10-20x the median channel), which per-row int8 alone rounds the other channels
    away on; with it the layer is smoothed as SmoothQuant does (Xiao et al., 2023): each input channel j divided by
    s_j = absmax_j^alpha / max_i |W_ij|^(1 - alpha) and the weight's column multiplied by it, the same product with
    the range shared between the two operands."""

    def __init__(self, linear: nn.Linear, input_absmax: torch.Tensor | None = None, alpha: float = SMOOTH_ALPHA,
                 kernel: str = "torch"):
        super().__init__()
        if kernel not in INT8_KERNELS:
            raise ValueError(f"int8 kernel: expected one of {', '.join(INT8_KERNELS)}, got {kernel!r}")
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
        self.kernel = kernel
        self._ort = None
        if kernel == "onnxruntime":
            self._ort = OrtInt8Projection(self.weight_t, self.weight_scale, self.input_divisor, self.bias)
            self.weight_t = None  # onnxruntime holds its own copy: ~107 MB less for SmolLM2-135M

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).float()
        if self._ort is not None:
            return self._ort(rows.detach().contiguous()).to(x.dtype).reshape(*x.shape[:-1], -1)
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
                             reference: PrecisionSwitch | None = None, int8_kernel: str = "torch") -> int:
    """Replace every projection of `decoder`'s layers (`projections`) by a `TransposedLinear` with its weight in
    ``dtype``, or for ``torch.int8`` by an `Int8Linear` smoothed by the inputs seen while ``calibration()`` runs the
    model (None: unsmoothed) and run by ``int8_kernel`` (`INT8_KERNELS`), wrapped with its fp32 copy in a
    `CheckedInt8Linear` run by ``reference`` where given. Returns how many were replaced."""
    absmax = input_absmax(decoder, calibration) if dtype == torch.int8 and calibration is not None else {}
    found = projections(decoder)
    for parent, name, linear in found:
        if dtype != torch.int8:
            rewritten: nn.Module = TransposedLinear(linear, dtype)
        elif reference is None:
            rewritten = Int8Linear(linear, absmax.get(linear), kernel=int8_kernel)
        else:
            rewritten = CheckedInt8Linear(Int8Linear(linear, absmax.get(linear), kernel=int8_kernel),
                                          TransposedLinear(linear), reference)
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
