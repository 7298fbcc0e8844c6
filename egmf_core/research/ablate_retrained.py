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

The sweep and the command are here; the plan (variants' recipes, reuse of finished runs) is in
`egmf_core.research.retrained_plan`, the scoring in `egmf_core.research.retrained_scoring` and the Markdown report in
`egmf_core.research.retrained_report`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .ablate import VARIANT_NAMES, VARIANTS, Variant, scores_line
from .analysis import DatasetSpec, ExampleSets, command_line, progress
from ..checkpoint import CheckpointError
from ..config import ConfigError
from ..data import DatasetError
from .feature_lookup import AUDIO_VIEWS
from .retrained_plan import (
    RecordedRun,
    RunPlan,
    config_json,
    differs_only_in_modalities,
    modalities_present,
    recorded_runs,
    removed_modalities,
    run_recipe,
    same_as,
    test_datasets,
    variant_config,
)
from .retrained_report import render_markdown
from .retrained_scoring import score_run
from .run_config import RunConfig
from .train import Trainer, add_machine_args, apply_machine_args


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
    config = config_json(plan.cfg)
    if not fresh and done.exists():
        previous = json.loads(done.read_text())
        if run_recipe(previous["config"]) == run_recipe(config):
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
