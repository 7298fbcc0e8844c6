"""ONNX export of the fusion stack (`egmf_core.fusion.FusionStack`).

Exporter choice: `torch.onnx.export(..., dynamo=True)` (torch.export + onnxscript). The legacy TorchScript exporter
(`dynamo=False`) is deprecated and cannot trace the stack at all: `text_valid & self.ablation.use_text` (a bool
tensor AND a Python bool) hits an internal assert in the tracer. The dynamo exporter also expresses the audio time
axis exactly as the model needs it: a multiple of `fusion.audio_stride` (`Dim * stride`), so no shape guard is baked
in for the example length. The weights (~14 MB) are embedded in one self-contained `fusion.onnx`
(`external_data=False`): one file to hash, copy and hand to TensorRT.

Signature (also written to manifest.json):

| input        | dtype   | shape                        |
| text_embeds  | float32 | (batch, text_len, d_llm)     | the LLM's own input embeddings of the utterance tokens
| text_valid   | bool    | (batch, text_len)            |
| audio        | float32 | (batch, audio_len, 384)      | audio_len a multiple of audio_stride (2)
| audio_valid  | bool    | (batch, audio_len)           |
| visual       | float32 | (batch, visual_len, 58)      |
| visual_valid | bool    | (batch, visual_len)          |

| output         | dtype   | shape               |
| pseudo_tokens  | float32 | (batch, K, d_llm)   |
| alpha          | float32 | (batch, 3)          |
| expert_outputs | float32 | (batch, 3, d_h)     |
| fused          | float32 | (batch, d_h)        |

All four outputs are computed by the stack anyway, so exporting them costs nothing and lets the runner return a
complete `FusionOutput`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INPUT_NAMES: tuple[str, ...] = ("text_embeds", "text_valid", "audio", "audio_valid", "visual", "visual_valid")
OUTPUT_NAMES: tuple[str, ...] = ("pseudo_tokens", "alpha", "expert_outputs", "fused")
OPSET = 18
# Symbolic axis names used in the graph and the manifest.
BATCH, TEXT_LEN, AUDIO_LEN, VISUAL_LEN = "batch", "text_len", "audio_len", "visual_len"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32" or "bool"
    shape: tuple[str | int, ...]  # symbolic axes are strings
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "description": self.description}


def io_spec(fusion_cfg: Any, llm_hidden: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output specs of the fusion graph for a `FusionConfig` and LLM hidden size."""
    f = fusion_cfg
    inputs = [
        TensorSpec("text_embeds", "float32", (BATCH, TEXT_LEN, llm_hidden),
                   "the LLM's input embeddings of the utterance tokens (at most fusion.max_text_tokens)"),
        TensorSpec("text_valid", "bool", (BATCH, TEXT_LEN), "True for real tokens; all False = no transcript"),
        TensorSpec("audio", "float32", (BATCH, AUDIO_LEN, f.audio_dim),
                   f"Whisper encoder states at {f.audio_rate:g} Hz; audio_len must be a multiple of {f.audio_stride}"),
        TensorSpec("audio_valid", "bool", (BATCH, AUDIO_LEN), "True for real frames; all False = no audio"),
        TensorSpec("visual", "float32", (BATCH, VISUAL_LEN, f.visual_dim),
                   f"face features (52 blendshapes + head pose) at {f.visual_rate:g} Hz"),
        TensorSpec("visual_valid", "bool", (BATCH, VISUAL_LEN), "True where a face was found; all False = no video"),
    ]
    outputs = [
        TensorSpec("pseudo_tokens", "float32", (BATCH, f.pseudo_tokens, llm_hidden),
                   "pseudo tokens at the LLM's input-embedding scale"),
        TensorSpec("alpha", "float32", (BATCH, 3), "expert gate weights (local, semantic, global)"),
        TensorSpec("expert_outputs", "float32", (BATCH, 3, f.hidden), "the three experts' outputs"),
        TensorSpec("fused", "float32", (BATCH, f.hidden), "f_fusion before the experts"),
    ]
    return inputs, outputs


def graph_module(fusion: Any) -> Any:
    """Wrap a FusionStack so that it returns a tuple of tensors in OUTPUT_NAMES order (what an exporter needs)."""
    import torch

    class FusionGraph(torch.nn.Module):
        def __init__(self, stack: torch.nn.Module):
            super().__init__()
            self.stack = stack

        def forward(self, text_embeds, text_valid, audio, audio_valid, visual, visual_valid):  # noqa: D401
            out = self.stack(text_embeds, text_valid, audio, audio_valid, visual, visual_valid)
            return out.pseudo_tokens, out.alpha, out.expert_outputs, out.fused

    return FusionGraph(fusion).eval()


