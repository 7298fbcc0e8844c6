"""Inference-only rewrites of the LLM for CPU serving: linear layers with their weight stored transposed, in fp32 or
bfloat16 (`egmf_core.precision`).

In fp32 they change the speed, not the answers (same outputs within float rounding); in bfloat16 the answers agree
with fp32 as `benchmarks/results/llm_precision.md` reports.
"""

from __future__ import annotations

import torch
from torch import nn


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


def transpose_linear_weights(decoder: nn.Module, dtype: torch.dtype = torch.float32) -> int:
    """Replace every plain `nn.Linear` projection of `decoder`'s layers (a merged peft layer: its base, which holds
    W + BA) by a `TransposedLinear` with its weight in ``dtype``. Returns how many were replaced."""
    n = 0
    for layer in decoder.layers:
        for parent in layer.children():
            for name, child in list(parent.named_children()):
                linear = getattr(child, "base_layer", child)  # a merged peft layer: its base holds W + BA
                if type(linear) is nn.Linear:
                    setattr(parent, name, TransposedLinear(linear, dtype))
                    n += 1
    return n
