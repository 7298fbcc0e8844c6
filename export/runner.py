"""Runtime side of the engines folder: an onnxruntime fusion engine that stands in for `FusionStack`.

`FusionEngine` is called exactly like `egmf_core.fusion.FusionStack` (same six tensors) and returns the same
`FusionOutput`, so `EGMFModel` needs no change to use it. Execution providers are tried in the order
TensorRT EP -> CUDA EP -> CPU EP (only those this onnxruntime build offers); the provider that is actually active
is read back with `session.get_providers()` (onnxruntime-gpu silently falls back to CPU when CUDA is unusable) and
logged, and a fallback is logged as a warning.

Integration hook (the smallest one): `use_engines(model, "engines/")` replaces `model.fusion` by a `FusionEngine`
and, when `engines/llm/` exists, `model.llm` by the LoRA-merged LLM. `load_engine_model("engines/")` builds an
inference-only `EGMFModel` from the folder alone (no checkpoint, no backbone cache). A model on engines is for
inference: it has no trainable fusion weights and `save_checkpoint` does not apply to it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from egmf_core.config import EGMFConfig, FusionConfig
from egmf_core.fusion import FusionOutput

from . import ENGINE_FORMAT_VERSION
from .onnx_export import INPUT_NAMES, OUTPUT_NAMES

log = logging.getLogger(__name__)

TRT_EP, CUDA_EP, CPU_EP = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
PROVIDER_ORDER: tuple[str, ...] = (TRT_EP, CUDA_EP, CPU_EP)
_ALIASES = {"tensorrt": TRT_EP, "trt": TRT_EP, "cuda": CUDA_EP, "cpu": CPU_EP}
_TORCH_TO_NP = {torch.float32: np.float32, torch.bool: np.bool_}


class EngineError(RuntimeError):
    """The engines folder is missing, incomplete, or does not match the model or the inputs."""


def read_manifest(engines_dir: str | Path) -> dict[str, Any]:
    path = Path(engines_dir) / "manifest.json"
    if not path.is_file():
        raise EngineError(f"{path} not found: build the engines first with `python -m export --checkpoint ... --out "
                          f"{engines_dir}`")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != "egmf-engines":
        raise EngineError(f"{path} is not an EGMF engines manifest")
    if manifest.get("format_version") != ENGINE_FORMAT_VERSION:
        raise EngineError(
            f"{path}: engines format {manifest.get('format_version')} is not supported (expected "
            f"{ENGINE_FORMAT_VERSION}); re-export"
        )
    return manifest


def resolve_providers(requested: Sequence[str] | None = None) -> list[str]:
    """The providers to ask for, best first: `requested` (names or aliases cpu/cuda/tensorrt) or the default
    order, restricted to what this onnxruntime build offers. CPU is always last as the fallback."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    wanted = [_ALIASES.get(p.lower(), p) for p in requested] if requested else list(PROVIDER_ORDER)
    unknown = [p for p in wanted if p not in PROVIDER_ORDER]
    if unknown:
        raise EngineError(f"unknown execution provider(s) {unknown}; choose from cpu, cuda, tensorrt")
    chosen = [p for p in wanted if p in available]
    if not requested and CPU_EP not in chosen:
        chosen.append(CPU_EP)
    if not chosen:
        raise EngineError(f"none of the requested providers {wanted} is available in this onnxruntime build "
                          f"({sorted(available)})")
    return chosen


