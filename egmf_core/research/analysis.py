"""Shared plumbing of the analysis commands (`egmf_core.research.ablate`, `egmf_core.research.gate_analysis`).

Both score checkpoints on several datasets with exactly `egmf_core.research.evaluate`'s code, so their numbers are the
ones `python -m egmf_core.research.evaluate` prints. What lives here is what they have in common beyond that: the
dataset and limit options, building each dataset's examples once (tokenized turns and audio features, the slow part to
load) for every model scored on them, and Markdown tables. The MMSA sentiment benchmarks (mosi, mosei, sims, simsv2) are
scored like `evaluate --dataset mosei`: from a converted folder, with MMSA's regression metrics.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..data import UtteranceRecord
from ..data.mmsa import MMSA_DATASETS, MmsaDataset
from .eval_examples import dataset_examples, mmsa_examples, open_mmsa
from .evaluate import EVAL_DATASETS
from .feature_lookup import AUDIO_VIEWS, whisper_audio_lookup
from .examples import AudioLookup, Example
from ..model import EGMFModel

DEFAULT_DATASETS: tuple[str, ...] = ("meld", "ravdess")
ANALYSIS_DATASETS: tuple[str, ...] = EVAL_DATASETS + tuple(MMSA_DATASETS)
EXPERT_NAMES: tuple[str, ...] = ("E1 local", "E2 semantic", "E3 global")


@dataclass(frozen=True)
class DatasetSpec:
    """One benchmark: a dataset and optionally its label set (`iemocap:iemocap6`), as `evaluate --label-set`, and
    which audio its files give (`ravdess@live`: live cuts, as `evaluate --audio live`)."""

    name: str
    label_set: str | None = None
    audio: str = "clip"

    @property
    def key(self) -> str:
        key = f"{self.name}:{self.label_set}" if self.label_set else self.name
        return key if self.audio == "clip" else f"{key}@{self.audio}"

    @property
    def is_mmsa(self) -> bool:
        """An MMSA sentiment benchmark: gold sentiment scores and no emotion labels, so it is scored differently."""
        return self.name in MMSA_DATASETS

    @classmethod
    def parse(cls, text: str) -> "DatasetSpec":
        text, _, audio = text.partition("@")
        if audio and audio not in AUDIO_VIEWS:
            raise argparse.ArgumentTypeError(f"@{audio}: the audio is one of {', '.join(AUDIO_VIEWS)}")
        name, _, label_set = text.partition(":")
        if name not in ANALYSIS_DATASETS:
            raise argparse.ArgumentTypeError(f"unknown dataset {name!r}; choose from {', '.join(ANALYSIS_DATASETS)}")
        if label_set and name in MMSA_DATASETS:
            raise argparse.ArgumentTypeError(f"{text!r}: no label set applies to {name}, which is answered in its own "
                                             f"sentiment-only label set {name!r}; write {name}")
        return cls(name, label_set or None, audio or "clip")


def add_dataset_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--datasets", nargs="+", type=DatasetSpec.parse, default=[DatasetSpec(d) for d in DEFAULT_DATASETS],
                    metavar="NAME[:LABEL_SET]",
                    help=f"datasets to score (default: {' '.join(DEFAULT_DATASETS)}); any of "
                    f"{', '.join(EVAL_DATASETS)}, optionally with a label set as in evaluate's --label-set "
                    f"(iemocap:iemocap6), or the MMSA sentiment benchmarks {', '.join(MMSA_DATASETS)}")
    ap.add_argument("--mmsa-folder", action="append", default=[], metavar="NAME=PATH",
                    help="converted MMSA folder of one data set (repeatable; PATH alone when one MMSA data set is "
                    "scored, as evaluate's --mmsa-folder); default <data dir>/mmsa/<name>")
    ap.add_argument("--split", default="test", help="test, dev or train (MMSA's 'valid' split is 'dev' here)")
    ap.add_argument("--limit", action="append", default=[], metavar="N|DATASET=N",
                    help="score only the first N utterances of every dataset, or of one dataset (repeatable): "
                    "--limit 200 --limit ravdess=120")
    ap.add_argument("--batch-size", type=int, default=16)


def parse_limits(values: Sequence[str], datasets: Sequence[DatasetSpec]) -> dict[str, int | None]:
    """`--limit` values -> the limit of each dataset (by name); a per-dataset value beats the global one."""
    names = {d.name for d in datasets}
    default: int | None = None
    per: dict[str, int] = {}
    for value in values:
        name, sep, number = value.rpartition("=")
        if not number.isdigit() or int(number) < 1:
            raise ValueError(f"--limit {value!r}: expected a positive N or DATASET=N")
        if not sep:
            default = int(number)
        elif name in names:
            per[name] = int(number)
        else:
            raise ValueError(f"--limit {value!r}: {name!r} is not one of the datasets scored "
                             f"({', '.join(sorted(names))})")
    return {name: per.get(name, default) for name in names}


def parse_mmsa_folders(values: Sequence[str], datasets: Sequence[DatasetSpec]) -> dict[str, str]:
    """`--mmsa-folder` values -> the folder of each MMSA data set named; the others use the default folder.

    A bare PATH is accepted when exactly one MMSA data set is scored, so evaluate's `--mmsa-folder PATH` works as is.
    """
    scored = [d.name for d in datasets if d.is_mmsa]
    folders: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or name not in MMSA_DATASETS:
            if len(scored) != 1:
                raise ValueError(f"--mmsa-folder {value!r}: expected NAME=PATH with NAME one of the MMSA data sets "
                                 f"scored ({', '.join(scored) or 'none'}); PATH alone only when exactly one is scored")
            name, path = scored[0], value
        if name not in scored:
            raise ValueError(f"--mmsa-folder {value!r}: {name!r} is not one of the MMSA data sets scored "
                             f"({', '.join(scored) or 'none'}); add it to --datasets")
        if not path:
            raise ValueError(f"--mmsa-folder {value!r}: expected a folder path after '{name}='")
        folders[name] = path
    return folders


class ExampleSets:
    """Each dataset's examples, built once and handed to every model scored on them.

    An example holds the tokenized turns and the audio features; nothing in it depends on an ablation (text removal
    is applied when the prompt is assembled, modalities are masked inside the fusion stack). It does depend on the
    tokenizer and the prompt and task settings, so checkpoints that differ there get their own copy. The Whisper
    front end is opened only when a dataset has audio. An MMSA data set comes with its features: its converted folder
    (`mmsa_folders[name]`, else `<data dir>/mmsa/<name>`) is opened once.
    """

    def __init__(self, split: str, limits: dict[str, int | None], mmsa_folders: dict[str, str] | None = None):
        self.split = split
        self.limits = limits
        self.mmsa_folders = mmsa_folders or {}
        self._built: dict[tuple[str, str], list[Example]] = {}
        self._lookups: dict[str, AudioLookup] = {}
        self._mmsa: dict[str, MmsaDataset] = {}

    def _audio(self, view: str, loudness_lufs: float | None) -> AudioLookup:
        """The view's lookup for a model's input normalization, opened (with its recognizer) on first use by a record
        that has audio."""

        def lookup(rec: UtteranceRecord):
            key = f"{view}@{loudness_lufs}"
            if key not in self._lookups:
                self._lookups[key] = whisper_audio_lookup(view, loudness_lufs)
            return self._lookups[key](rec)

        return lookup

    def get(self, model: EGMFModel, spec: DatasetSpec) -> list[Example]:
        cfg = model.cfg
        prompt_key = json.dumps(
            {"backbone": cfg.backbone.name, "prompt": dataclasses.asdict(cfg.prompt),
             "task": dataclasses.asdict(cfg.task), "loudness_lufs": cfg.fusion.audio_loudness_lufs},
            sort_keys=True,
        )
        key = (spec.key, prompt_key)
        if key not in self._built:
            t0 = time.perf_counter()
            limit = self.limits.get(spec.name)
            if spec.is_mmsa:
                examples = mmsa_examples(model, self._mmsa_split(spec.name), limit)
            else:
                audio = self._audio(spec.audio, cfg.fusion.audio_loudness_lufs)
                examples = dataset_examples(model, spec.name, self.split, limit, audio=audio, label_set=spec.label_set)
            progress(f"  {spec.key} {self.split}: {len(examples)} examples built in {time.perf_counter() - t0:.1f} s")
            self._built[key] = examples
        return self._built[key]

    def _mmsa_split(self, name: str) -> MmsaDataset:
        if name not in self._mmsa:
            self._mmsa[name] = open_mmsa(name, self.split, self.mmsa_folders.get(name))
        return self._mmsa[name]


def progress(line: str) -> None:
    print(line, flush=True)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_triple(values: Sequence[float], digits: int = 2) -> str:
    """Gate weights of the three experts in one cell: "0.74 / 0.24 / 0.02"."""
    return " / ".join(f"{v:.{digits}f}" for v in values)


def command_line(prog: str, argv: Sequence[str] | None) -> str:
    """The command as run, for the report's header (so a table says how to reproduce it)."""
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join([f"python -m {prog}", *args])


