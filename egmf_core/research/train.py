"""`python -m egmf_core.research.train --config configs/default.yaml [--resume]`: joint LoRA + fusion training.

Mixes MELD (text, past-only dialogue context, emotion + sentiment) with RAVDESS (speech: Whisper encoder states,
8-class emotion, no sentiment), evaluates on the dev splits after every epoch, keeps the best checkpoint by the mean
of MELD dev weighted F1 and RAVDESS dev accuracy, and can resume from the last saved state. An MMSA sentiment
benchmark (`data.mmsa`: CMU-MOSI/MOSEI, CH-SIMS) trains a sentiment-only answer on the file's own features, whose
dims set the fusion stack's inputs (see `configs/mosei_example.yaml`). CPU-friendly choices:
loss and logits only on the answer tokens, length-bucketed batches, a bounded context window, cached features, and
optionally LoRA on the upper layers only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

from ..checkpoint import load_weights, save_checkpoint
from ..config import ConfigError, EGMFConfig, build_dataclass
from ..data import DATASETS, DatasetError, MeldConfig, MeldDataset, RavdessConfig, RavdessDataset, load_dataset
from ..data.mmsa import MMSA_DATASETS, MmsaDataset
from .evaluate import (
    AUDIO_VIEWS,
    MMSA_SCORING,
    check_mmsa_model,
    mmsa_examples,
    open_mmsa,
    predict_examples,
    report,
    whisper_audio_lookup,
)
from .examples import AudioFeaturePack, Example, build_examples, text_length
from ..model import EGMFModel

log = logging.getLogger(__name__)


@dataclass
class ExtraDataset:
    """A further labelled data set from `egmf_core.data.load_dataset` (e.g. `iemocap`, `cherma`, `meld_raw`).

    `label_set` names the answer labels (`default` = MELD's seven, or a `model.task.dataset_emotions` entry such as
    `iemocap6`); audio features come from the speech recognizer through the feature cache. Its dev split is scored
    by emotion weighted F1 and joins the selection score.
    """

    name: str = ""
    train_split: str = "train"
    dev_split: str | None = "dev"
    label_set: str = "default"
    repeat: int = 1
    train_limit: int | None = None

    def __post_init__(self) -> None:
        if self.name not in DATASETS or self.name in ("meld", "ravdess"):
            others = [d for d in DATASETS if d not in ("meld", "ravdess")]
            raise ConfigError(f"data.extra.name must be one of {others} (meld and ravdess have their own switches), "
                              f"got {self.name!r}")
        if self.repeat < 1:
            raise ConfigError(f"data.extra.repeat must be >= 1, got {self.repeat}")


@dataclass
class MmsaData:
    """An MMSA sentiment benchmark (CMU-MOSI/MOSEI, CH-SIMS), converted once with `python -m egmf_core.data.mmsa`.

    Its answers are sentiment scores alone in the label set named after the data set, on the data set's own scale
    (`model.task.score_tasks.<dataset>`), read from the file's audio and vision features: their dims replace
    `model.fusion.audio_dim`/`visual_dim`. The dev split joins the selection score by its Acc-2 (`MMSA_SCORING`).
    """

    dataset: str = ""
    folder: str | None = None  # the converted folder; None = <data dir>/mmsa/<dataset>
    dev_split: str | None = "dev"  # MMSA's "valid"; never select on "test"
    repeat: int = 1
    train_limit: int | None = None

    def __post_init__(self) -> None:
        if self.dataset not in MMSA_DATASETS:
            raise ConfigError(f"data.mmsa.dataset must be one of {tuple(MMSA_DATASETS)}, got {self.dataset!r}")
        if self.repeat < 1:
            raise ConfigError(f"data.mmsa.repeat must be >= 1, got {self.repeat}")


@dataclass
class DataConfig:
    meld: bool = True
    meld_train_limit: int | None = None
    ravdess: bool = True
    ravdess_train_actors: list[int] = field(default_factory=lambda: list(range(1, 11)))
    ravdess_dev_actors: list[int] = field(default_factory=lambda: [11, 12])
    ravdess_repeat: int = 3  # oversampling: 600 clips vs ~10k MELD utterances
    ravdess_limit: int | None = None  # the first N clips of each RAVDESS split (smoke runs), None = all
    audio_pack: str | None = None  # precomputed features (AudioFeaturePack) instead of running Whisper
    # Which audio the RAVDESS clips give (egmf_core.research.evaluate.whisper_audio_lookup): "clip", the whole file as
    # the shipped checkpoint learned; "live", the clip as the live segmenter cuts and frames it (what the model gets
    # live).
    ravdess_audio: str = "clip"
    # Extra copies of every RAVDESS training clip, each through its own random channel chain
    # (egmf_core.research.degrade.random_chain: room, gain or limiter, noise, phone line or codec), so the audio branch
    # learns the voice rather than one studio's level and room. 0 = the clips as recorded only.
    ravdess_degraded_copies: int = 0
    data_dir: str | None = None
    extra: list[ExtraDataset] = field(default_factory=list)  # the paper's benchmarks, where the user has them
    mmsa: MmsaData | None = None  # one MMSA benchmark: its features fix the fusion stack's input dims


@dataclass
class TrainConfig:
    epochs: int = 3
    batch_size: int = 8
    lr: float = 5e-4  # LoRA
    fusion_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    seed: int = 0
    dev_limit: int | None = None  # MELD dev utterances evaluated per epoch (None = all 1,109)
    eval_batch_size: int = 16
    max_steps: int | None = None
    time_budget_minutes: float | None = None
    out_dir: str = "runs/default"
    log_every: int = 20
    aux_weight: float = 0.0  # weight of the auxiliary emotion head on f_enhanced (0 = off)
    # 0 = fusion-only stage: train the fusion stack through the auxiliary head alone (no LLM pass; fast on CPU) and
    # select on the head's dev accuracy.
    lm_weight: float = 1.0
    init_from: str | None = None  # start from this checkpoint's weights (staged training)
    train_lora: bool = True  # False: keep the LLM's LoRA weights fixed, train only the fusion stack


@dataclass
class RunConfig:
    model: EGMFConfig = field(default_factory=EGMFConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RunConfig":
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh) or {}
        cfg = build_dataclass(cls, raw)
        cfg.model.validate()
        return cfg


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def open_mmsa_splits(cfg: RunConfig) -> dict[str, MmsaDataset]:
    """Open `data.mmsa`'s train (and dev) split and fit the model config to them, before the model is built: the
    fusion stack's input dims become the file's (`dataclasses.replace(fusion, **ds.fusion_dims)`)."""
    m = cfg.data.mmsa
    if m is None:
        return {}
    _check_mmsa_run(cfg)
    splits = {"train": open_mmsa(m.dataset, "train", m.folder, cfg.data.data_dir)}
    if m.dev_split:
        splits["dev"] = open_mmsa(m.dataset, m.dev_split, m.folder, cfg.data.data_dir)
    cfg.model.fusion = dataclasses.replace(cfg.model.fusion, **splits["train"].fusion_dims)
    check_mmsa_model(cfg.model, splits["train"])
    return splits


def _check_mmsa_run(cfg: RunConfig) -> None:
    """What cannot share a run with an MMSA benchmark: data whose audio is Whisper's (other feature dims than the
    file's), and the auxiliary emotion head (MMSA clips have no emotion label)."""
    d, t = cfg.data, cfg.train
    if d.ravdess or d.extra:
        raise ConfigError("data.mmsa feeds its file's own audio features to the fusion stack, so it cannot be combined "
                          "with data.ravdess or data.extra (Whisper audio features); MELD (text only) can stay")
    if t.aux_weight or not t.lm_weight:
        raise ConfigError("data.mmsa has no emotion labels for the auxiliary head: set train.aux_weight: 0 and "
                          "train.lm_weight > 0")


