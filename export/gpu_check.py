"""Self-contained GPU check of the fusion engines: export, CUDA parity and timing -> one JSON file.

Made for a lent GPU machine, where the LLM backbone's weights cannot travel (a call carries at most 64 MiB): the
fusion stack is built from the default config with random weights and the SmolLM2 dimensions given directly
(`llm_hidden=576`, `embed_rms=0.12`), so only torch, onnx(script), onnxruntime and this repository are needed.
Latency and numerical parity of the graph do not depend on the weight values.

    bash export/gpu_check.sh                       # on the GPU machine; writes $OUT/gpu_check.json
    python -m export.gpu_check --out /tmp/gc --quick   # also runs on a CPU-only machine

What it measures (each part is skipped with a reason when its runtime is missing):
- parity vs PyTorch fp32 on the CPU: PyTorch on CUDA, onnxruntime on every available execution provider through
  `export.runner.FusionEngine` (TensorRT EP, CUDA EP with IO binding on CUDA tensors, CPU EP), and a standalone
  TensorRT fp16 engine when `tensorrt` imports;
- per-utterance latency (batch 1 at 2/5/8 s of audio, plus batch 8 at 5 s): median and p95 for each of those.
Inputs: synthetic features with the real features' scales, or real features saved beforehand on a machine with
the shared data (`--save-features build/gpu_check_features.npz`, then carry that file and pass `--features`).
Results are written after every part, so a run cut short still leaves what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

LLM_HIDDEN = 576  # SmolLM2-135M
EMBED_RMS = 0.12  # RMS of SmolLM2's input embeddings (measured: 0.1197)
LENGTHS_S = (2.0, 5.0, 8.0)


def _versions() -> dict[str, Any]:
    import importlib.metadata as md

    out: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("torch", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "tensorrt", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def _timeit(fn: Callable[[], Any], iters: int, warmup: int, sync: Callable[[], None] | None = None) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        samples.append((time.perf_counter() - start) * 1000.0)
    arr = np.array(samples)
    return {"median_ms": float(np.median(arr)), "p95_ms": float(np.percentile(arr, 95)), "mean_ms": float(arr.mean()),
            "iters": iters}


def _pad(items: list[dict[str, np.ndarray]], fusion_cfg: Any) -> dict[str, Any]:
    """Batch per-utterance arrays into padded tensors with masks (as egmf_core.batching.pad_media / EGMFModel.run_fusion
    do)."""
    import torch

    f = fusion_cfg
    b = len(items)
    tt = max([1] + [len(x["text_embeds"]) for x in items if "text_embeds" in x])
    ta = max([f.audio_stride] + [len(x["audio"]) - len(x["audio"]) % f.audio_stride for x in items if "audio" in x])
    tv = max([1] + [len(x["visual"]) for x in items if "visual" in x])
    out = {
        "text_embeds": np.zeros((b, tt, LLM_HIDDEN), np.float32), "text_valid": np.zeros((b, tt), bool),
        "audio": np.zeros((b, ta, f.audio_dim), np.float32), "audio_valid": np.zeros((b, ta), bool),
        "visual": np.zeros((b, tv, f.visual_dim), np.float32), "visual_valid": np.zeros((b, tv), bool),
    }
    for i, x in enumerate(items):
        if "text_embeds" in x:
            n = len(x["text_embeds"])
            out["text_embeds"][i, :n] = x["text_embeds"]
            out["text_valid"][i, :n] = True
        if "audio" in x:
            n = min(len(x["audio"]), ta)
            out["audio"][i, :n] = x["audio"][:n]
            out["audio_valid"][i, :n] = True
        if "visual" in x:
            n = len(x["visual"])
            out["visual"][i, :n] = x["visual"]
            out["visual_valid"][i, :n] = x.get("visual_valid", np.ones(n, bool))
    return {k: torch.from_numpy(v) for k, v in out.items()}


def cases_from_features(path: str | Path, fusion_cfg: Any) -> list[dict[str, Any]]:
    """Parity cases from a features file written by --save-features (real Whisper / face / token-embedding arrays)."""
    data = np.load(path, allow_pickle=False)
    clips: dict[str, dict[str, np.ndarray]] = {}
    for key in data.files:
        name, field = key.split("__", 1)
        clips.setdefault(name, {})[field] = data[key]
    names = sorted(clips)
    cases = [{"name": f"real_{n}", "inputs": _pad([clips[n]], fusion_cfg)} for n in names]
    for seconds in LENGTHS_S:
        crop = []
        for n in names:
            c = dict(clips[n])
            if "audio" in c:
                c["audio"] = c["audio"][: int(seconds * 50)]
            if "visual" in c:
                c["visual"], c["visual_valid"] = (c["visual"][: int(seconds * 10)],
                                                  c["visual_valid"][: int(seconds * 10)])
            crop.append(c)
        cases.append({"name": f"real_crop_{seconds:g}s_b{len(crop)}", "inputs": _pad(crop, fusion_cfg)})
    first = next((clips[n] for n in names if "text_embeds" in clips[n] and "audio" in clips[n]), clips[names[0]])
    if "text_embeds" in first:
        cases.append({"name": "real_text_only", "inputs": _pad([{"text_embeds": first["text_embeds"]}], fusion_cfg)})
    cases.append({"name": "real_no_text",
                  "inputs": _pad([{k: v for k, v in first.items() if k != "text_embeds"}], fusion_cfg)})
    return cases


def save_features(path: str | Path, data_dir: str | None = None) -> Path:
    """On a machine with ../shared/data and the backbone: real features of the parity clips -> one small .npz."""
    import torch

    from egmf_core.backbone import load_backbone
    from egmf_core.config import EGMFConfig

    from .parity import load_real_clips

    data = load_real_clips(data_dir)
    backbone = load_backbone(EGMFConfig().backbone)
    arrays = {}
    for name, clip in data.clips.items():
        ids = (backbone.tokenizer.encode(" " + clip.text + "\n", add_special_tokens=False)[:64]
               if clip.text.strip() else [])
        if ids:
            with torch.no_grad():
                arrays[f"{name}__text_embeds"] = (
                    backbone.model.get_input_embeddings()(torch.tensor(ids)).float().numpy())
        if clip.audio is not None:
            arrays[f"{name}__audio"] = clip.audio.astype(np.float32)
        if clip.visual is not None:
            arrays[f"{name}__visual"] = clip.visual.astype(np.float32)
            arrays[f"{name}__visual_valid"] = clip.visual_valid.astype(bool)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


class Results:
    def __init__(self, out: Path):
        self.out = out
        self.data: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "steps": {}}

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        print(f"[gpu_check] {name} ...", flush=True)
        start = time.perf_counter()
        try:
            value = fn()
            status = "ok"
        except Exception as exc:  # a part failing must not lose the others' numbers
            value = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=6)}
            status = "failed"
        elapsed = time.perf_counter() - start
        self.data["steps"][name] = {"status": status, "seconds": round(elapsed, 2)}
        print(f"[gpu_check] {name}: {status} in {elapsed:.1f} s", flush=True)
        if status == "failed":
            print(value["traceback"], flush=True)
        self.save()
        return value if status == "ok" else None

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.json").write_text(json.dumps(self.data, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "build/gpu_check"), help="folder for gpu_check.json ($OUT)")
    ap.add_argument("--quick", action="store_true", help="few timing iterations (CI / CPU smoke run)")
    ap.add_argument("--features", default=None, help=".npz from --save-features (real features); default synthetic")
    ap.add_argument("--save-features", default=None, metavar="NPZ",
                    help="write real features for a later GPU run and exit")
    ap.add_argument("--no-tensorrt", action="store_true",
                    help="skip the standalone TensorRT engine even if tensorrt imports")
    args = ap.parse_args(argv)
    if args.save_features:
        print(f"wrote {save_features(args.save_features)}")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="egmf_gpu_check_"))
    try:
        return _check(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check(args: argparse.Namespace, tmp: Path) -> int:

    import torch

    from egmf_core.config import EGMFConfig
    from egmf_core.fusion import FusionStack

    from . import parity as P
    from .onnx_export import INPUT_NAMES, OUTPUT_NAMES, example_inputs, export_fusion
    from .runner import CPU_EP, CUDA_EP, TRT_EP, FusionEngine, resolve_providers
    from .tensorrt_build import (ProfileConfig, TensorRTFusionEngine, build_engine, compute_profiles,
                                 ort_trt_provider_options, tensorrt_status)

    out = Path(args.out)
    res = Results(out)
    cuda = torch.cuda.is_available()
    import onnxruntime as ort

    trt_ok, trt_reason = tensorrt_status()
    res.data["environment"] = {
        "versions": _versions(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cuda_available": cuda, "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_capability": list(torch.cuda.get_device_capability(0)) if cuda else None,
        "torch_cuda": torch.version.cuda, "ort_available_providers": ort.get_available_providers(),
        "tensorrt": {"usable": trt_ok, "reason": trt_reason},
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32, "cudnn_tf32": torch.backends.cudnn.allow_tf32,
    }
    env = res.data["environment"]
    print(f"[gpu_check] torch {env['versions']['torch']}, cuda={cuda} {env['gpu'] or ''}, onnxruntime "
          f"{ort.__version__} providers {env['ort_available_providers']}, TensorRT: {trt_reason}", flush=True)
    res.save()

    cfg = EGMFConfig()
    torch.manual_seed(0)
    fusion = FusionStack(cfg.fusion, cfg.ablation, LLM_HIDDEN, EMBED_RMS).eval()
    onnx_path = tmp / "fusion.onnx"
    example = example_inputs(cfg.fusion, LLM_HIDDEN, EMBED_RMS)
    example_shape = P.case_shape({"inputs": dict(zip(INPUT_NAMES, example))})

    if res.step("export_onnx", lambda: export_fusion(fusion, onnx_path, example)) is None:
        return 1
    res.data["onnx_bytes"] = onnx_path.stat().st_size

    if args.features:
        cases = cases_from_features(args.features, cfg.fusion)
        res.data["inputs"] = f"real features from {args.features}"
    else:
        cases = P.random_cases(cfg.fusion, LLM_HIDDEN, EMBED_RMS)
        res.data["inputs"] = "synthetic features with real scales"
    P.torch_reference(fusion, cases)
    profiles = compute_profiles(cfg.fusion, LLM_HIDDEN, ProfileConfig())
    trt_options = {TRT_EP: ort_trt_provider_options(profiles, fp16=False, cache_dir=tmp / "trt_cache")}
    parity: dict[str, Any] = {}
    res.data["parity"] = parity
    engines: dict[str, Any] = {}

    def to(inputs: dict[str, Any], device: str) -> dict[str, Any]:
        return {k: v.to(device) for k, v in inputs.items()}

    if cuda:
        fusion_gpu = FusionStack(cfg.fusion, cfg.ablation, LLM_HIDDEN, EMBED_RMS)
        fusion_gpu.load_state_dict(fusion.state_dict())
        fusion_gpu = fusion_gpu.eval().cuda()

        def torch_cuda_run(inputs: dict[str, Any]) -> dict[str, np.ndarray]:
            with torch.no_grad():
                o = fusion_gpu(*[inputs[n].cuda() for n in INPUT_NAMES])
            return {k: getattr(o, k).float().cpu().numpy() for k in OUTPUT_NAMES}

        parity["torch_cuda_fp32"] = res.step(
            "parity_torch_cuda",
            lambda: P.run_parity(torch_cuda_run, cases, P.TOLERANCES["gpu_fp32"], "torch cuda fp32", example_shape))
    else:
        parity["torch_cuda_fp32"] = {"skipped": "no CUDA GPU visible to torch"}

    for provider in resolve_providers(None):
        def make(provider: str = provider) -> dict[str, Any]:
            engine = FusionEngine(onnx_path, cfg.fusion, LLM_HIDDEN, EMBED_RMS, providers=[provider],
                                  provider_options=trt_options)
            if engine.provider != provider:
                return {"fallback": f"requested {provider}, onnxruntime runs {engine.active_providers}"}
            engines[provider] = engine
            device = "cuda" if (engine.on_gpu and cuda) else "cpu"

            def run(inputs: dict[str, Any]) -> dict[str, np.ndarray]:
                o = engine(*[to(inputs, device)[n] for n in INPUT_NAMES])
                return {k: getattr(o, k).cpu().numpy() for k in OUTPUT_NAMES}

            tol = P.TOLERANCES["fp32"] if provider == CPU_EP else P.TOLERANCES["gpu_fp32"]
            report = P.run_parity(run, cases, tol, provider, example_shape)
            report["active_providers"] = engine.active_providers
            report["io_binding_device"] = device
            return report

        parity[provider] = res.step(f"parity_ort_{provider}", make)
    missing = [p for p in (TRT_EP, CUDA_EP) if p not in ort.get_available_providers()]
    if missing:
        parity["ort_not_available"] = {p: "not in this onnxruntime build (install onnxruntime-gpu)" for p in missing}

    trt_engine = None
    if trt_ok and not args.no_tensorrt:
        def build() -> dict[str, Any]:
            nonlocal trt_engine
            built = build_engine(onnx_path, tmp / "fusion.plan", profiles, fp16=True)
            trt_engine = TensorRTFusionEngine(tmp / "fusion.plan")
            in_profile = [c for c in cases if c["inputs"]["text_embeds"].shape[1] <= profiles["text_embeds"].max[1]]
            report = P.run_parity(lambda i: trt_engine(i), in_profile, P.TOLERANCES["fp16"], "tensorrt fp16 plan",
                                  example_shape)
            return {"build": built.to_dict(), "parity": report}

        parity["tensorrt_plan_fp16"] = res.step("tensorrt_plan_fp16", build)
    else:
        parity["tensorrt_plan_fp16"] = {"skipped": trt_reason if not trt_ok else "--no-tensorrt"}
    res.save()

    # -- timing ----------------------------------------------------------------------------------------------
    iters_gpu, iters_cpu, warm = (10, 5, 2) if args.quick else (200, 40, 10)
    lengths = {f"b1_{s:g}s": (1, s) for s in LENGTHS_S}
    lengths["b8_5s"] = (8, 5.0)
    timing: dict[str, Any] = {}
    res.data["timing"] = timing
    sync = torch.cuda.synchronize if cuda else None

    def bench() -> dict[str, Any]:
        for label, (b, seconds) in lengths.items():
            ta = int(seconds * cfg.fusion.audio_rate)
            tv = int(seconds * cfg.fusion.visual_rate)
            tt = int(3.5 * seconds) + 1
            g = torch.Generator().manual_seed(2)
            inputs = {
                "text_embeds": torch.randn(b, tt, LLM_HIDDEN, generator=g) * EMBED_RMS,
                "text_valid": torch.ones(b, tt, dtype=torch.bool),
                "audio": torch.randn(b, ta, cfg.fusion.audio_dim, generator=g) * 0.6,
                "audio_valid": torch.ones(b, ta, dtype=torch.bool),
                "visual": torch.rand(b, tv, cfg.fusion.visual_dim, generator=g) * 0.5,
                "visual_valid": torch.ones(b, tv, dtype=torch.bool),
            }
            row: dict[str, Any] = {"batch": b, "audio_seconds": seconds}
            args_cpu = [inputs[n] for n in INPUT_NAMES]
            with torch.no_grad():
                row["torch_cpu_fp32"] = _timeit(lambda: fusion(*args_cpu), iters_cpu, warm)
                if cuda:
                    args_gpu = [inputs[n].cuda() for n in INPUT_NAMES]
                    row["torch_cuda_fp32"] = _timeit(lambda: fusion_gpu(*args_gpu), iters_gpu, warm, sync)

                    def amp() -> Any:
                        with torch.autocast("cuda", dtype=torch.float16):
                            return fusion_gpu(*args_gpu)

                    row["torch_cuda_autocast_fp16"] = _timeit(amp, iters_gpu, warm, sync)
            for provider, engine in engines.items():
                device = "cuda" if (engine.on_gpu and cuda) else "cpu"
                dev_args = [inputs[n].to(device) for n in INPUT_NAMES]
                n = iters_gpu if engine.on_gpu else iters_cpu
                row[f"ort_{provider}"] = _timeit(lambda: engine(*dev_args), n, warm, sync if engine.on_gpu else None)
            if trt_engine is not None and tt <= profiles["text_embeds"].max[1] and b <= profiles["audio"].max[0]:
                gpu_inputs = {k: v.cuda() for k, v in inputs.items()}
                row["tensorrt_plan_fp16"] = _timeit(lambda: trt_engine(gpu_inputs), iters_gpu, warm, sync)
            timing[label] = row
            summary = ", ".join(f"{k} {v['median_ms']:.2f} ms" for k, v in row.items() if isinstance(v, dict))
            print(f"[gpu_check]   {label}: {summary}", flush=True)
            res.save()
        return timing

    res.step("timing", bench)
    failed = [name for name, step in res.data["steps"].items() if step["status"] != "ok"]
    bad_parity = [name for name, rep in parity.items() if isinstance(rep, dict) and rep.get("passed") is False]
    bad_parity += [f"{name}.parity" for name, rep in parity.items()
                   if isinstance(rep, dict) and isinstance(rep.get("parity"), dict)
                   and rep["parity"].get("passed") is False]
    res.data["ok"] = not failed and not bad_parity
    res.data["failed_steps"], res.data["parity_failures"] = failed, bad_parity
    res.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    res.save()
    for name, rep in parity.items():
        if isinstance(rep, dict) and "worst" in rep:
            print("[gpu_check] " + P.summary_line(rep) + ("" if rep["passed"] else "  FAILED"), flush=True)
    print(f"[gpu_check] {'OK' if res.data['ok'] else 'PROBLEMS: ' + ', '.join(failed + bad_parity)}; results in "
          f"{out / 'gpu_check.json'}",
          flush=True)
    return 0 if res.data["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
