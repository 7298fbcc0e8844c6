"""Parity inputs and error metrics: onnxruntime (or TensorRT) vs the PyTorch fusion stack.

Real inputs (`load_real_clips`): Whisper encoder states of RAVDESS clips and of the talking-head / MEAD videos'
soundtracks, FaceLandmarker features of those videos, their ASR transcripts, and MELD dialogue turns. The cases
(`real_cases`) are batches of `ModelInput`s, turned into fusion tensors by `EGMFModel.run_fusion` itself (so parity
covers exactly what serving feeds the graph): several utterance lengths (2 s crops to a 30 s tile, none equal to
the export example), padded mixed batches, and missing-modality masks (text only, no transcript, video only, lost
face frames, nothing at all).

Metrics per output: `max_abs` = max |onnx - torch|; `scale` = max |torch|; `rel_to_scale` = max_abs / scale;
`max_rel` = max |onnx - torch| / |torch| over elements with |torch| >= 1e-3 * scale (elementwise relative error is
meaningless near zero). An output passes when max_abs <= atol + rtol * scale.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .onnx_export import INPUT_NAMES, OUTPUT_NAMES

log = logging.getLogger(__name__)

RAVDESS_CLIPS = {
    "ravdess_angry": "ravdess/Actor_01/03-01-05-02-01-01-01.flac",
    "ravdess_happy": "ravdess/Actor_13/03-01-03-02-01-01-13.flac",
}
VIDEO_CLIPS = {
    "talking_head_1": "media/talking_heads/1.mp4",  # 6.1 s, speech + face
    "mead_disgusted": "media/mead/disgusted.mp4",  # 8.1 s, speech + face
}


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float

    def limit(self, scale: float) -> float:
        return self.atol + self.rtol * scale


# fp32 graph on the CPU EP: errors are float reassociation (~1e-7 of scale). GPU EPs may use TF32 matmuls.
TOLERANCES = {
    "fp32": Tolerance(atol=1e-6, rtol=1e-4),
    "gpu_fp32": Tolerance(atol=1e-5, rtol=5e-3),
    "fp16": Tolerance(atol=1e-3, rtol=5e-2),
}


class ParityError(AssertionError):
    """An output differs from PyTorch by more than the tolerance."""


# -- real data -------------------------------------------------------------------------------------------------
@dataclass
class Clip:
    name: str
    source: str
    text: str
    audio: np.ndarray | None = None  # (T, 384) Whisper encoder states, 50 Hz
    visual: np.ndarray | None = None  # (T, 58)
    visual_valid: np.ndarray | None = None  # (T,)

    @property
    def seconds(self) -> float:
        return 0.0 if self.audio is None else len(self.audio) / 50.0


@dataclass
class RealData:
    clips: dict[str, Clip]
    meld: list[tuple[str, str]]  # (speaker, text) turns of one MELD dev dialogue, in order
    data_dir: str
    meld_dialogue: str = ""
    sources: list[str] = field(default_factory=list)


def load_real_clips(data_dir: str | Path | None = None, use_cache: bool = True) -> RealData:
    """Extract real features once (Whisper encoder states + ASR text, face features) from ../shared/data.

    Encoder states and face features go through the project's FeatureCache, so a second export is fast.
    """
    from egmf_core.data import MeldDataset, group_dialogues, resolve_data_dir
    from egmf_core.data.meld import MeldConfig
    from egmf_core.features import (FaceFeatureExtractor, FeatureCache, WhisperFrontend, WhisperFrontendConfig,
                                    load_audio)

    root = resolve_data_dir(data_dir)
    cache = FeatureCache() if use_cache else None
    whisper = WhisperFrontend(WhisperFrontendConfig(cpu_threads=2))
    statements = {}
    with (root / "ravdess" / "labels.csv").open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            statements["ravdess/" + row["file"]] = row["statement"].strip()
    clips: dict[str, Clip] = {}
    for name, rel in RAVDESS_CLIPS.items():
        path = root / rel
        states = whisper.encoder_states_file(path, cache=cache)
        clips[name] = Clip(name, rel, statements.get(rel, ""), audio=states)
    faces = FaceFeatureExtractor()
    for name, rel in VIDEO_CLIPS.items():
        path = root / rel
        analysis = whisper.process(load_audio(path))  # transcript + states from one encoder pass
        visual = faces.extract_file(path, cache=cache)
        clips[name] = Clip(name, rel, analysis.text, audio=analysis.encoder_states,
                           visual=visual.features, visual_valid=visual.valid)
    meld: list[tuple[str, str]] = []
    dialogue_id = ""
    for dialogue in group_dialogues(MeldDataset("dev", MeldConfig(data_dir=str(root) if data_dir else None))):
        if len(dialogue) >= 4:
            meld = [(r.speaker, r.text) for r in dialogue[:4]]
            dialogue_id = dialogue[0].dialogue_id
            break
    return RealData(clips, meld, str(root), dialogue_id, [c.source for c in clips.values()] + ["meld/dev_sent_emo.csv"])


def _tile(arrays: Sequence[np.ndarray], frames: int) -> np.ndarray:
    joined = np.concatenate(list(arrays), axis=0)
    reps = math.ceil(frames / len(joined))
    return np.ascontiguousarray(np.concatenate([joined] * reps, axis=0)[:frames])


def real_cases(model: Any, data: RealData) -> list[tuple[str, list[Any]]]:
    """(case name, batch of ModelInput) covering lengths, padding and missing-modality masks."""
    from egmf_core.model_io import ModelInput

    p = model.prompts
    c = data.clips
    turn = p.make_turn
    ctx = [turn(s, t) for s, t in data.meld[:2]]

    def mi(text: str, audio=None, visual=None, visual_valid=None, speaker="Speaker", context=()) -> Any:
        return ModelInput(context=tuple(context), current=turn(speaker, text), audio=audio, visual=visual,
                          visual_valid=visual_valid)

    def av(clip: Clip, text: str | None = None, seconds: float | None = None, **kw) -> Any:
        a, v, vv = clip.audio, clip.visual, clip.visual_valid
        if seconds is not None:
            a = a[: int(seconds * 50)]
            if v is not None:
                v, vv = v[: int(seconds * 10)], vv[: int(seconds * 10)]
        return mi(clip.text if text is None else text, a, v, vv, **kw)

    th, mead, angry, happy = c["talking_head_1"], c["mead_disgusted"], c["ravdess_angry"], c["ravdess_happy"]
    lost = th.visual_valid.copy()
    lost[::3] = False
    long_audio = _tile([th.audio, mead.audio, angry.audio], 1500)
    long_visual = _tile([th.visual, mead.visual], 300)
    meld_turns = [mi(t, speaker=s) for s, t in data.meld[:3]]
    return [
        ("ravdess_audio_text_no_video", [av(angry)]),
        ("talking_head_all_modalities", [av(th)]),
        ("mead_8s_all_modalities", [av(mead)]),
        ("crop_2s_av", [av(th, seconds=2.0)]),
        ("crop_5s_av_text", [av(mead, seconds=5.0, context=ctx)]),
        ("meld_text_only_b3", meld_turns),
        ("mixed_batch4_padded", [av(happy), av(th), av(mead), meld_turns[0]]),
        ("no_transcript_av", [av(th, text="")]),
        ("face_lost_frames", [mi(th.text, th.audio, th.visual, lost)]),
        ("video_only", [mi("", visual=mead.visual, visual_valid=mead.visual_valid)]),
        ("audio_only_no_text", [mi("", audio=angry.audio)]),
        ("long_30s_tiled", [mi(th.text, long_audio, long_visual, np.ones(len(long_visual), bool))]),
        ("tiny_2_frames", [mi("Okay.", th.audio[:2], th.visual[:1], th.visual_valid[:1])]),
        ("all_missing", [mi("")]),
    ]


def llm_prompts(model: Any, data: RealData) -> list[Any]:
    """Real prompts for the merged-LLM check: MELD turn with context, RAVDESS clip, talking head, video only."""
    from egmf_core.model_io import ModelInput

    p = model.prompts
    c = data.clips
    ctx = [p.make_turn(s, t) for s, t in data.meld[:3]]
    th, mead, angry = c["talking_head_1"], c["mead_disgusted"], c["ravdess_angry"]
    speaker, text = data.meld[3]
    return [
        ModelInput(context=tuple(ctx), current=p.make_turn(speaker, text)),
        ModelInput(context=(), current=p.make_turn("Speaker", angry.text), audio=angry.audio),
        ModelInput(context=(), current=p.make_turn("Speaker", th.text), audio=th.audio, visual=th.visual,
                   visual_valid=th.visual_valid),
        ModelInput(context=(), current=p.make_turn("Speaker", ""), visual=mead.visual, visual_valid=mead.visual_valid),
    ]


def synthetic_prompts(model: Any, seed: int = 0) -> list[Any]:
    """Prompts for the merged-LLM check when no real data is available (`--parity-inputs random`)."""
    from egmf_core.model_io import ModelInput

    rng = np.random.default_rng(seed)
    p = model.prompts
    f = model.cfg.fusion
    ctx = (p.make_turn("Ross", "We were on a break!"), p.make_turn("Rachel", "That is not the point."))
    return [
        ModelInput(context=ctx, current=p.make_turn("Ross", "Fine. I am sorry, okay?")),
        ModelInput(context=(), current=p.make_turn("Speaker", "Kids are talking by the door"),
                   audio=(rng.standard_normal((180, f.audio_dim)) * 0.6).astype(np.float32)),
        ModelInput(context=(), current=p.make_turn("Speaker", ""),
                   visual=(rng.random((50, f.visual_dim)) * 0.5).astype(np.float32)),
    ]


@contextlib.contextmanager
def capture_fusion_inputs(model: Any) -> Iterator[list[tuple[tuple[Any, ...], Any]]]:
    """Temporarily wrap `model.fusion` so every call records (input tensors, FusionOutput)."""
    import torch

    calls: list[tuple[tuple[Any, ...], Any]] = []
    inner = model.fusion

    class Recorder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        @property
        def embed_rms(self) -> Any:  # EGMFModel.device reads it
            return self.inner.embed_rms

        def forward(self, *args: Any) -> Any:
            out = self.inner(*args)
            calls.append((tuple(a.detach().cpu() for a in args), out))
            return out

    model.fusion = Recorder()
    try:
        yield calls
    finally:
        model.fusion = inner


def fusion_tensors(model: Any, cases: list[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
    """Run the PyTorch path of each case; return [{"name", "inputs": {name: tensor}, "reference": {name: ndarray}}]."""
    import torch

    out = []
    with torch.no_grad():
        for name, batch in cases:
            with capture_fusion_inputs(model) as calls:
                model.run_fusion(batch)
            args, ref = calls[0]
            out.append({
                "name": name,
                "inputs": dict(zip(INPUT_NAMES, args)),
                "reference": {k: getattr(ref, k).detach().cpu().float().numpy() for k in OUTPUT_NAMES},
            })
    return out


def random_cases(fusion_cfg: Any, llm_hidden: int, embed_rms: float, seed: int = 1) -> list[dict[str, Any]]:
    """Synthetic inputs with the real features' scales (for machines without the shared data, e.g. GPU checks):
    B=1 at 2/5/8/30 s, a padded B=4 batch, and missing-modality masks."""
    import torch

    f = fusion_cfg
    g = torch.Generator().manual_seed(seed)

    def make(b: int, seconds: Sequence[float], text_lens: Sequence[int], drop: str = "") -> dict[str, Any]:
        ta = max(int(s * f.audio_rate) for s in seconds)
        ta += (-ta) % f.audio_stride
        tv = max(1, max(int(s * f.visual_rate) for s in seconds))
        tt = max(1, max(text_lens))
        inputs = {
            "text_embeds": torch.randn(b, tt, llm_hidden, generator=g) * embed_rms,
            "text_valid": torch.zeros(b, tt, dtype=torch.bool),
            "audio": torch.randn(b, ta, f.audio_dim, generator=g) * 0.6,
            "audio_valid": torch.zeros(b, ta, dtype=torch.bool),
            "visual": torch.rand(b, tv, f.visual_dim, generator=g) * 0.5,
            "visual_valid": torch.zeros(b, tv, dtype=torch.bool),
        }
        for i, (s, n) in enumerate(zip(seconds, text_lens)):
            inputs["text_valid"][i, :n] = "text" not in drop
            inputs["audio_valid"][i, : int(s * f.audio_rate)] = "audio" not in drop
            inputs["visual_valid"][i, : int(s * f.visual_rate)] = "video" not in drop
        return inputs

    cases = [(f"b1_{s:g}s", make(1, [s], [int(3.5 * s) + 1])) for s in (2.0, 5.0, 8.0, 30.0)]
    cases += [
        ("b4_padded_mixed", make(4, [2.0, 5.0, 8.0, 3.3], [8, 18, 29, 12])),
        ("no_text", make(1, [4.0], [10], drop="text")),
        ("no_audio", make(1, [4.0], [10], drop="audio")),
        ("no_video", make(1, [4.0], [10], drop="video")),
        ("all_missing", make(1, [1.0], [1], drop="text,audio,video")),
    ]
    return [{"name": n, "inputs": i} for n, i in cases]


def torch_reference(fusion: Any, cases: list[dict[str, Any]]) -> None:
    """Fill each case's "reference" with the PyTorch fusion stack's outputs (CPU, fp32)."""
    import torch

    with torch.no_grad():
        for case in cases:
            out = fusion(*[case["inputs"][n] for n in INPUT_NAMES])
            case["reference"] = {k: getattr(out, k).detach().cpu().float().numpy() for k in OUTPUT_NAMES}


# -- metrics ---------------------------------------------------------------------------------------------------
def errors(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    ref = np.asarray(ref, np.float64)
    got = np.asarray(got, np.float64)
    if ref.shape != got.shape:
        raise ParityError(f"shape mismatch: PyTorch {ref.shape}, engine {got.shape}")
    if not np.isfinite(got).all():
        return {"max_abs": float("inf"), "scale": float(np.abs(ref).max()), "rel_to_scale": float("inf"),
                "max_rel": float("inf")}
    diff = np.abs(got - ref)
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    big = np.abs(ref) >= 1e-3 * scale if scale > 0 else np.zeros_like(ref, bool)
    max_rel = float((diff[big] / np.abs(ref[big])).max()) if big.any() else 0.0
    return {"max_abs": max_abs, "scale": scale, "rel_to_scale": max_abs / scale if scale > 0 else 0.0,
            "max_rel": max_rel}


def case_shape(case: dict[str, Any]) -> dict[str, int]:
    i = case["inputs"]
    return {"batch": int(i["text_embeds"].shape[0]), "text_len": int(i["text_embeds"].shape[1]),
            "audio_len": int(i["audio"].shape[1]), "visual_len": int(i["visual"].shape[1])}


def run_parity(
    run: Callable[[dict[str, Any]], dict[str, np.ndarray]],
    cases: list[dict[str, Any]],
    tolerance: Tolerance,
    label: str,
    example_shape: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Compare `run(inputs) -> {output: ndarray}` with each case's reference; returns the report (never raises)."""
    report_cases = []
    worst: dict[str, dict[str, float]] = {}
    failures = []
    for case in cases:
        got = run(case["inputs"])
        shape = case_shape(case)
        entry = {"name": case["name"], **shape, "audio_seconds": shape["audio_len"] / 50.0,
                 "unseen_at_export": example_shape is None or shape != example_shape,
                 "modalities_present": {
                     "text": bool(case["inputs"]["text_valid"].any()),
                     "audio": bool(case["inputs"]["audio_valid"].any()),
                     "video": bool(case["inputs"]["visual_valid"].any())},
                 "errors": {}}
        for out in OUTPUT_NAMES:
            e = errors(case["reference"][out], got[out])
            entry["errors"][out] = e
            if out not in worst or e["max_abs"] > worst[out]["max_abs"]:
                worst[out] = {**e, "case": case["name"]}
            limit = tolerance.limit(e["scale"])
            if not e["max_abs"] <= limit:
                failures.append(
                    f"{out} in case '{case['name']}' (batch {shape['batch']}, audio {shape['audio_len']} frames): "
                    f"max abs error {e['max_abs']:.3g} > tolerance {limit:.3g} "
                    f"(atol {tolerance.atol:g} + rtol {tolerance.rtol:g} x scale {e['scale']:.3g})"
                )
        report_cases.append(entry)
    return {"engine": label, "tolerance": asdict(tolerance), "passed": not failures, "failures": failures,
            "worst": worst, "cases": report_cases}


def summary_line(report: dict[str, Any]) -> str:
    parts = [f"{o} {w['max_abs']:.2g} abs / {w['rel_to_scale']:.2g} rel" for o, w in report["worst"].items()]
    return f"{report['engine']}: {len(report['cases'])} cases, worst " + ", ".join(parts)