def example_inputs(fusion_cfg: Any, llm_hidden: int, embed_rms: float, batch: int = 2, seconds: float = 5.0,
                   text_len: int = 16, seed: int = 0) -> tuple[Any, ...]:
    """Tracing inputs. Every dynamic axis must be >= 2 (torch.export specializes sizes 0 and 1); the lengths used
    here are deliberately absent from the parity cases, which check that nothing was specialized to them."""
    import torch

    f = fusion_cfg
    g = torch.Generator().manual_seed(seed)
    ta = max(2, int(round(seconds * f.audio_rate)) // f.audio_stride) * f.audio_stride
    tv = max(2, int(round(seconds * f.visual_rate)))
    text_valid = torch.ones(batch, text_len, dtype=torch.bool)
    text_valid[1:, text_len // 2 :] = False
    audio_valid = torch.ones(batch, ta, dtype=torch.bool)
    audio_valid[1:, ta // 2 :] = False
    visual_valid = torch.ones(batch, tv, dtype=torch.bool)
    visual_valid[1:, ::3] = False
    return (
        torch.randn(batch, text_len, llm_hidden, generator=g) * embed_rms,
        text_valid,
        torch.randn(batch, ta, f.audio_dim, generator=g),
        audio_valid,
        torch.rand(batch, tv, f.visual_dim, generator=g),
        visual_valid,
    )


def export_fusion(fusion: Any, path: str | Path, example: tuple[Any, ...],
                  metadata: dict[str, str] | None = None) -> Path:
    """Export `fusion` (a FusionStack, eval mode, on CPU) to one self-contained ONNX file with dynamic axes.

    Returns the path. Exporter chatter is captured and only surfaced inside the error when the export fails.
    """
    import onnx
    import torch
    from torch.export import Dim

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stride = int(fusion.cfg.audio_stride)
    batch = Dim(BATCH, min=1)
    text = Dim(TEXT_LEN, min=1)
    audio_steps = Dim("audio_steps", min=1)
    visual = Dim(VISUAL_LEN, min=1)
    audio = audio_steps * stride if stride > 1 else audio_steps
    dynamic_shapes = (
        {0: batch, 1: text},
        {0: batch, 1: text},
        {0: batch, 1: audio},
        {0: batch, 1: audio},
        {0: batch, 1: visual},
        {0: batch, 1: visual},
    )
    module = graph_module(fusion)
    chatter = io.StringIO()
    # "torchvision is not installed. Skipping torchvision::nms" and similar notes are irrelevant here.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(chatter):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                tuple(example),
                str(path),
                dynamo=True,
                external_data=False,
                dynamic_shapes=dynamic_shapes,
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES),
                opset_version=OPSET,
                optimize=True,
                verbose=False,
            )
    except Exception as exc:  # the exporter's own message is long; keep its first lines and the chatter tail
        first = "\n".join(str(exc).strip().splitlines()[:12])
        raise RuntimeError(f"torch.onnx.export failed: {type(exc).__name__}: {first}\n"
                           f"{chatter.getvalue()[-2000:]}") from exc
    finally:
        registration.setLevel(level)

    model = onnx.load(str(path))
    _name_axes(model)
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(model, str(path))
    return path


def _name_axes(model: Any) -> None:
    """Give every symbolic dimension of the graph's inputs and outputs its manifest name.

    The exporter names the audio axis after the expression `2*audio_steps` and the outputs' batch axis after an
    internal symbol; both are renamed consistently everywhere in the graph (value_info included).
    """
    renames: dict[str, str] = {}
    axes_in = {
        "text_embeds": (BATCH, TEXT_LEN), "text_valid": (BATCH, TEXT_LEN),
        "audio": (BATCH, AUDIO_LEN), "audio_valid": (BATCH, AUDIO_LEN),
        "visual": (BATCH, VISUAL_LEN), "visual_valid": (BATCH, VISUAL_LEN),
    }
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        for i, wanted in enumerate(axes_in.get(value.name, ())):
            if dims[i].dim_param and dims[i].dim_param != wanted:
                renames[dims[i].dim_param] = wanted
    for value in model.graph.output:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].dim_param and dims[0].dim_param != BATCH:
            renames.setdefault(dims[0].dim_param, BATCH)
    if not renames:
        return
    for value in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]


def check_graph(path: str | Path, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> dict[str, Any]:
    """onnx.checker (full check, with shape inference) plus the graph's signature against the expected specs.

    Returns {"opset", "nodes", "ir_version"}; raises ValueError naming the first mismatch.
    """
    import onnx

    path = Path(path)
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    elem = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.BOOL: "bool", onnx.TensorProto.FLOAT16: "float16"}

    def signature(values: Any) -> list[tuple[str, str, tuple[str | int, ...]]]:
        sig = []
        for v in values:
            t = v.type.tensor_type
            dims = tuple(d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim)
            sig.append((v.name, elem.get(t.elem_type, str(t.elem_type)), dims))
        return sig

    for kind, got, want in (("input", signature(model.graph.input), inputs),
                            ("output", signature(model.graph.output), outputs)):
        expected = [(s.name, s.dtype, tuple(s.shape)) for s in want]
        if got != expected:
            raise ValueError(f"ONNX {kind}s do not match the expected signature:\n  got      {got}\n  expected "
                             f"{expected}")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"opset": opset, "ir_version": int(model.ir_version), "nodes": len(model.graph.node)}