def load_splits(
    cfg: RunConfig, model: EGMFModel, mmsa: dict[str, MmsaDataset] | None = None
) -> tuple[list[Example], dict[str, list[Example]]]:
    """Training examples and each dev set's; `mmsa` holds `data.mmsa`'s opened splits (`open_mmsa_splits`)."""
    d = cfg.data
    train: list[Example] = []
    dev: dict[str, list[Example]] = {}
    if d.meld:
        meld_train = list(MeldDataset("train", MeldConfig(data_dir=d.data_dir)))
        if d.meld_train_limit is not None:
            meld_train = meld_train[: d.meld_train_limit]
        train += build_examples(meld_train, model.prompts)
        meld_dev = list(MeldDataset("dev", MeldConfig(data_dir=d.data_dir)))
        dev["meld"] = build_examples(meld_dev[: cfg.train.dev_limit], model.prompts)
    if d.ravdess:
        if d.ravdess_audio not in AUDIO_VIEWS:
            raise ConfigError(f"data.ravdess_audio: expected one of {', '.join(AUDIO_VIEWS)}, got {d.ravdess_audio!r}")
        loudness = model.cfg.fusion.audio_loudness_lufs
        audio = (AudioFeaturePack.read(d.audio_pack) if d.audio_pack
                 else whisper_audio_lookup(d.ravdess_audio, loudness))
        if d.audio_pack and audio.view != d.ravdess_audio:
            raise ConfigError(f"data.audio_pack holds features of {audio.view} audio but data.ravdess_audio is "
                              f"{d.ravdess_audio!r} (python -m egmf_core.research.pack_audio --audio "
                              f"{d.ravdess_audio})")
        rcfg = RavdessConfig(
            data_dir=d.data_dir,
            splits={"train": tuple(d.ravdess_train_actors), "dev": tuple(d.ravdess_dev_actors)},
            check_files=d.audio_pack is None,
        )
        r_train = build_examples(list(RavdessDataset("train", rcfg))[: d.ravdess_limit], model.prompts, audio=audio,
                                 label_set="ravdess")
        silent = sum(e.input.audio is None for e in r_train)
        if silent and d.ravdess_audio == "clip":
            raise ConfigError("data.audio_pack lacks features for some RAVDESS training clips")
        if silent:  # live cuts: the VAD heard no speech in these clips (live, no event); they train on text alone
            log.warning("data.ravdess_audio live: %d of %d training clips have no speech segment", silent, len(r_train))
        train += r_train * d.ravdess_repeat
        if d.ravdess_degraded_copies and d.audio_pack:
            raise ConfigError("data.ravdess_degraded_copies needs the clips themselves, not data.audio_pack")
        for k in range(d.ravdess_degraded_copies):
            t0 = time.perf_counter()
            degraded = whisper_audio_lookup(d.ravdess_audio, loudness, degradation=f"random:{k}")
            train += build_examples(list(RavdessDataset("train", rcfg))[: d.ravdess_limit], model.prompts,
                                    audio=degraded, label_set="ravdess")
            print(f"RAVDESS degraded copy {k + 1}/{d.ravdess_degraded_copies}: features in "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
        dev["ravdess"] = build_examples(list(RavdessDataset("dev", rcfg))[: d.ravdess_limit], model.prompts,
                                        audio=audio, label_set="ravdess")
    # one recognizer for every extra data set
    audio = whisper_audio_lookup("clip", model.cfg.fusion.audio_loudness_lufs) if d.extra else None
    for extra in d.extra:
        model.prompts.check_label_set(extra.label_set)
        records = list(load_dataset(extra.name, extra.train_split, d.data_dir))[: extra.train_limit]
        labelled = [e for e in build_examples(records, model.prompts, audio=audio, label_set=extra.label_set)
                    if e.input.emotion is not None]  # unlabelled turns stay as context only
        if not labelled:
            raise ConfigError(f"data.extra {extra.name!r}: no {extra.train_split} utterance has a label in "
                              f"{extra.label_set!r}")
        train += labelled * extra.repeat
        if extra.dev_split:
            dev_records = list(load_dataset(extra.name, extra.dev_split, d.data_dir))[: cfg.train.dev_limit]
            dev[extra.name] = [e for e in build_examples(dev_records, model.prompts, audio=audio,
                                                         label_set=extra.label_set)
                               if e.input.emotion is not None]
    if mmsa:
        train += mmsa_examples(model, mmsa["train"], d.mmsa.train_limit) * d.mmsa.repeat
        if "dev" in mmsa:
            dev[d.mmsa.dataset] = mmsa_examples(model, mmsa["dev"], cfg.train.dev_limit)
    if not train:
        raise ConfigError("data: enable at least one of meld, ravdess, extra, mmsa")
    return train, dev


def make_batches(examples: Sequence[Example], batch_size: int, rng: random.Random) -> list[list[Example]]:
    """Shuffle, then sort within windows of 50 batches by prompt length, so batches have little padding."""
    idx = list(range(len(examples)))
    rng.shuffle(idx)
    batches = []
    window = batch_size * 50
    for w in range(0, len(idx), window):
        chunk = sorted(idx[w : w + window], key=lambda i: text_length(examples[i].input))
        batches += [[examples[i] for i in chunk[b : b + batch_size]] for b in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def evaluate_dev(model: EGMFModel, dev: dict[str, list[Example]], batch_size: int) -> dict:
    model.eval()
    results = {}
    for name, examples in dev.items():
        preds = predict_examples(model, examples, batch_size)
        results[name] = report(model, examples, preds)
    model.train()
    parts = []
    if "meld" in results:
        parts.append(results["meld"]["emotion"]["weighted_f1"])
    if "ravdess" in results:
        parts.append(results["ravdess"]["emotion"]["accuracy"])
    parts += [_dev_part(name, r) for name, r in results.items() if name not in ("meld", "ravdess")]
    results["selection_score"] = float(np.mean(parts))
    return results


def _dev_part(name: str, result: dict) -> float:
    """A further dev set's part of the selection score, in percent: emotion weighted F1, or an MMSA benchmark's
    Acc-2."""
    if "sentiment_regression" in result:
        return result["sentiment_regression"][MMSA_SCORING[name].selection]
    return result["emotion"]["weighted_f1"]


@torch.no_grad()
def evaluate_aux(model: EGMFModel, dev: dict[str, list[Example]]) -> dict:
    """Dev accuracy of the auxiliary emotion head (fusion-only stage)."""
    model.eval()
    results: dict = {}
    for name, examples in dev.items():
        correct = 0
        for b in range(0, len(examples), 64):
            batch = [e.input for e in examples[b : b + 64]]
            fusion, _ = model.run_fusion(batch)
            pred = model.fusion.aux_head(fusion.enhanced).argmax(-1).tolist()
            correct += sum(model.aux_labels[p] == x.emotion for p, x in zip(pred, batch))
        results[name] = {"aux_accuracy": 100.0 * correct / len(examples)}
    model.train()
    results["selection_score"] = float(np.mean([r["aux_accuracy"] for r in results.values()]))
    return results


def _summary(results: dict) -> str:
    if all("aux_accuracy" in r for k, r in results.items() if k != "selection_score"):
        accs = ", ".join(f"{k} aux acc {r['aux_accuracy']:.2f}" for k, r in results.items() if k != "selection_score")
        return f"{accs} (selection {results['selection_score']:.2f})"
    out = []
    if "meld" in results:
        out.append(f"MELD dev wF1 {results['meld']['emotion']['weighted_f1']:.2f} sentiment wF1 "
                   f"{results['meld']['sentiment']['weighted_f1']:.2f}")
    if "ravdess" in results:
        out.append(f"RAVDESS dev acc8 {results['ravdess']['emotion']['accuracy']:.2f}")
    out += [_dev_summary(name, r) for name, r in results.items() if name not in ("meld", "ravdess", "selection_score")]
    return "; ".join(out) + f" (selection {results['selection_score']:.2f})"


def _dev_summary(name: str, result: dict) -> str:
    if "sentiment_regression" in result:
        r = result["sentiment_regression"]
        key = MMSA_SCORING[name].selection
        return f"{name} dev MAE {r['mae']:.3f} corr {r['corr']:.3f} {key} {r[key]:.2f}"
    return f"{name} dev wF1 {result['emotion']['weighted_f1']:.2f}"


class Trainer:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.out = Path(cfg.train.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        seed_everything(cfg.train.seed)
        if cfg.model.backbone.device.startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = True
        mmsa = open_mmsa_splits(cfg)  # before the model: its features set the fusion stack's input dims
        self.model = EGMFModel.build(cfg.model)
        t = cfg.train
        if t.init_from:
            load_weights(self.model, t.init_from, initialising=True)
            print(f"initialised from {t.init_from}", flush=True)
        if not t.train_lora:
            for p in self.model.llm.parameters():
                p.requires_grad_(False)
        self.train_set, self.dev = load_splits(cfg, self.model, mmsa)
        lora = [p for n, p in self.model.llm.named_parameters() if p.requires_grad]
        fusion = [p for p in self.model.fusion.parameters() if p.requires_grad]
        groups = [{"params": fusion, "lr": t.fusion_lr}]
        if lora:
            groups.append({"params": lora, "lr": t.lr})
        self.opt = torch.optim.AdamW(groups, weight_decay=t.weight_decay)
        self.steps_per_epoch = math.ceil(len(self.train_set) / t.batch_size)
        self.total_steps = t.max_steps or self.steps_per_epoch * t.epochs
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_factor)
        self._start: float | None = None
        self.step = 0
        self.epoch = 0
        self.best = -1.0
        self.history: list[dict] = []

    def _lr_factor(self, step: int) -> float:
        """Linear warmup, then cosine decay driven by whichever runs out first: steps or the time budget."""
        warm = self.cfg.train.warmup_steps
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, self.total_steps - warm)
        budget = self.cfg.train.time_budget_minutes
        if budget and self._start is not None:
            progress = max(progress, (time.perf_counter() - self._start) / (budget * 60))
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    # -- resume state (safetensors + JSON, no pickle) -----------------------------------------------------------
    def save_state(self) -> None:
        save_checkpoint(self.model, self.out / "last.safetensors", extra={"step": self.step, "epoch": self.epoch})
        sd = self.opt.state_dict()
        tensors = {f"{pid}.{k}": v.contiguous() for pid, st in sd["state"].items() for k, v in st.items()}
        meta = {
            "param_groups": json.dumps(sd["param_groups"]),
            "sched": json.dumps(self.sched.state_dict()),
            "trainer": json.dumps({"step": self.step, "epoch": self.epoch, "best": self.best, "history": self.history}),
        }
        save_file(tensors, str(self.out / "trainer_state.safetensors"), metadata=meta)

    def load_state(self) -> None:
        from safetensors import safe_open

        load_weights(self.model, self.out / "last.safetensors")
        path = self.out / "trainer_state.safetensors"
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata()
        tensors = load_file(str(path))
        state: dict[int, dict] = {}
        for key, v in tensors.items():
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = v
        self.opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
        self.sched.load_state_dict(json.loads(meta["sched"]))
        tr = json.loads(meta["trainer"])
        self.step, self.epoch, self.best, self.history = tr["step"], tr["epoch"], tr["best"], tr["history"]
        print(f"resumed at epoch {self.epoch} step {self.step} (best {self.best:.2f})", flush=True)

    # -- loop ---------------------------------------------------------------------------------------------------
    def run(self) -> dict:
        t = self.cfg.train
        budget = t.time_budget_minutes * 60 if t.time_budget_minutes else None
        start = self._start = time.perf_counter()
        print(
            f"training on {len(self.train_set)} examples ({self.steps_per_epoch} steps/epoch, {self.total_steps} "
            f"steps), dev {', '.join(f'{k}={len(v)}' for k, v in self.dev.items())}; "
            f"{sum(p.numel() for _, p in self.model.trainable_parameters()):,} trainable parameters",
            flush=True,
        )
        self.model.train()
        stop = False
        while self.epoch < t.epochs and not stop:
            batches = make_batches(self.train_set, t.batch_size, random.Random(t.seed * 1000 + self.epoch))
            skip = self.step - self.epoch * self.steps_per_epoch  # resuming mid-epoch
            running, t_log = [], time.perf_counter()
            for bi, batch in enumerate(batches):
                if bi < skip:
                    continue
                inputs = [e.input for e in batch]
                if t.lm_weight:
                    loss = t.lm_weight * self.model.loss(inputs, aux_weight=t.aux_weight)
                else:
                    loss = self.model.aux_loss(inputs)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for _, p in self.model.trainable_parameters()], t.grad_clip)
                self.opt.step()
                self.sched.step()
                self.step += 1
                running.append(loss.item())
                if self.step % t.log_every == 0:
                    el = time.perf_counter() - start
                    sps = (time.perf_counter() - t_log) / len(running)
                    eta = sps * (self.total_steps - self.step)
                    print(
                        f"epoch {self.epoch + 1}/{t.epochs} step {self.step}/{self.total_steps} loss "
                        f"{np.mean(running):.4f} {sps:.2f} s/step elapsed {el / 60:.1f} min eta {eta / 60:.1f} min",
                        flush=True,
                    )
                    running, t_log = [], time.perf_counter()
                if (t.max_steps and self.step >= t.max_steps) or (budget and time.perf_counter() - start > budget):
                    stop = True
                    break
            if not stop:
                self.epoch += 1
            self._evaluate_and_keep(time.perf_counter() - start)
            self.save_state()
        return {"best": self.best, "history": self.history, "train_seconds": time.perf_counter() - start}

    def _evaluate_and_keep(self, elapsed: float) -> None:
        if self.cfg.train.lm_weight:
            results = evaluate_dev(self.model, self.dev, self.cfg.train.eval_batch_size)
        else:
            results = evaluate_aux(self.model, self.dev)
        entry = {"epoch": self.epoch, "step": self.step, "elapsed_s": round(elapsed, 1), "dev": results}
        self.history.append(entry)
        print(f"dev after epoch {self.epoch} step {self.step}: {_summary(results)}", flush=True)
        (self.out / "history.json").write_text(json.dumps(self.history, indent=2))
        if results["selection_score"] > self.best:
            self.best = results["selection_score"]
            save_checkpoint(
                self.model,
                self.out / "best.safetensors",
                extra={"epoch": self.epoch, "step": self.step, "dev": _compact(results),
                       "train_config": asdict(self.cfg.train)},
            )
            print(f"  new best checkpoint: {self.out / 'best.safetensors'}", flush=True)


