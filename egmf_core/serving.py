"""Inference-only rewrites of the LLM for CPU serving: linear layers with their weight stored transposed.

They change the speed, not the answers (same outputs within float rounding). The speed-ups were measured when the
rewrites were introduced (see their commit messages); no results file holds them yet.
"""

from __future__ import annotations

import torch
from torch import nn


class TransposedLinear(nn.Module):
    """`nn.Linear` for CPU inference with the weight stored transposed and contiguous, (in, out): MKL's sgemm is
    faster on the few-row inputs of the answer pass than with the transposed view `F.linear` hands it. The weight is
    a buffer: nothing here trains."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.register_buffer("weight_t", linear.weight.detach().t().contiguous())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(x, self.weight_t)
        return y if self.bias is None else y + self.bias


def transpose_linear_weights(decoder: nn.Module) -> int:
    """Replace every plain `nn.Linear` projection of `decoder`'s layers (a merged peft layer: its base, which holds
    W + BA) by a `TransposedLinear`. Returns how many were replaced."""
    n = 0
    for layer in decoder.layers:
        for parent in layer.children():
            for name, child in list(parent.named_children()):
                linear = getattr(child, "base_layer", child)  # a merged peft layer: its base holds W + BA
                if type(linear) is nn.Linear:
                    setattr(parent, name, TransposedLinear(linear))
                    n += 1
    return n
