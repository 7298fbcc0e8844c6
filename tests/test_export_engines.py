"""`python -m export` end to end on a checkpoint with a non-trivial LoRA, and the engine runner against PyTorch.

One export (module fixture, ~40 s on 2 cores) feeds every test: ONNX graph + parity on real features, TensorRT
absence handling, merged LLM check, manifest; then the runner path (`use_engines`, `load_engine_model`) scores
real clips like the PyTorch model does.
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import numpy as np
import onnx
import pytest
import torch

from egmf_core.checkpoint import save_checkpoint
from egmf_core.config import EGMFConfig
from egmf_core.data import resolve_data_dir
from egmf_core.features import FaceFeatureExtractor, FeatureCache, WhisperFrontend, WhisperFrontendConfig
from egmf_core.model import EGMFModel
from egmf_core.model_io import ModelInput
from export import parity as P
from export.cli import main
from export.manifest import verify_files
from export.progress import STEPS, Progress, StepFailed
from export.runner import EngineError, FusionEngine, load_engine_model, read_manifest, use_engines

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
RAVDESS_CLIP = "ravdess/Actor_01/03-01-05-02-01-01-01.flac"  # angry, "Kids are talking by the door"
VIDEO_CLIP = "media/talking_heads/2.mp4"  # not one of the export's parity clips


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = EGMFModel.build(EGMFConfig()).eval()
    with torch.no_grad():  # LoRA B starts at zero: perturb it so that merging is a real change
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.005)
    ckpt = save_checkpoint(model, root / "ckpt.safetensors")
    out = root / "engines"
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(["--checkpoint", str(ckpt), "--out", str(out), "--tensorrt"])
    print(buf.getvalue())
    manifest = json.loads((out / "manifest.json").read_text()) if rc == 0 else {}
    yield SimpleNamespace(model=model, fusion=copy.deepcopy(model.fusion), ckpt=ckpt, out=out, rc=rc,
                          stdout=buf.getvalue(), manifest=manifest, root=root)
    shutil.rmtree(out / "llm", ignore_errors=True)  # 540 MB: do not leave it in pytest's kept temp folders


def test_export_succeeds_with_progress_per_step(built: SimpleNamespace) -> None:
    assert built.rc == 0, built.stdout
    for i, step in enumerate(STEPS, start=1):
        assert f"[{i}/{len(STEPS)}] {step}" in built.stdout
    timings = re.findall(r"^ {6}(ok|skipped) in (\d+\.\d) s", built.stdout, flags=re.M)
    assert len(timings) == len(STEPS)
    # No TensorRT here: said clearly, and the export went on.
    assert re.search(r"skipped in .*TensorRT .*(not installed|no CUDA GPU)", built.stdout)
    assert sorted(p.name for p in built.out.iterdir()) == ["fusion.onnx", "llm", "manifest.json"]
    assert not list(built.root.glob(".engines.partial-*"))


def test_onnx_graph_signature(built: SimpleNamespace) -> None:
    onnx.checker.check_model(str(built.out / "fusion.onnx"))
    graph = onnx.load(str(built.out / "fusion.onnx")).graph
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*graph.input, *graph.output]}
    assert dims == {
        "text_embeds": ["batch", "text_len", 576], "text_valid": ["batch", "text_len"],
        "audio": ["batch", "audio_len", 384], "audio_valid": ["batch", "audio_len"],
        "visual": ["batch", "visual_len", 58], "visual_valid": ["batch", "visual_len"],
        "pseudo_tokens": ["batch", 8, 576], "alpha": ["batch", 3], "expert_outputs": ["batch", 3, 256],
        "fused": ["batch", 256],
    }
    bools = {v.name for v in graph.input if v.type.tensor_type.elem_type == onnx.TensorProto.BOOL}
    assert bools == {"text_valid", "audio_valid", "visual_valid"}


def test_manifest_contents(built: SimpleNamespace) -> None:
    m = built.manifest
    assert m["format"] == "egmf-engines" and read_manifest(built.out)["format_version"] == m["format_version"]
    for lib in ("torch", "onnx", "onnxruntime", "transformers", "peft"):
        assert m["versions"][lib]
    assert m["model"]["config"] == built.model.cfg.to_dict()
    assert len(m["model"]["checkpoint_sha256"]) == 64
    assert [(s["name"], s["dtype"]) for s in m["fusion"]["inputs"]] == [
        ("text_embeds", "float32"), ("text_valid", "bool"), ("audio", "float32"), ("audio_valid", "bool"),
        ("visual", "float32"), ("visual_valid", "bool")]
    assert m["fusion"]["inputs"][2]["shape"] == ["batch", "audio_len", 384]
    assert [s["name"] for s in m["fusion"]["outputs"]] == ["pseudo_tokens", "alpha", "expert_outputs", "fused"]
    assert verify_files(built.out, m) == [] and "llm/model.safetensors" in m["files"] and "fusion.onnx" in m["files"]
    assert m["execution_providers_tested"][-1]["provider"] == "CPUExecutionProvider"
    assert m["execution_providers_tested"][-1]["active_providers"][0] == "CPUExecutionProvider"
    assert m["tensorrt"]["requested"] and not m["tensorrt"]["built"] and m["tensorrt"]["reason"]
    assert m["tensorrt"]["profiles"]["audio"]["max"] == [8, 1500, 384]


def test_parity_report_on_real_features(built: SimpleNamespace) -> None:
    par = built.manifest["parity"]
    assert par["inputs"] == "real" and any("ravdess" in s for s in par["sources"])
    assert any("talking_heads" in s for s in par["sources"]) and par["meld_dev_dialogue"] != ""
    report = par["reports"][-1]
    assert report["engine"] == "CPUExecutionProvider" and report["passed"]
    cases = {c["name"]: c for c in report["cases"]}
    assert len(cases) >= 10 and all(c["unseen_at_export"] for c in cases.values())
    assert len({c["audio_len"] for c in cases.values()}) >= 6  # several time lengths
    assert cases["long_30s_tiled"]["audio_len"] == 1500 and cases["tiny_2_frames"]["audio_len"] == 2
    assert cases["meld_text_only_b3"]["modalities_present"] == {"text": True, "audio": False, "video": False}
    assert cases["all_missing"]["modalities_present"] == {"text": False, "audio": False, "video": False}
    for out, worst in report["worst"].items():
        assert worst["max_abs"] < 1e-4 * worst["scale"] + 1e-6, (out, worst)
        assert set(worst) >= {"max_abs", "scale", "rel_to_scale", "max_rel", "case"}


def test_merged_llm_check(built: SimpleNamespace) -> None:
    llm = built.manifest["llm"]
    check = llm["check"]
    assert llm["lora_merged"] and llm["lora_delta_fro_norm"] > 0
    assert check["passed"] and check["same_label_argmax"] and check["prompts"] >= 3
    assert check["rel_to_scale"] < 1e-4 and check["label_prob_max_abs"] < 1e-3
    # The adapter changes the logits far more than merging perturbs them: the check is not vacuous.
    assert check["lora_effect_max_abs"] > 100 * check["max_abs"]
    assert (built.out / "llm" / "tokenizer.json").is_file() or (built.out / "llm" / "tokenizer_config.json").is_file()


def test_parity_failure_names_output_case_and_tolerance(built: SimpleNamespace) -> None:
    engine = FusionEngine.from_dir(built.out, providers=["cpu"])
    cases = P.random_cases(built.model.cfg.fusion, 576, float(built.fusion.embed_rms))[:2]
    P.torch_reference(built.fusion, cases)

    def run(inputs):
        out = engine(*[inputs[n] for n in P.INPUT_NAMES])
        return {k: getattr(out, k).numpy() for k in P.OUTPUT_NAMES}

    ok = P.run_parity(run, cases, P.TOLERANCES["fp32"], "cpu")
    assert ok["passed"] and not ok["failures"]
    strict = P.run_parity(run, cases, P.Tolerance(atol=0.0, rtol=0.0), "cpu")
    assert not strict["passed"]
    assert re.search(r"pseudo_tokens in case 'b1_2s' .* max abs error \S+ > tolerance 0", strict["failures"][0])
    progress = Progress(stream=io.StringIO())
    with pytest.raises(StepFailed) as info:
        with progress.step("parity onnxruntime vs PyTorch"):
            raise P.ParityError("; ".join(strict["failures"][:1]))
    assert info.value.expected and "Traceback" not in str(info.value)
    assert str(info.value).startswith("export failed at step 'parity onnxruntime vs PyTorch': pseudo_tokens in case")


def test_runner_matches_fusion_stack_on_edge_lengths(built: SimpleNamespace) -> None:
    engine = FusionEngine.from_dir(built.out, providers=["cpu"])
    assert engine.provider == "CPUExecutionProvider" and engine.active_providers[0] == "CPUExecutionProvider"
    g = torch.Generator().manual_seed(3)

    def inputs(tt: int, ta: int, tv: int) -> list[torch.Tensor]:
        return [torch.randn(2, tt, 576, generator=g) * 0.12, torch.ones(2, tt, dtype=torch.bool),
                torch.randn(2, ta, 384, generator=g), torch.ones(2, ta, dtype=torch.bool),
                torch.rand(2, tv, 58, generator=g), torch.ones(2, tv, dtype=torch.bool)]

    for tt, ta, tv in ((5, 101, 7), (0, 40, 3), (4, 40, 0)):  # odd audio length, empty text, empty video
        x = inputs(tt, ta, tv)
        with torch.no_grad():
            ref = built.fusion(*x)
        got = engine(*x)
        for k in P.OUTPUT_NAMES:
            assert torch.allclose(getattr(got, k), getattr(ref, k), atol=1e-5), (tt, ta, tv, k)
    # One audio frame (shorter than the stride): the same as no audio, where FusionStack itself cannot run.
    x = inputs(4, 1, 3)
    no_audio = list(x)
    no_audio[2], no_audio[3] = torch.zeros(2, 2, 384), torch.zeros(2, 2, dtype=torch.bool)
    with torch.no_grad():
        ref = built.fusion(*no_audio)
    assert torch.allclose(engine(*x).pseudo_tokens, ref.pseudo_tokens, atol=1e-5)
    bad = inputs(4, 10, 3)
    bad[2] = torch.zeros(2, 10, 80)
    with pytest.raises(EngineError, match=r"audio: expected shape \(batch=2, time, 384\), got \(2, 10, 80\)"):
        engine(*bad)


def _real_inputs(model: EGMFModel) -> list[ModelInput]:
    root = resolve_data_dir()
    cache = FeatureCache()
    whisper = WhisperFrontend(WhisperFrontendConfig(cpu_threads=2))
    angry = whisper.encoder_states_file(root / RAVDESS_CLIP, cache=cache)
    head_audio = whisper.encoder_states_file(root / VIDEO_CLIP, cache=cache)
    head_face = FaceFeatureExtractor().extract_file(root / VIDEO_CLIP, cache=cache)
    p = model.prompts
    context = (p.make_turn("Monica", "Okay, everybody relax."), p.make_turn("Joey", "I can't believe this!"))
    return [
        ModelInput(context=(), current=p.make_turn("Speaker", "Kids are talking by the door"), audio=angry),
        ModelInput(context=context, current=p.make_turn("Chandler", "This is so great, I love it!"), audio=head_audio,
                   visual=head_face.features, visual_valid=head_face.valid),
    ]


def test_real_clip_same_predictions_through_engines(built: SimpleNamespace, caplog: pytest.LogCaptureFixture) -> None:
    model = built.model
    batch = _real_inputs(model)
    ref = model.score(batch)
    with caplog.at_level("INFO", logger="export.runner"):
        engine = use_engines(model, built.out, checkpoint=built.ckpt, verify_hashes=True)
    assert isinstance(model.fusion, FusionEngine) and model.fusion is engine
    assert "active execution provider CPUExecutionProvider" in caplog.text and "LoRA-merged" in caplog.text
    assert type(model.llm).__name__ == "LlamaForCausalLM"  # the merged HF model, no peft wrapper
    got = model.score(batch)
    standalone = load_engine_model(built.out).score(batch)
    for r, g, s in zip(ref, got, standalone):
        assert r.emotion == g.emotion == s.emotion
        assert r.sentiment_score == g.sentiment_score == s.sentiment_score
        assert r.modalities == g.modalities
        for label, prob in r.emotion_probs.items():
            assert abs(prob - g.emotion_probs[label]) < 1e-4 and abs(prob - s.emotion_probs[label]) < 1e-4
        assert np.allclose(r.alpha, g.alpha, atol=1e-5)
        assert np.allclose(r.expert_outputs, g.expert_outputs, atol=1e-4)


def test_use_engines_refuses_mismatched_engines(built: SimpleNamespace, tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="exported from checkpoint sha256"):
        other = tmp_path / "other.safetensors"
        other.write_bytes(built.ckpt.read_bytes() + b" ")
        use_engines(built.model, built.out, checkpoint=other)
    manifest = json.loads((built.out / "manifest.json").read_text())
    manifest["model"]["config"]["fusion"]["hidden"] = 128
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineError, match=r"config\.fusion differs"):
        use_engines(built.model, tmp_path)
    with pytest.raises(EngineError, match="manifest.json not found"):
        use_engines(built.model, tmp_path / "nowhere")


def test_cli_failures_name_the_step_without_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "export", "--checkpoint", str(tmp_path / "missing.safetensors"),
                           "--out", str(tmp_path / "engines")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    assert "[1/8] load checkpoint" in proc.stdout
    assert "export failed at step 'load checkpoint': checkpoint not found" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "engines").exists() and not list(tmp_path.glob(".engines.partial-*"))
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("keep me")
    err = io.StringIO()
    from contextlib import redirect_stderr

    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        rc = main(["--checkpoint", "whatever", "--out", str(foreign)])
    assert rc == 1 and "refusing to replace it" in err.getvalue() and (foreign / "todo.txt").exists()