def write_report(report: Path, result: dict, markdown: Callable[[dict], str]) -> None:
    """Write `report` (Markdown: `markdown(result)`) and the JSON beside it, and print the Markdown: the closing step
    of the commands that report one result file."""
    report.parent.mkdir(parents=True, exist_ok=True)
    report.with_suffix(".json").write_text(json.dumps(result, indent=2))
    text = markdown(result)
    report.write_text(text)
    print(text)


def describe_examples(spec: DatasetSpec, split: str, limit: int | None, examples: Sequence[Example]) -> dict:
    """What was scored, whatever the model: the utterances, their gold labels and the modalities present. An MMSA
    data set's gold is a sentiment score on its own scale (`gold_score`); its `gold_emotion` are all None."""
    xs = [e.input for e in examples]
    gold = {"gold_score": [float(e.record.meta["label"]) for e in examples]} if spec.is_mmsa else {}
    return {
        "dataset": spec.name,
        "key": spec.key,
        "label_set": xs[0].label_set,
        "split": split,
        "limit": limit,
        "n": len(xs),
        "utterances": [f"{e.record.dialogue_id}/{e.record.utterance_index}" for e in examples],
        "gold_emotion": [x.emotion for x in xs],
        **gold,
        "modalities_present": {
            "audio": sum(x.audio is not None and len(x.audio) > 0 for x in xs),
            "video": sum(x.visual is not None and len(x.visual) > 0 for x in xs),
            "text": sum(bool(x.current.text.strip()) for x in xs),
        },
    }


def dataset_title(info: dict) -> str:
    """"meld test (first 200 utterances: n = 200 scored)" from `describe_examples`' output."""
    kind = f"first {info['limit']} utterances" if info["limit"] is not None else "all utterances"
    return f"{info['key']} {info['split']} ({kind}: n = {info['n']} scored)"
