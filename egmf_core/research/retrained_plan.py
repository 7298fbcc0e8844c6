"""The retrained ablations' plan: which variant x seed runs exist, with what recipe, and which are already done.

A variant's recipe is the base recipe with its part removed (:func:`variant_config`); variants that cannot differ
from one already trained are found here (:func:`same_as`), and so are the runs an earlier report recorded
(:class:`RecordedRun`, :func:`recorded_runs`, compared by :func:`run_recipe`). Apart from the sweep
(`egmf_core.research.ablate_retrained`) because none of it trains or scores anything: the tests check it alone.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from .ablate import Variant, not_applicable
from .analysis import DatasetSpec
from ..config import ConfigError, EGMFConfig, build_dataclass
from .examples import Example
from .run_config import RunConfig

__all__ = ["MODALITIES", "RunPlan", "variant_config", "removed_modalities", "differs_only_in_modalities", "same_as",
           "modalities_present", "test_datasets", "RecordedRun", "recorded_runs", "config_json", "run_recipe"]

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


@dataclass(frozen=True)
class RecordedRun:
    """A finished run as an earlier report recorded it, with that report's test sets."""

    run: dict
    report: Path
    tests: dict

    def matches(self, cfg: RunConfig, tests: dict) -> bool:
        """Whether this run is the one `cfg` would train, scored on the same `tests`."""
        return self.tests == tests and run_recipe(self.run["config"]) == run_recipe(config_json(cfg))


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


def config_json(cfg: RunConfig) -> dict:
    """A run config as plain JSON types (as a report records it)."""
    return json.loads(json.dumps(asdict(cfg)))


def run_recipe(config: dict) -> dict:
    """A run's config, as today's config classes read it, without its output folder: two runs with equal recipes
    are the same run. Reading it back fills the fields added since the run with their defaults, which keep the old
    behaviour (e.g. `data.ravdess_audio: clip`), so a recorded run stays reusable after the config grows."""
    config = config_json(build_dataclass(RunConfig, config))
    return {**config, "train": {k: v for k, v in config["train"].items() if k != "out_dir"}}