def _compact(results: dict) -> dict:
    out = {"selection_score": results["selection_score"]}
    for name in ("meld", "ravdess"):
        if name in results and "aux_accuracy" in results[name]:
            out[name] = {"aux_accuracy": results[name]["aux_accuracy"]}
        elif name in results:
            out[name] = {"emotion_wf1": results[name]["emotion"]["weighted_f1"],
                         "emotion_acc": results[name]["emotion"]["accuracy"]}
    for name, r in results.items():
        if isinstance(r, dict) and "sentiment_regression" in r:
            reg = r["sentiment_regression"]
            out[name] = {key: reg[key] for key in ("mae", "corr", MMSA_SCORING[name].selection)}
    return out


def add_machine_args(ap: argparse.ArgumentParser) -> None:
    """The options that fit a recipe to a machine without editing its YAML (shared with
    `egmf_core.research.ablate_retrained`)."""
    ap.add_argument("--device", default=None, help="override model.backbone.device (e.g. cuda)")
    ap.add_argument("--audio-pack", default=None,
                    help="override data.audio_pack (see python -m egmf_core.research.pack_audio)")
    ap.add_argument("--time-budget-minutes", type=float, default=None, help="override train.time_budget_minutes")


def apply_machine_args(cfg: RunConfig, args: argparse.Namespace) -> None:
    if args.device:
        cfg.model.backbone.device = args.device
    if args.audio_pack:
        cfg.data.audio_pack = args.audio_pack
    if args.time_budget_minutes:
        cfg.train.time_budget_minutes = args.time_budget_minutes


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m egmf_core.research.train", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="YAML with model/data/train sections (see configs/default.yaml)")
    ap.add_argument("--resume", action="store_true", help="continue from <out_dir>/last.safetensors")
    ap.add_argument("--out-dir", default=None, help="override train.out_dir")
    ap.add_argument("--init-from", default=None, help="override train.init_from (a checkpoint to start from)")
    add_machine_args(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = RunConfig.from_yaml(args.config)
        if args.out_dir:
            cfg.train.out_dir = args.out_dir
        if args.init_from:
            cfg.train.init_from = args.init_from
        apply_machine_args(cfg, args)
        trainer = Trainer(cfg)
        if args.resume:
            trainer.load_state()
        result = trainer.run()
    except (ConfigError, DatasetError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"done: best selection score {result['best']:.2f} in {result['train_seconds'] / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
