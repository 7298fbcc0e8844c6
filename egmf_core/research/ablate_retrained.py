"""`python -m egmf_core.research.ablate_retrained --config configs/ablation_fusion.yaml [--variants ...] [--seeds 0 1]`.

The paper's ablation study as the paper runs it: every variant is trained from scratch without the part (same
recipe, data, seed and number of steps, selected on dev as `egmf_core.research.train` does), then scored on the test
split. `egmf_core.research.ablate` answers a different question (how much one trained checkpoint relies on each part,
removed at inference); the two tables are complementary.

The recipe is the config's, and its `train.lm_weight` decides how the variants are scored:
- answer loss (lm_weight > 0, e.g. configs/default.yaml): LoRA + fusion trained jointly, scored by the LLM's answers
  with `egmf_core.research.evaluate`'s code: the paper's setting. Hours per variant on a CPU; practical on a GPU.
- fusion only (lm_weight 0, configs/ablation_fusion.yaml): the fusion stack trained through the auxiliary emotion
  head on f_enhanced (the vector the pseudo tokens are projected from), scored by that head's argmax over the
  dataset's labels. No LLM pass, so a variant takes minutes on a CPU. It measures what each part contributes to the
  fused representation, not to the LLM's answers, and "w/o LoRA" does not apply.

Each run keeps its checkpoint and scores in `<runs-dir>/<variant>/seed<N>/`; running the sweep again reuses finished
runs (an interrupted sweep continues where it stopped) unless `--fresh`. `--reuse <earlier report>.json` also counts
the runs an earlier report recorded (same recipe, variant and seed) as finished, so that adding seeds to a committed
table does not retrain the seeds it already has when the runs folder is gone. Variants that cannot differ from one
already trained (a modality no example has) are not trained, and the table says why.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .ablate import REGRESSION_COLUMNS, VARIANT_NAMES, VARIANTS, Variant, not_applicable, scores, scores_line
from .analysis import DatasetSpec, ExampleSets, command_line, fmt_triple, markdown_table, progress
from ..checkpoint import CheckpointError, load_checkpoint
from ..config import ConfigError, EGMFConfig, build_dataclass
from ..data import DatasetError
from .evaluate import AUDIO_VIEWS, predict_examples, report
from .examples import Example
from .metrics import classification_report, expert_similarity, gate_report
from ..model import EGMFModel
from .run_config import RunConfig
from .train import Trainer, add_machine_args, apply_machine_args

MODALITIES: tuple[str, ...] = ("audio", "video", "text")
_SWITCH = {"audio": "use_audio", "video": "use_video", "text": "use_text"}


@dataclass(frozen=True)
class RunPlan:
    """One variant x seed: its run config and where its results live."""

    variant: Variant
    seed: int
    cfg: RunConfig

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.train.out_dir)


def variant_config(base: RunConfig, variant: Variant, seed: int, runs_dir: Path) -> RunConfig | str:
    """The base recipe with the variant's part removed and its own seed and folder, or why it cannot be trained."""
    overrides = variant.overrides(base.model)
    reason = not_applicable(base.model, overrides)
    if reason:
        return reason
    if "lora" in overrides and not base.train.lm_weight:
        return "the fusion-only recipe trains no LoRA and never runs the LLM"
    cfg = copy.deepcopy(base)
    merged = cfg.model.to_dict()
    for section, values in overrides.items():
        merged[section].update(values)
    cfg.model = EGMFConfig.from_dict(merged)
    if "lora" in overrides:
        cfg.train.train_lora = False
    cfg.train.seed = seed
    cfg.train.out_dir = str(runs_dir / variant.name / f"seed{seed}")
    return cfg


def removed_modalities(cfg: EGMFConfig) -> frozenset[str]:
    return frozenset(m for m in MODALITIES if not getattr(cfg.ablation, _SWITCH[m]))


def differs_only_in_modalities(cfg: EGMFConfig, base: EGMFConfig) -> bool:
    """True when `cfg` is `base` with (at most) some modalities removed: no expert, gate or LoRA change."""
    rest, base_rest = cfg.to_dict(), base.to_dict()
    for d in (rest, base_rest):
        for m in MODALITIES:
            d["ablation"][_SWITCH[m]] = True
    return rest == base_rest


def same_as(cfg: EGMFConfig, base: EGMFConfig, present: set[str], trained: dict[frozenset[str], str]) -> str | None:
    """The label of an already trained variant this one cannot differ from, or None.

    Removing a modality that no training or test example has changes nothing, so a variant that differs from the
    base only in removed modalities is the same run as the one that removed just the present ones."""
    if not differs_only_in_modalities(cfg, base):
        return None
    return trained.get(removed_modalities(cfg) & present)


