"""The export itself: every step of `python -m export`, from loading the checkpoint to writing the manifest.

The engines folder is built in a staging folder next to `--out` and only moved into place when every step passed, so
a failed export never leaves a half-written engines folder for the service to pick up.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import shutil
from pathlib import Path
from typing import Any

from . import ENGINE_FORMAT_VERSION
from .progress import ExportError, Progress

__all__ = ["run_export"]


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file() and not force:
        raise ExportError(f"--out {out} is not empty and holds no manifest.json: refusing to replace it (use --force)")


def _make_staging(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    return staging


def _install(staging: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def run_export(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """All steps; returns the manifest. Raises StepFailed; the staging folder never outlives a failure."""
    out = Path(args.out)
    staging: Path | None = None
    try:
        with progress.step("load checkpoint") as r:
            _check_out(out, args.force)
            from .tensorrt_build import ProfileConfig

            ProfileConfig(max_batch=args.max_batch, opt_seconds=args.opt_seconds,
                          max_seconds=args.max_seconds).validate()
            if args.checkpoint != "default" and not Path(args.checkpoint).is_file():  # fail before the heavy imports
                raise ExportError(f"checkpoint not found: {args.checkpoint}")
            import torch

            from egmf_core.checkpoint import load_checkpoint, read_metadata, resolve

            from .manifest import sha256_file

            ckpt_path = resolve(args.checkpoint)
            ckpt_sha = sha256_file(ckpt_path)
            cfg, extra = read_metadata(ckpt_path)
            torch.manual_seed(0)
            model = load_checkpoint(ckpt_path, overrides={"backbone": {"device": "cpu", "dtype": "float32"}})
            fusion = model.fusion.eval()
            llm_hidden, embed_rms = int(fusion.llm_hidden), float(fusion.embed_rms)
            staging = _make_staging(out)
            r["detail"] = (f"{ckpt_path} (sha256 {ckpt_sha[:12]}), backbone {cfg.backbone.name}, d_llm {llm_hidden}, "
                           f"fusion {sum(p.numel() for p in fusion.parameters()) / 1e6:.2f} M params")
        return _run_after_load(args, progress, staging, out, model, cfg, extra, ckpt_path, ckpt_sha, llm_hidden,
                               embed_rms)
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise


def _run_after_load(args, progress, staging, out, model, cfg, extra, ckpt_path, ckpt_sha, llm_hidden, embed_rms):
    import onnxruntime as ort

    from . import parity as P
    from .manifest import file_table, versions
    from .onnx_export import example_inputs, export_fusion, io_spec, check_graph
    from .runner import CPU_EP, TRT_EP, FusionEngine, resolve_providers
    from .tensorrt_build import (ProfileConfig, TensorRTFusionEngine, build_engine, compute_profiles,
                                 ort_trt_provider_options, profiles_to_dict, tensorrt_status)

    fusion = model.fusion
    inputs_spec, outputs_spec = io_spec(cfg.fusion, llm_hidden)
    onnx_path = staging / "fusion.onnx"

    with progress.step("export ONNX graph of the fusion stack") as r:
        example = example_inputs(cfg.fusion, llm_hidden, embed_rms)
        example_shape = P.case_shape({"inputs": dict(zip(P.INPUT_NAMES, example))})
        export_fusion(fusion, onnx_path, example, metadata={
            "egmf.checkpoint_sha256": ckpt_sha, "egmf.config": json.dumps(cfg.to_dict()),
            "egmf.format_version": ENGINE_FORMAT_VERSION})
        r["detail"] = f"{onnx_path.name} ({onnx_path.stat().st_size / 1e6:.1f} MB), traced at {example_shape}"

    with progress.step("check ONNX graph") as r:
        graph_info = check_graph(onnx_path, inputs_spec, outputs_spec)
        r["detail"] = (f"onnx.checker ok, opset {graph_info['opset']}, {graph_info['nodes']} nodes, inputs "
                       + ", ".join(f"{s.name}{tuple(s.shape)}:{s.dtype}" for s in inputs_spec))

    profile_cfg = ProfileConfig(max_batch=args.max_batch, opt_seconds=args.opt_seconds, max_seconds=args.max_seconds)
    profiles = compute_profiles(cfg.fusion, llm_hidden, profile_cfg)

    with progress.step("parity onnxruntime vs PyTorch") as r:
        if args.parity_inputs == "real":
            data = P.load_real_clips(args.data_dir)
            cases = P.fusion_tensors(model, P.real_cases(model, data))
            data_info = {"inputs": "real", "data_dir": data.data_dir, "sources": data.sources,
                         "meld_dev_dialogue": data.meld_dialogue,
                         "clip_seconds": {k: round(c.seconds, 2) for k, c in data.clips.items()}}
        else:
            data = None
            cases = P.random_cases(cfg.fusion, llm_hidden, embed_rms)
            P.torch_reference(fusion, cases)
            data_info = {"inputs": "random (synthetic features; --parity-inputs random)"}
        requested = [p.strip() for p in args.providers.split(",")] if args.providers else None
        providers = resolve_providers(requested)
        tol32 = P.TOLERANCES["fp32"]
        if args.rtol is not None or args.atol is not None:
            tol32 = P.Tolerance(atol=tol32.atol if args.atol is None else args.atol,
                                rtol=tol32.rtol if args.rtol is None else args.rtol)
        reports, tested = [], []
        for provider in providers:
            options = {TRT_EP: ort_trt_provider_options(profiles, args.fp16, staging / "trt_cache")}
            engine = FusionEngine(onnx_path, cfg.fusion, llm_hidden, embed_rms, providers=[provider],
                                  provider_options=options)
            active = engine.active_providers
            if engine.provider != provider:
                tested.append({"provider": provider, "active_providers": active, "passed": None,
                               "note": f"onnxruntime fell back to {engine.provider}; not counted as tested"})
                continue
            tol = tol32 if provider == CPU_EP else (P.TOLERANCES["fp16"] if provider == TRT_EP and args.fp16
                                                    else P.TOLERANCES["gpu_fp32"])

            def run(inputs, engine=engine):
                out = engine(*[inputs[n] for n in P.INPUT_NAMES])
                return {k: getattr(out, k).detach().cpu().numpy() for k in P.OUTPUT_NAMES}

            report = P.run_parity(run, cases, tol, provider, example_shape)
            report["active_providers"] = active
            reports.append(report)
            tested.append({"provider": provider, "active_providers": active, "passed": report["passed"]})
            progress.note("      " + P.summary_line(report))
        failed = [rep for rep in reports if not rep["passed"]]
        if failed:
            lines = [f"{rep['engine']}: {f}" for rep in failed for f in rep["failures"][:5]]
            raise P.ParityError("outputs differ from PyTorch above tolerance:\n  " + "\n  ".join(lines))
        if not reports:
            raise ExportError(f"no execution provider could be tested (requested {providers})")
        unseen = sum(c["unseen_at_export"] for c in reports[0]["cases"])
        r["detail"] = (f"{len(cases)} cases ({unseen} with shapes not seen at export) on "
                       + ", ".join(t["provider"] for t in tested if t["passed"])
                       + f", {data_info['inputs'].split()[0]} inputs")

    trt_info: dict[str, Any] = {"requested": bool(args.tensorrt), "fp16": bool(args.fp16), "built": False,
                                "profile_config": dataclasses.asdict(profile_cfg),
                                "profiles": profiles_to_dict(profiles)}
    with progress.step("TensorRT engine") as r:
        if not args.tensorrt:
            r["status"], r["detail"] = "skipped", "not requested (pass --tensorrt on a machine with TensorRT and a GPU)"
            trt_info["reason"] = "not requested"
        else:
            usable, reason = tensorrt_status()
            if not usable:
                r["status"] = "skipped"
                r["detail"] = f"{reason}. Continuing with the ONNX graph (onnxruntime CUDA/CPU EP)"
                trt_info["reason"] = reason
            else:
                built = build_engine(onnx_path, staging / "fusion.plan", profiles, fp16=args.fp16)
                trt_engine = TensorRTFusionEngine(staging / "fusion.plan")
                tol = P.TOLERANCES["fp16" if args.fp16 else "gpu_fp32"]
                in_profile = [c for c in cases if all(
                    profiles[n].min[1] <= c["inputs"][n].shape[1] <= profiles[n].max[1]
                    and c["inputs"][n].shape[0] <= profiles[n].max[0] for n in P.INPUT_NAMES)]
                report = P.run_parity(lambda i: trt_engine({k: v for k, v in i.items()}), in_profile, tol,
                                      "TensorRT fusion.plan", example_shape)
                trt_info.update(built=True, reason=reason, engine=built.to_dict(), parity=report)
                progress.note("      " + P.summary_line(report))
                if not report["passed"]:
                    raise P.ParityError("TensorRT engine differs from PyTorch: " + "; ".join(report["failures"][:5]))
                r["detail"] = (f"fusion.plan ({built.bytes / 1e6:.1f} MB, fp16={args.fp16}) built in "
                               f"{built.seconds:.1f} s")

    llm_info: dict[str, Any] | None = None
    with progress.step("merge LoRA into the LLM") as r:
        if args.skip_llm:
            r["status"], r["detail"] = "skipped", "--skip-llm"
        else:
            from .llm import save_merged

            merge = save_merged(model, staging / "llm")
            llm_info = {"folder": "llm", **merge}
            size = sum(p.stat().st_size for p in (staging / "llm").rglob("*") if p.is_file())
            r["detail"] = (f"llm/ ({size / 1e6:.0f} MB, {merge['architecture']}, {merge['dtype']}), "
                           f"LoRA update norm {merge['lora_delta_fro_norm']:.3g}")
            if merge["lora_merged"] and merge["lora_delta_fro_norm"] == 0.0:
                r["detail"] += " (untrained adapter: merge is exact by construction)"

    with progress.step("check merged LLM vs unmerged") as r:
        if args.skip_llm:
            r["status"], r["detail"] = "skipped", "--skip-llm"
        else:
            from .llm import check_merged

            prompts = P.llm_prompts(model, data) if data is not None else P.synthetic_prompts(model)
            check = check_merged(model, staging / "llm", prompts)
            llm_info["check"] = check
            if not check["passed"]:
                raise P.ParityError("merged LLM differs from the LoRA model: " + "; ".join(check["failures"]))
            kind = "real-feature" if data is not None else "synthetic-feature"
            r["detail"] = (f"{check['prompts']} {kind} prompts with pseudo tokens, {check['positions_compared']} "
                           f"positions: logits max abs {check['max_abs']:.2g} ({check['rel_to_scale']:.2g} of scale "
                           f"{check['logit_scale']:.1f}), label probs {check['label_prob_max_abs']:.2g}; LoRA moves "
                           f"logits by {check['lora_effect_max_abs']:.2g}")

    with progress.step("write manifest") as r:
        import torch

        manifest = {
            "format": "egmf-engines",
            "format_version": ENGINE_FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": "python -m export " + " ".join(args.argv),
            "versions": versions(),
            "model": {"checkpoint": str(ckpt_path), "checkpoint_sha256": ckpt_sha, "checkpoint_extra": extra,
                      "backbone": cfg.backbone.name, "config": cfg.to_dict()},
            "fusion": {
                "file": "fusion.onnx", "exporter": f"torch.onnx.export(dynamo=True) torch {torch.__version__}",
                **graph_info, "llm_hidden": llm_hidden, "embed_rms": embed_rms,
                "inputs": [s.to_dict() for s in inputs_spec], "outputs": [s.to_dict() for s in outputs_spec],
                "axes": {"batch": "utterances per call",
                         "text_len": f"1..{cfg.fusion.max_text_tokens} utterance tokens",
                         "audio_len": f"audio frames at {cfg.fusion.audio_rate:g} Hz, a multiple of "
                                      f"{cfg.fusion.audio_stride}",
                         "visual_len": f"video frames at {cfg.fusion.visual_rate:g} Hz"},
                "onnxruntime_feed": "masks as numpy bool arrays (tensor(bool)), features as float32; "
                                    "export.runner.FusionEngine does this from torch tensors",
                "export_example_shape": example_shape,
            },
            "parity": {**data_info, "reports": reports},
            "execution_providers_available": ort.get_available_providers(),
            "execution_providers_tested": tested,
            "tensorrt": trt_info,
            "llm": llm_info,
            "timings_s": progress.timings,
        }
        shutil.rmtree(staging / "trt_cache", ignore_errors=True)
        manifest["files"] = file_table(staging)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _install(staging, out)
        r["detail"] = f"{out}/manifest.json ({len(manifest['files'])} files hashed)"
    return manifest
