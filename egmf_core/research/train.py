"""`python -m egmf_core.research.train --config configs/default.yaml [--resume]`: joint LoRA + fusion training.

Mixes MELD (text, past-only dialogue context, emotion + sentiment) with RAVDESS (speech: Whisper encoder states,
8-class emotion, no sentiment), evaluates on the dev splits after every epoch, keeps the best checkpoint by the mean
of MELD dev weighted F1 and RAVDESS dev accuracy, and can resume from the last saved state. An MMSA sentiment
benchmark (`data.mmsa`: CMU-MOSI/MOSEI, CH-SIMS) trains a sentiment-only answer on the file's own features, whose
dims set the fusion stack's inputs (see `configs/mosei_example.yaml`). CPU-friendly choices:
loss and logits only on the answer tokens, length-bucketed batches, a bounded context window, cached features, and
optionally LoRA on the upper layers only.

The run's recipe is in `run_config.py`, its examples and batches in `training_data.py`, the dev evaluation and the
selection score in `dev_selection.py`; this module holds the training loop and the command.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..checkpoint import load_weights, save_checkpoint
from ..config import ConfigError
from ..data import DatasetError
from ..model import EGMFModel
from .dev_selection import compact_results, evaluate_aux, evaluate_dev, summary_line
from .run_config import RunConfig
from .training_data import load_splits, make_batches, open_mmsa_splits


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
        print(f"dev after epoch {self.epoch} step {self.step}: {summary_line(results)}", flush=True)
        (self.out / "history.json").write_text(json.dumps(self.history, indent=2))
        if results["selection_score"] > self.best:
            self.best = results["selection_score"]
            save_checkpoint(
                self.model,
                self.out / "best.safetensors",
                extra={"epoch": self.epoch, "step": self.step, "dev": compact_results(results),
                       "train_config": asdict(self.cfg.train)},
            )
            print(f"  new best checkpoint: {self.out / 'best.safetensors'}", flush=True)


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