def modalities_present(examples: Sequence[Example]) -> set[str]:
    xs = [e.input for e in examples]
    found = {
        "audio": any(x.audio is not None and len(x.audio) > 0 for x in xs),
        "video": any(x.visual is not None and len(x.visual) > 0 for x in xs),
        "text": any(x.current.text.strip() for x in xs),
    }
    return {m for m, ok in found.items() if ok}


def test_datasets(cfg: RunConfig, ravdess_audio: Sequence[str] = ()) -> list[DatasetSpec]:
    """The datasets the recipe trains on that `egmf_core.research.evaluate` can score: their test splits are the table.
    RAVDESS is scored on each audio view in `ravdess_audio` (default: the one the recipe trains on)."""
    specs = [DatasetSpec("meld")] if cfg.data.meld else []
    if cfg.data.ravdess:
        specs += [DatasetSpec("ravdess", audio=view) for view in (ravdess_audio or [cfg.data.ravdess_audio])]
    specs += [DatasetSpec(x.name, None if x.label_set == "default" else x.label_set) for x in cfg.data.extra]
    if cfg.data.mmsa:
        specs.append(DatasetSpec(cfg.data.mmsa.dataset))
    return specs


@torch.inference_mode()
def aux_predictions(model: EGMFModel, examples: Sequence[Example],
                    batch_size: int = 32) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The auxiliary head's label for each example (argmax over the dataset's own labels, as the LLM's answer is
    constrained to them), with the gate weights (N, 3) and the experts' outputs (N, 3, d_h)."""
    label_set = examples[0].input.label_set
    labels = model.prompts.label_sets[label_set]
    columns = torch.tensor([model.aux_labels.index(lab) for lab in labels], device=model.device)
    preds, alphas, experts = [], [], []
    for b in range(0, len(examples), batch_size):
        fusion, _ = model.run_fusion([e.input for e in examples[b : b + batch_size]])
        logits = model.fusion.aux_head(fusion.enhanced)[:, columns]
        preds += [labels[i] for i in logits.argmax(-1).tolist()]
        alphas.append(fusion.alpha.float().cpu().numpy())
        experts.append(fusion.expert_outputs.float().cpu().numpy())
    return preds, np.concatenate(alphas), np.concatenate(experts)


def aux_report(model: EGMFModel, examples: Sequence[Example], batch_size: int = 32) -> dict:
    """The auxiliary head's emotion classification plus the gate and expert checks, in `evaluate.report`'s layout."""
    preds, alphas, experts = aux_predictions(model, examples, batch_size)
    labels = model.prompts.label_sets[examples[0].input.label_set]
    out = {"emotion": classification_report([e.input.emotion for e in examples], preds, labels)}
    out["gate"] = gate_report(alphas)
    out["expert_cosine"] = expert_similarity(experts)
    return out


def score_run(checkpoint: Path, fusion_only: bool, datasets: Sequence[DatasetSpec], sets: ExampleSets,
              batch_size: int) -> tuple[dict, set[str]]:
    """Test scores of one trained variant on every dataset (`ablate.scores`' keys, plus the mean gate weights), and
    the modalities the test examples have."""
    model = load_checkpoint(checkpoint)
    out, present = {}, set()
    for spec in datasets:
        examples = sets.get(model, spec)
        present |= modalities_present(examples)
        if fusion_only:
            rep = aux_report(model, examples, batch_size)
        else:
            rep = report(model, examples, predict_examples(model, examples, batch_size, progress=True))
        out[spec.key] = {"scores": scores(rep), "alpha_mean": rep["gate"]["alpha_mean"], "n": len(examples)}
    return out, present


@dataclass(frozen=True)
class RecordedRun:
    """A finished run as an earlier report recorded it, with that report's test sets."""

    run: dict
    report: Path
    tests: dict

    def matches(self, cfg: RunConfig, tests: dict) -> bool:
        """Whether this run is the one `cfg` would train, scored on the same `tests`."""
        return self.tests == tests and _recipe(self.run["config"]) == _recipe(_config_json(cfg))