class FusionEngine(nn.Module):
    """The fusion graph on onnxruntime, with `FusionStack`'s call signature and output type.

    It is an `nn.Module` only so that it can be assigned to `EGMFModel.fusion` (a registered submodule) and follow
    `.to(device)`; it holds no parameters, only the `embed_rms` buffer that `EGMFModel.device` reads.
    `threads` sets onnxruntime's intra-op threads (default: its own choice); `spin=False` (default) stops its CPU
    threads from busy-waiting between calls. Inputs are bound zero-copy with onnxruntime's IO binding, on the GPU when
    the active provider is CUDA/TensorRT and the tensors live there, else in host memory; outputs come back on the
    inputs' device.
    """

    def __init__(
        self,
        onnx_path: str | Path,
        fusion_cfg: FusionConfig,
        llm_hidden: int,
        embed_rms: float,
        providers: Sequence[str] | None = None,
        provider_options: dict[str, dict[str, str]] | None = None,
        threads: int | None = None,
        spin: bool = False,
    ):
        super().__init__()
        import onnxruntime as ort

        self.cfg = fusion_cfg
        self.llm_hidden = int(llm_hidden)
        self.register_buffer("embed_rms", torch.tensor(float(embed_rms)), persistent=False)
        self.onnx_path = Path(onnx_path)
        if not self.onnx_path.is_file():
            raise EngineError(f"fusion graph {self.onnx_path} not found")
        self.requested = resolve_providers(providers)
        options = provider_options or {}
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        # onnxruntime's CPU worker threads busy-wait after each run by default. On a small CPU machine that steals
        # the cores the next stage needs (the LLM forward right after the fusion stack, the speech recognizer):
        # a PyTorch call right after a spinning session ran ~6x slower here (2 cores). Off unless asked for.
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.session = ort.InferenceSession(
            str(self.onnx_path), so, providers=[(p, options.get(p, {})) for p in self.requested]
        )
        self.active_providers = list(self.session.get_providers())
        self.provider = self.active_providers[0]
        names_in = [i.name for i in self.session.get_inputs()]
        names_out = [o.name for o in self.session.get_outputs()]
        if names_in != list(INPUT_NAMES) or names_out != list(OUTPUT_NAMES):
            raise EngineError(f"{self.onnx_path}: unexpected graph signature {names_in} -> {names_out}")
        if self.provider != self.requested[0]:
            log.warning(
                "fusion engine: requested %s but onnxruntime runs %s (fallback; check the CUDA/TensorRT libraries)",
                self.requested[0], self.provider,
            )
        log.info("fusion engine %s: active execution provider %s (session providers %s)",
                 self.onnx_path.name, self.provider, self.active_providers)

    @classmethod
    def from_dir(cls, engines_dir: str | Path, providers: Sequence[str] | None = None, threads: int | None = None,
                 manifest: dict[str, Any] | None = None) -> "FusionEngine":
        engines_dir = Path(engines_dir)
        manifest = manifest or read_manifest(engines_dir)
        graph = manifest["fusion"]
        cfg = EGMFConfig.from_dict(manifest["model"]["config"])
        options: dict[str, dict[str, str]] = {}
        trt = manifest.get("tensorrt") or {}
        if trt.get("profiles"):
            from .tensorrt_build import ort_trt_provider_options, profiles_from_dict

            options[TRT_EP] = ort_trt_provider_options(
                profiles_from_dict(trt["profiles"]), bool(trt.get("fp16")), engines_dir / "trt_cache"
            )
        return cls(engines_dir / graph["file"], cfg.fusion, graph["llm_hidden"], graph["embed_rms"],
                   providers=providers, provider_options=options, threads=threads)

    @property
    def on_gpu(self) -> bool:
        return self.provider in (CUDA_EP, TRT_EP)

    # -- the FusionStack interface ----------------------------------------------------------------------------
    def forward(
        self,
        text_embeds: torch.Tensor,
        text_valid: torch.Tensor,
        audio: torch.Tensor,
        audio_valid: torch.Tensor,
        visual: torch.Tensor,
        visual_valid: torch.Tensor,
    ) -> FusionOutput:
        feeds = self._prepare(text_embeds, text_valid, audio, audio_valid, visual, visual_valid)
        out_device = text_embeds.device
        bind_device = out_device if (out_device.type == "cuda" and self.on_gpu) else torch.device("cpu")
        feeds = {k: v.to(bind_device).contiguous() for k, v in feeds.items()}
        b = feeds["text_embeds"].shape[0]
        f = self.cfg
        shapes = {
            "pseudo_tokens": (b, f.pseudo_tokens, self.llm_hidden),
            "alpha": (b, 3),
            "expert_outputs": (b, 3, f.hidden),
            "fused": (b, f.hidden),
        }
        outputs = {n: torch.empty(shapes[n], dtype=torch.float32, device=bind_device) for n in OUTPUT_NAMES}
        binding = self.session.io_binding()
        dev_type = "cuda" if bind_device.type == "cuda" else "cpu"
        dev_id = bind_device.index or 0
        for name, t in feeds.items():
            binding.bind_input(name, dev_type, dev_id, _TORCH_TO_NP[t.dtype], tuple(t.shape), t.data_ptr())
        for name, t in outputs.items():
            binding.bind_output(name, dev_type, dev_id, np.float32, tuple(t.shape), t.data_ptr())
        if bind_device.type == "cuda":
            torch.cuda.current_stream(bind_device).synchronize()  # inputs written on torch's stream
        self.session.run_with_iobinding(binding)
        outputs = {k: v.to(out_device) for k, v in outputs.items()}
        return FusionOutput(
            pseudo_tokens=outputs["pseudo_tokens"].to(text_embeds.dtype),
            alpha=outputs["alpha"],
            expert_outputs=outputs["expert_outputs"],
            fused=outputs["fused"],
        )

    def run_numpy(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Plain `session.run` on numpy inputs (already in the graph's dtypes and shapes)."""
        return dict(zip(OUTPUT_NAMES, self.session.run(list(OUTPUT_NAMES), feeds)))

    def _prepare(self, text_embeds, text_valid, audio, audio_valid, visual, visual_valid) -> dict[str, torch.Tensor]:
        """Check shapes, cast dtypes and give the time axes the lengths the graph accepts, with FusionStack's
        semantics: trailing audio frames beyond a multiple of the stride are ignored (as its strided conv does), and
        an empty axis becomes one masked position (a masked position contributes nothing)."""
        f = self.cfg
        b = text_embeds.shape[0] if text_embeds.ndim == 3 else -1
        expect = {
            "text_embeds": (text_embeds, 3, self.llm_hidden), "audio": (audio, 3, f.audio_dim),
            "visual": (visual, 3, f.visual_dim), "text_valid": (text_valid, 2, None),
            "audio_valid": (audio_valid, 2, None), "visual_valid": (visual_valid, 2, None),
        }
        for name, (t, ndim, last) in expect.items():
            if (not isinstance(t, torch.Tensor) or t.ndim != ndim or t.shape[0] != b
                    or (last is not None and t.shape[-1] != last)):
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                want = f"(batch={b}, time{', ' + str(last) if last is not None else ''})"
                raise EngineError(f"fusion engine input {name}: expected shape {want}, got {shape}")
        for feat, mask, name in ((text_embeds, text_valid, "text"), (audio, audio_valid, "audio"),
                                 (visual, visual_valid, "visual")):
            if feat.shape[1] != mask.shape[1]:
                raise EngineError(f"fusion engine: {name} has {feat.shape[1]} frames but its mask {mask.shape[1]}")
        s = int(f.audio_stride)
        ta = audio.shape[1] - audio.shape[1] % s
        audio, audio_valid = audio[:, :ta], audio_valid[:, :ta]
        feeds = {
            "text_embeds": _at_least(text_embeds.float(), 1), "text_valid": _at_least(text_valid.bool(), 1),
            "audio": _at_least(audio.float(), s), "audio_valid": _at_least(audio_valid.bool(), s),
            "visual": _at_least(visual.float(), 1), "visual_valid": _at_least(visual_valid.bool(), 1),
        }
        return feeds

    def extra_repr(self) -> str:
        return f"onnx={self.onnx_path}, provider={self.provider}"


def _at_least(t: torch.Tensor, n: int) -> torch.Tensor:
    """Pad the time axis (dim 1) with zeros (= masked for bool masks) up to length n."""
    if t.shape[1] >= n:
        return t
    pad = torch.zeros((t.shape[0], n - t.shape[1], *t.shape[2:]), dtype=t.dtype, device=t.device)
    return torch.cat([t, pad], dim=1)


# -- hooking engines into EGMFModel ------------------------------------------------------------------------------
def _check_compatible(model: Any, manifest: dict[str, Any]) -> None:
    mine = model.cfg.to_dict()
    theirs = manifest["model"]["config"]
    for section in ("fusion", "ablation"):
        if mine[section] != theirs[section]:
            raise EngineError(
                f"the engines were exported from a checkpoint whose config.{section} differs from the model's "
                f"({theirs[section]} vs {mine[section]}): re-export them from the model's checkpoint"
            )
    if mine["backbone"]["name"] != theirs["backbone"]["name"]:
        raise EngineError(f"engines built for backbone {theirs['backbone']['name']!r}, model uses "
                          f"{mine['backbone']['name']!r}")
    hidden = model.llm.get_input_embeddings().weight.shape[1]
    if hidden != manifest["fusion"]["llm_hidden"]:
        raise EngineError(f"engines built for LLM hidden size {manifest['fusion']['llm_hidden']}, model has {hidden}")


def use_engines(
    model: Any,
    engines_dir: str | Path,
    providers: Sequence[str] | None = None,
    load_llm: bool = True,
    checkpoint: str | Path | None = None,
    threads: int | None = None,
    verify_hashes: bool = False,
) -> FusionEngine:
    """Switch a loaded `EGMFModel` to the engines in `engines_dir` (in place) and return the fusion engine.

    - `model.fusion` becomes a `FusionEngine` (TensorRT EP -> CUDA EP -> CPU EP, or `providers`);
    - with `load_llm` and `engines_dir/llm/` present, `model.llm` becomes the LoRA-merged LLM (same outputs as
      the LoRA model without the adapter indirection), loaded in the model's dtype on the model's device;
    - `checkpoint` (optional): verify the engines were exported from exactly this checkpoint file (sha256);
    - `verify_hashes`: re-hash every file against the manifest (about a second for SmolLM2's 540 MB).
    The config sections that shape the fusion graph must match the manifest's, else EngineError.
    """
    engines_dir = Path(engines_dir)
    manifest = read_manifest(engines_dir)
    _check_compatible(model, manifest)
    if checkpoint is not None:
        from egmf_core.checkpoint import resolve

        from .manifest import sha256_file

        digest = sha256_file(resolve(checkpoint))
        if digest != manifest["model"]["checkpoint_sha256"]:
            raise EngineError(
                f"engines in {engines_dir} were exported from checkpoint sha256 "
                f"{manifest['model']['checkpoint_sha256'][:12]}..., not from {checkpoint} ({digest[:12]}...): re-export"
            )
    if verify_hashes:
        from .manifest import verify_files

        bad = verify_files(engines_dir, manifest)
        if bad:
            raise EngineError(f"engines in {engines_dir}: {bad} changed since the export (hash mismatch or missing)")
    device = model.device
    engine = FusionEngine.from_dir(engines_dir, providers=providers, threads=threads, manifest=manifest).to(device)
    model.fusion = engine
    llm_dir = engines_dir / "llm"
    if load_llm and (llm_dir / "config.json").is_file():
        dtype = next(model.llm.parameters()).dtype
        model.llm = _load_llm(llm_dir, dtype, device)
        log.info("LLM: LoRA-merged model from %s (%s on %s)", llm_dir, str(dtype).replace("torch.", ""), device)
    return engine


def _load_llm(folder: Path, dtype: torch.dtype, device: torch.device | str) -> nn.Module:
    from transformers import AutoModelForCausalLM

    llm = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).to(device)
    llm.eval()
    for p in llm.parameters():
        p.requires_grad_(False)
    return llm


def load_engine_model(
    engines_dir: str | Path,
    device: str = "cpu",
    providers: Sequence[str] | None = None,
    dtype: str = "float32",
    threads: int | None = None,
) -> Any:
    """An inference-only `EGMFModel` built from the engines folder alone (merged LLM + fusion graph).

    Needs `engines_dir/llm/` (exported by default). The model's config is the checkpoint's, with LoRA marked
    disabled because its weights are already merged into the LLM.
    """
    from transformers import AutoTokenizer

    from egmf_core.backbone import TORCH_DTYPES, LoadedBackbone
    from egmf_core.model import EGMFModel

    engines_dir = Path(engines_dir)
    manifest = read_manifest(engines_dir)
    llm_dir = engines_dir / "llm"
    if not (llm_dir / "config.json").is_file():
        raise EngineError(f"{llm_dir} not found: export without --skip-llm to get the merged LLM")
    cfg_dict = json.loads(json.dumps(manifest["model"]["config"]))
    cfg_dict["lora"]["enabled"] = False
    cfg_dict["backbone"].update(device=device, dtype=dtype)
    cfg = EGMFConfig.from_dict(cfg_dict)
    tokenizer = AutoTokenizer.from_pretrained(str(llm_dir))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    llm = _load_llm(llm_dir, TORCH_DTYPES[dtype], device)
    graph = manifest["fusion"]
    backbone = LoadedBackbone(cfg.backbone.name, llm, tokenizer, graph["llm_hidden"], graph["embed_rms"])
    model = EGMFModel(cfg, backbone)
    model.fusion = FusionEngine.from_dir(engines_dir, providers=providers, threads=threads,
                                         manifest=manifest).to(device)
    model.eval()
    return model


def engines_preparer(engines_dir: str | Path) -> Callable[[Any, Path], str]:
    """For `EGMFPredictor.load(..., prepare=...)`: serve the checkpoint on the engines in `engines_dir`
    (`use_engines`); the model version gets `+engines-<provider>`, the execution provider that runs the fusion."""

    def prepare(model: Any, checkpoint: Path) -> str:
        return f"+engines-{use_engines(model, engines_dir, checkpoint=checkpoint).provider}"

    return prepare
