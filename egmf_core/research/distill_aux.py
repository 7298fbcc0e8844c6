"""`python -m egmf_core.research.distill_aux --checkpoint default --out PATH`: fit the auxiliary head to the LLM's answers.

`EGMFModel.score` folds into its prompt pass the answer trees of the labels the fusion stack's auxiliary head ranks
highest (`EGMFModel.folded_answers`); when the LLM's first answer token is none of them, a second LLM pass runs
(~150-270 ms on a 2-core CPU), which is most of a live stream's latency tail. Training fits that head to the gold
labels (`TrainConfig.aux_weight`, a short gradient path for the fusion stack), but folding needs it to predict what
the LLM will answer, which differs from the gold label on a third of MELD. This refits the head alone, a linear layer
on f_enhanced that no answer depends on, to the LLM's distribution over the label set's first answer tokens (KL
divergence, starting from the trained head), on utterances of the kinds live streams carry: MELD lines without audio,
RAVDESS speech as live cuts, and MELD lines spoken by espeak-ng (words and a voice together, as on a call).

Every other tensor of the checkpoint is copied unchanged, so the model's answers stay exactly the same; only which
answer trees get folded changes. The report (`benchmarks/results/aux_distill.{json,md}`) gives, on held-out dev
utterances, how often the LLM's answer is among the head's top 1 / 2 / 3 before and after: a miss at the model's
`folded_answers` costs a live utterance the extra pass.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ..checkpoint import CheckpointError, read_file, resolve, write_file
from ..data import DatasetError
from .analysis import command_line, write_report
from .eval_examples import dataset_examples
from .feature_lookup import live_encoder_states
from .examples import Example, text_length
from ..model import EGMFModel

HEAD_KEYS = ("fusion.aux_head.weight", "fusion.aux_head.bias")
ESPEAK_VOICES = ("en-us", "en-gb+f3", "en-us+m3", "en+f2")  # alternated, each at its own rate
ESPEAK_RATES = (160, 150, 175, 165)


@dataclass
class Pool:
    """Utterances of one kind and one label set with what the fit needs from each: f_enhanced (the head's input) and
    the LLM's probabilities over the label set's labels, whose columns in the head's output are `columns`."""

    name: str
    enhanced: torch.Tensor  # (N, d_h)
    columns: list[int]
    llm_probs: torch.Tensor  # (N, labels)

    def __len__(self) -> int:
        return len(self.enhanced)


@dataclass(frozen=True)
class DistillConfig:
    meld: int = 2000  # MELD train utterances (words only)
    espeak: int = 600  # MELD train lines spoken by espeak-ng (the ones after the first `meld`)
    ravdess: bool = True  # RAVDESS train as live cuts
    dev_meld: int = 400
    dev_espeak: int = 200
    steps: int = 400
    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 16

    def __post_init__(self) -> None:
        for name in ("meld", "espeak", "dev_meld", "dev_espeak"):
            if getattr(self, name) < 0:
                raise ValueError(f"DistillConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.steps < 1 or self.lr <= 0 or self.batch_size < 1:
            raise ValueError(f"DistillConfig: steps and batch_size must be >= 1 and lr > 0, got steps={self.steps}, "
                             f"batch_size={self.batch_size}, lr={self.lr}")


def spoken(examples: Sequence[Example], workdir: Path, frontend) -> list[Example]:
    """`examples` with audio: each utterance's words spoken by espeak-ng (voices and rates alternated), encoded by
    `frontend` (a `WhisperFrontend` with the live window) as the live pipeline encodes a turn (`live_encoder_states`).
    Utterances in which the VAD hears no speech keep no audio."""
    from ..features.audio import load_audio

    out = []
    for i, ex in enumerate(examples):
        wav = workdir / f"espeak_{i}.wav"
        k = i % len(ESPEAK_VOICES)
        # the words on stdin: a line starting with "-" must not read as an option
        subprocess.run(["espeak-ng", "-v", ESPEAK_VOICES[k], "-s", str(ESPEAK_RATES[k]), "-w", str(wav), "--stdin"],
                       input=ex.input.current.text.encode(), check=True, capture_output=True)
        states = live_encoder_states(load_audio(wav), frontend)
        wav.unlink()
        audio = states if len(states) else None
        out.append(Example(ex.record, dataclasses.replace(ex.input, audio=audio)))
        if (i + 1) % 100 == 0 or i + 1 == len(examples):
            print(f"  espeak-ng speech: {i + 1}/{len(examples)}", file=sys.stderr, flush=True)
    return out


@torch.no_grad()
def collect(model: EGMFModel, name: str, examples: Sequence[Example], batch_size: int) -> Pool:
    """Run the model on `examples` (one label set; length-sorted batches): f_enhanced and the LLM's label
    probabilities."""
    label_sets = {ex.input.label_set for ex in examples}
    if len(label_sets) != 1:
        raise ValueError(f"{name}: expected one label set, got {sorted(label_sets)}")
    labels = model.prompts.label_sets[label_sets.pop()]
    order = sorted(range(len(examples)), key=lambda i: text_length(examples[i].input))
    enhanced = torch.zeros((len(examples), model.cfg.fusion.hidden))
    probs = torch.zeros((len(examples), len(labels)))
    start = time.perf_counter()
    for b in range(0, len(order), batch_size):
        idx = order[b: b + batch_size]
        batch = [examples[i].input for i in idx]
        fusion, _ = model.run_fusion(batch)
        enhanced[idx] = fusion.enhanced.float().cpu()
        probs[idx] = torch.tensor([[pred.emotion_probs[lab] for lab in labels] for pred in model.score(batch)])
        if (b // batch_size) % 20 == 0:
            done = min(b + batch_size, len(order))
            print(f"  {name}: {done}/{len(order)} ({done / (time.perf_counter() - start):.1f} utt/s)",
                  file=sys.stderr, flush=True)
    return Pool(name, enhanced, [model.aux_labels.index(lab) for lab in labels], probs)


def head_log_probs(weight: torch.Tensor, bias: torch.Tensor, pool: Pool) -> torch.Tensor:
    """(N, labels): the head's log-probabilities over the pool's label set."""
    return F.log_softmax(pool.enhanced @ weight[pool.columns].t() + bias[pool.columns], -1)


def hit_rates(weight: torch.Tensor, bias: torch.Tensor, pool: Pool, ks: Sequence[int] = (1, 2, 3)) -> dict[str, float]:
    """Percent of utterances whose LLM answer (its likeliest first token) is among the head's top k labels."""
    lp = head_log_probs(weight, bias, pool)
    answer = lp.gather(1, pool.llm_probs.argmax(1, keepdim=True))
    rank = (lp > answer).sum(1)  # labels the head scores above the LLM's answer
    return {f"top{k}": round(100.0 * float((rank < k).float().mean()), 2) for k in ks}


def fit(weight: torch.Tensor, bias: torch.Tensor, pools: Sequence[Pool], cfg: DistillConfig
        ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Minimise the mean KL(LLM || head) over every training utterance, each pool weighted equally (a small pool of
    speech should count as much as many lines of text), full batch, Adam, starting from the trained head."""
    w, b = weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    opt = torch.optim.AdamW([w, b], lr=cfg.lr, weight_decay=cfg.weight_decay)
    losses = []
    for _ in range(cfg.steps):
        opt.zero_grad()
        loss = torch.stack([F.kl_div(head_log_probs(w, b, pool), pool.llm_probs, reduction="batchmean")
                            for pool in pools if len(pool)]).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return w.detach(), b.detach(), losses


def write_checkpoint(source: Path, out: Path, weight: torch.Tensor, bias: torch.Tensor, note: dict) -> None:
    """`source` with the aux head replaced; every other tensor and the metadata copied as they are (the metadata's
    `extra` gains `note` under "aux_head_distilled")."""
    tensors, meta = read_file(source)
    missing = [k for k in HEAD_KEYS if k not in tensors]
    if missing:
        raise CheckpointError(f"{source}: no auxiliary head ({', '.join(missing)}): nothing to distil")
    for key, value in zip(HEAD_KEYS, (weight, bias)):
        if tensors[key].shape != value.shape:
            raise CheckpointError(f"{key}: expected shape {tuple(tensors[key].shape)}, got {tuple(value.shape)}")
        tensors[key] = value.to(tensors[key].dtype).contiguous()
    extra = json.loads(meta.get("extra") or "{}")
    extra["aux_head_distilled"] = note
    meta["extra"] = json.dumps(extra)
    write_file(tensors, meta, out)


def markdown(result: dict) -> str:
    cfg = result["config"]
    lines = [
        "# Auxiliary head distilled toward the LLM's answers (answer folding)",
        "",
        f"{result['date']}; {result['machine']}. Checkpoint `{result['checkpoint']}` -> `{result['out']}` (every "
        f"tensor but the aux head copied unchanged: same answers). The model folds the trees of the head's "
        f"{result['folded_answers']} likeliest labels into its prompt pass; a live utterance whose answer is not "
        "among them needs a second LLM pass.",
        "",
        f"Fit: KL(LLM || head) on {', '.join(f'{p} ({n})' for p, n in result['train_sizes'].items())}; "
        f"{cfg['steps']} full-batch AdamW steps (lr {cfg['lr']}), pools weighted equally; loss "
        f"{result['loss_first']:.3f} -> {result['loss_last']:.3f}; {result['seconds']:.0f} s in all.",
        "",
        "How often the LLM's answer is among the head's top k labels, held-out dev utterances (%):",
        "",
        "| dev set | n | top 1 before / after | top 2 before / after | top 3 before / after |",
        "|---|---|---|---|---|",
    ]
    for name, r in result["dev"].items():
        b, a = r["before"], r["after"]
        lines.append(f"| {name} | {r['n']} | {b['top1']:.1f} / **{a['top1']:.1f}** | {b['top2']:.1f} / "
                     f"**{a['top2']:.1f}** | {b['top3']:.1f} / **{a['top3']:.1f}** |")
    lines += ["", f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m egmf_core.research.distill_aux", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="default", help="checkpoint file, or 'default' for the shipped one")
    ap.add_argument("--out", required=True, help="where to write the checkpoint with the distilled head "
                                                 "(may be the --checkpoint file itself)")
    defaults = DistillConfig()
    for name in ("meld", "espeak", "dev_meld", "dev_espeak", "steps"):
        ap.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    ap.add_argument("--no-ravdess", action="store_true", help="leave RAVDESS's live cuts out of the fit")
    ap.add_argument("--report", default="benchmarks/results/aux_distill.md", help="Markdown; the JSON goes beside it")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = DistillConfig(meld=args.meld, espeak=args.espeak, ravdess=not args.no_ravdess, dev_meld=args.dev_meld,
                            dev_espeak=args.dev_espeak, steps=args.steps)
        result = run(args.checkpoint, Path(args.out), cfg)
    except (CheckpointError, DatasetError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result["command"] = command_line("egmf_core.research.distill_aux", argv)
    write_report(Path(args.report), result, markdown)
    return 0


def run(checkpoint: str, out: Path, cfg: DistillConfig) -> dict:
    import platform

    from ..predictor import EGMFPredictor

    t0 = time.perf_counter()
    source = resolve(checkpoint)
    model = EGMFPredictor.load(source, device="cpu").model  # merged LoRA: the answers the live path gives
    head = getattr(model.fusion, "aux_head", None)
    if head is None:
        raise CheckpointError(f"{source}: the model has no auxiliary head: nothing to distil")
    meld_train = dataset_examples(model, "meld", "train", cfg.meld + cfg.espeak)
    train_sets = {"MELD train, words": meld_train[: cfg.meld]}
    dev_sets = {"MELD dev, words": dataset_examples(model, "meld", "dev", cfg.dev_meld)}
    if cfg.espeak or cfg.dev_espeak:
        if shutil.which("espeak-ng") is None:
            raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng), or pass --espeak 0 "
                               "--dev-espeak 0")
        from ..features.audio import WhisperFrontend, WhisperFrontendConfig
        from ..features.live_cut import LIVE_WINDOW_S

        frontend = WhisperFrontend(WhisperFrontendConfig(  # loaded once
            window_s=LIVE_WINDOW_S, loudness_lufs=model.cfg.fusion.audio_loudness_lufs))
        with tempfile.TemporaryDirectory(prefix="egmf-espeak-") as tmp:
            if cfg.espeak:
                train_sets["MELD train lines, espeak-ng speech"] = spoken(meld_train[cfg.meld:], Path(tmp), frontend)
            if cfg.dev_espeak:
                dev_sets["MELD dev lines, espeak-ng speech"] = spoken(
                    dataset_examples(model, "meld", "dev", cfg.dev_espeak), Path(tmp), frontend)
    if cfg.ravdess:
        train_sets["RAVDESS train, live cuts"] = dataset_examples(model, "ravdess", "train", audio_view="live",
                                                                  label_set="default")
        dev_sets["RAVDESS dev, live cuts"] = dataset_examples(model, "ravdess", "dev", audio_view="live",
                                                              label_set="default")
    train = [collect(model, name, ex, cfg.batch_size) for name, ex in train_sets.items() if ex]
    dev = [collect(model, name, ex, cfg.batch_size) for name, ex in dev_sets.items() if ex]
    w0, b0 = head.weight.detach().float().cpu(), head.bias.detach().float().cpu()
    w, b, losses = fit(w0, b0, train, cfg)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "checkpoint": str(checkpoint), "out": str(out), "folded_answers": model.folded_answers,
        "config": dataclasses.asdict(cfg),
        "train_sizes": {p.name: len(p) for p in train},
        "loss_first": losses[0], "loss_last": losses[-1],
        "dev": {p.name: {"n": len(p), "before": hit_rates(w0, b0, p), "after": hit_rates(w, b, p)} for p in dev},
    }
    note = {"what": "aux head refit to the LLM's first-answer-token distribution (egmf_core.research.distill_aux)",
            "train_sizes": result["train_sizes"], "steps": cfg.steps,
            "dev_top3_after": {k: v["after"]["top3"] for k, v in result["dev"].items()}}
    write_checkpoint(source, out, w, b, note)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