def recorded_runs(reports: Sequence[Path]) -> dict[tuple[str, int], RecordedRun]:
    """The runs earlier reports (this module's JSON) hold, by (variant, seed)."""
    out: dict[tuple[str, int], RecordedRun] = {}
    for path in reports:
        try:
            report = json.loads(Path(path).read_text())
            for row in report["variants"]:
                for run in row.get("runs", []):
                    out[(row["variant"], run["seed"])] = RecordedRun(run, Path(path), report["datasets"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"--reuse {path}: not a report of python -m egmf_core.research.ablate_retrained "
                              f"({exc})") from exc
    return out


def _config_json(cfg: RunConfig) -> dict:
    return json.loads(json.dumps(asdict(cfg)))


def _recipe(config: dict) -> dict:
    """A run's config, as today's config classes read it, without its output folder: two runs with equal recipes
    are the same run. Reading it back fills the fields added since the run with their defaults, which keep the old
    behaviour (e.g. `data.ravdess_audio: clip`), so a recorded run stays reusable after the config grows."""
    config = _config_json(build_dataclass(RunConfig, config))
    return {**config, "train": {k: v for k, v in config["train"].items() if k != "out_dir"}}


def run_sweep(base: RunConfig, variants: Sequence[Variant], seeds: Sequence[int], runs_dir: Path,
              limit: int | None = None, fresh: bool = False, batch_size: int = 16,
              recorded: dict[tuple[str, int], RecordedRun] | None = None, ravdess_audio: Sequence[str] = (),
              on_variant: Callable[[dict], None] | None = None) -> dict:
    """Train (or reuse) every variant x seed, score each on the test splits; returns the JSON-ready result.
    `variants` must start with the full model: the modalities its runs saw decide which removals can matter.
    `recorded`: runs from earlier reports (:func:`recorded_runs`), reused where the recipe is the same.
    `on_variant` gets the result so far after every variant (the CLI rewrites its report, so a sweep cut short by a
    time limit still leaves the table of the variants it finished)."""
    if not variants or variants[0].name != "full":
        raise ValueError("the variants must start with the full model")
    datasets = test_datasets(base, ravdess_audio)
    if not datasets:
        raise ConfigError("the config trains on no dataset that evaluate can score (meld, ravdess, extra, mmsa)")
    mmsa = base.data.mmsa
    sets = ExampleSets("test", {d.name: limit for d in datasets},
                       {mmsa.dataset: mmsa.folder} if mmsa and mmsa.folder else None)
    fusion_only = not base.train.lm_weight
    present: set[str] = set()
    trained: dict[frozenset[str], str] = {}  # modalities removed -> the variant trained that way
    tests = {d.key: {"split": "test", "limit": limit} for d in datasets}
    rows = []
    start = time.perf_counter()

    def result() -> dict:
        return {
            "kind": "retrained ablations (" + ("fusion stack through the auxiliary emotion head" if fusion_only
                                               else "LoRA + fusion, scored by the LLM's answers") + ")",
            "fusion_only": fusion_only,
            "seeds": list(seeds),
            "train": asdict(base.train),
            "datasets": tests,
            "variants": rows,
            "seconds": round(time.perf_counter() - start, 1),
        }

    for variant in variants:
        runs, skipped = [], None
        for seed in seeds:
            cfg = variant_config(base, variant, seed, runs_dir)
            if isinstance(cfg, str):
                skipped = cfg
                break
            if trained and (twin := same_as(cfg.model, base.model, present, trained)):
                skipped = f"no example has the removed modality: same run as {twin}"
                break
            earlier = (recorded or {}).get((variant.name, seed))
            if earlier is not None and not earlier.matches(cfg, tests):
                earlier = None
            runs.append(_train_and_score(RunPlan(variant, seed, cfg), fusion_only, datasets, sets, fresh, batch_size,
                                         earlier))
            if variant.name == "full":
                present |= set(runs[-1]["modalities_present"])
            progress(f"{variant.label} seed {seed}: " + "; ".join(
                f"{key} {scores_line(r['scores'])}" for key, r in runs[-1]["test"].items())
                + f" ({time.perf_counter() - start:.0f} s elapsed)")
        if skipped:
            progress(f"{variant.label}: not trained ({skipped})")
            rows.append({"variant": variant.name, "label": variant.label, "skipped": skipped})
        else:
            if differs_only_in_modalities(cfg.model, base.model):
                trained.setdefault(removed_modalities(cfg.model) & present, variant.label)
            rows.append({"variant": variant.name, "label": variant.label, "runs": runs,
                         "test": _aggregate([r["test"] for r in runs])})
        if on_variant is not None:
            on_variant(result())
    return result()


def _train_and_score(plan: RunPlan, fusion_only: bool, datasets: Sequence[DatasetSpec], sets: ExampleSets,
                     fresh: bool, batch_size: int, recorded: RecordedRun | None = None) -> dict:
    """One variant x seed: trained and scored, unless a finished run with the same config is in its folder or
    `recorded` (an earlier report's run with the same recipe and test sets) is given."""
    done = plan.out_dir / "ablation_run.json"
    config = _config_json(plan.cfg)
    if not fresh and done.exists():
        previous = json.loads(done.read_text())
        if _recipe(previous["config"]) == _recipe(config):
            progress(f"{plan.variant.label} seed {plan.seed}: reusing {done}")
            return previous
    if not fresh and recorded is not None:
        progress(f"{plan.variant.label} seed {plan.seed}: reusing the run recorded in {recorded.report}")
        return {**recorded.run, "reused_from": str(recorded.report)}
    progress(f"training {plan.variant.label} seed {plan.seed} -> {plan.out_dir}")
    trainer = Trainer(plan.cfg)
    present = modalities_present(trainer.train_set)
    result = trainer.run()
    del trainer
    best = next(h for h in result["history"] if h["dev"]["selection_score"] == result["best"])
    test, test_present = score_run(plan.out_dir / "best.safetensors", fusion_only, datasets, sets, batch_size)
    run = {
        "seed": plan.seed,
        "train_seconds": round(result["train_seconds"], 1),
        "best_epoch": best["epoch"],
        "dev_selection_score": result["best"],
        "modalities_present": sorted(present | test_present),
        "test": test,
        "config": config,
    }
    done.write_text(json.dumps(run, indent=1))
    return run


def _aggregate(per_seed: Sequence[dict]) -> dict:
    """Mean and (with several seeds) sample standard deviation over seeds of every score, per dataset."""
    out = {}
    for key in per_seed[0]:
        vals = {m: [s[key]["scores"][m] for s in per_seed] for m in per_seed[0][key]["scores"]}
        out[key] = {
            "mean": {m: float(np.mean(v)) for m, v in vals.items()},
            "std": {m: float(np.std(v, ddof=1)) if len(v) > 1 else None for m, v in vals.items()},
            "alpha_mean": np.mean([s[key]["alpha_mean"] for s in per_seed], axis=0).tolist(),
            "n": per_seed[0][key]["n"],
        }
    return out


HEADER_FUSION = """\
**Retrained ablations of the fusion stack.** Every row is trained from scratch without the part, with the same
recipe, data, seeds and number of steps, selected on dev, and scored on the test split. Fusion-only recipe: the
fusion stack learns through the auxiliary emotion head on f_enhanced (the vector the K pseudo tokens are projected
from) and is scored by that head, so the table measures what each part adds to the fused representation; the LLM is
not trained or run (the paper's own retrained variants also fine-tune the LLM; `--config` with `train.lm_weight > 0`
runs that recipe, practical on a GPU). Complements `ablations.md`, which removes parts from the shipped checkpoint
at inference."""

HEADER_ANSWERS = """\
**Retrained ablations.** Every row is trained from scratch without the part (LoRA + fusion, answer loss), with the
same recipe, data, seeds and number of steps, selected on dev, and scored by the LLM's answers on the test split with
`egmf_core.research.evaluate`'s code, as the paper's ablation table. Complements `ablations.md` (parts removed at inference)."""


def render_markdown(result: dict, command: str) -> str:
    seeds = result["seeds"]
    runs = [r for row in result["variants"] for r in row.get("runs", [])]
    reused = sorted({r["reused_from"] for r in runs if "reused_from" in r})
    took = f"{result['seconds'] / 60:.0f} min"
    if reused:
        n = sum("reused_from" in r for r in runs)
        took += (f" for the runs it trained; {n} of {len(runs)} runs reused as recorded in {', '.join(reused)}, "
                 f"{sum(r['train_seconds'] for r in runs if 'reused_from' in r) / 60:.0f} min of training there")
    parts = ["# Retrained ablations", "", HEADER_FUSION if result["fusion_only"] else HEADER_ANSWERS, "",
             f"Command: `{command}` ({took}; seeds {', '.join(map(str, seeds))}; "
             f"{result['train']['epochs']} epochs of batch {result['train']['batch_size']} per run).", ""]
    full = next((r for r in result["variants"] if r["variant"] == "full" and "test" in r), None)
    for key, info in result["datasets"].items():
        n = full["test"][key]["n"] if full else "?"
        metrics = _metric_columns(full["test"][key]["mean"] if full else {})
        header = ["variant"] + [label for _, label, _ in metrics] + ["dev (selection)", "alpha mean (E1 / E2 / E3)",
                                                                     "alpha entropy", "expert cosine"]
        rows = []
        for row in result["variants"]:
            if "skipped" in row:
                rows.append([row["label"], f"not trained: {row['skipped']}"] + [""] * (len(header) - 2))
                continue
            t = row["test"][key]
            cells = [row["label"]]
            for m, _, digits in metrics:
                cell = f"{t['mean'][m]:.{digits}f}"
                if t["std"][m] is not None:
                    cell += f" ± {t['std'][m]:.{digits}f}"
                if full and row is not full:
                    cell += f" ({t['mean'][m] - full['test'][key]['mean'][m]:+.{digits}f})"
                cells.append(cell)
            dev = [r["dev_selection_score"] for r in row["runs"]]
            cells += [f"{np.mean(dev):.2f}", fmt_triple(t["alpha_mean"]), f"{t['mean']['alpha_entropy']:.3f}",
                      f"{t['mean']['expert_cosine']:.2f}"]
            rows.append(cells)
        limit = f"first {info['limit']}" if info["limit"] else "all"
        title = key.replace("@live", " (live cuts: each clip as the live segmenter cuts and frames it)")
        parts += [f"## {title}, test split ({limit}: n = {n})", "", markdown_table(header, rows), ""]
    spread = "mean ± standard deviation over the seeds" if len(seeds) > 1 else "one seed"
    parts.append(f"Scores in percent, {spread}; (+/-x) is the difference of the means to the full model. Dev: the "
                 "selection score of the kept checkpoint. Gate entropy in nats (ln 3 = 1.099 is equal weights). Raw "
                 "numbers and every run's config: the JSON file beside this one.")
    return "\n".join(parts) + "\n"


def _metric_columns(full_scores: dict) -> list[tuple[str, str, int]]:
    if "mae" in full_scores:
        return [c for c in REGRESSION_COLUMNS if c[0] in full_scores]
    cols = [("emotion_accuracy", "acc", 2), ("emotion_weighted_f1", "wF1", 2)]
    if "sentiment_weighted_f1" in full_scores:
        cols.append(("sentiment_weighted_f1", "sentiment wF1", 2))
    return cols


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m egmf_core.research.ablate_retrained",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/ablation_fusion.yaml", help="the training recipe every variant uses")
    ap.add_argument("--variants", nargs="+", choices=VARIANT_NAMES, default=list(VARIANT_NAMES),
                    help="variants to train, in this order (default: all); the full model always is, and comes first")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0], help="one run per seed and variant (default: 0)")
    ap.add_argument("--runs-dir", default="runs/ablate_retrained", help="each run's checkpoint and scores")
    ap.add_argument("--limit", type=int, default=None, help="score only the first N test utterances of each dataset")
    ap.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    ap.add_argument("--fresh", action="store_true", help="retrain runs already finished in --runs-dir")
    ap.add_argument("--test-audio", nargs="+", choices=AUDIO_VIEWS, default=[],
                    help="score RAVDESS on these audio views: whole clips and/or live cuts (default: the view the "
                    "recipe trains on, data.ravdess_audio)")
    ap.add_argument("--reuse", nargs="+", type=Path, default=[], metavar="REPORT_JSON",
                    help="count the runs these earlier reports recorded as finished (same recipe, variant, seed and "
                    "test sets), e.g. the committed benchmarks/results/ablations_retrained.json when adding seeds")
    add_machine_args(ap)
    ap.add_argument("--out", default="benchmarks/results/ablations_retrained.md",
                    help="Markdown; the JSON goes beside it")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        base = RunConfig.from_yaml(args.config)
        if args.epochs:
            base.train.epochs = args.epochs
        apply_machine_args(base, args)
        by_name = {v.name: v for v in VARIANTS}
        variants = [by_name["full"]] + [by_name[n] for n in dict.fromkeys(args.variants) if n != "full"]
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        command = command_line("egmf_core.research.ablate_retrained", argv)

        def write(result: dict) -> None:
            out.write_text(render_markdown(result, command))
            out.with_suffix(".json").write_text(json.dumps(result, indent=1))

        result = run_sweep(base, variants, args.seeds, Path(args.runs_dir), args.limit, args.fresh,
                           recorded=recorded_runs(args.reuse), ravdess_audio=args.test_audio, on_variant=write)
    except (CheckpointError, ConfigError, DatasetError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write(result)
    progress(f"report: {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
