"""RAVDESS speech (actors 01-16): real emotional audio over two lexically neutral sentences.

The words carry no emotion ("Kids are talking by the door" / "Dogs are sitting by the door"), so this data set
measures the audio branch. Labels are mapped onto MELD's seven emotions for joint training, and the original
8-class label is kept in `emotion_original` because the RAVDESS benchmark is 8-class accuracy. Each clip is its own
one-utterance "dialogue" (there is no conversational context). Splits are by actor so that no voice is seen in
both training and evaluation.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field

from egmf_core.data.base import (
    DatasetError,
    LoadedSplit,
    UtteranceRecord,
    resolve_data_dir,
)

log = logging.getLogger(__name__)

RAVDESS_EMOTIONS: tuple[str, ...] = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
RAVDESS_TO_MELD: dict[str, str] = {
    "neutral": "neutral",
    "calm": "neutral",
    "happy": "joy",
    "sad": "sadness",
    "angry": "anger",
    "fearful": "fear",
    "disgust": "disgust",
    "surprised": "surprise",
}


def _default_splits() -> dict[str, tuple[int, ...]]:
    return {"train": tuple(range(1, 11)), "dev": (11, 12), "test": (13, 14, 15, 16)}


@dataclass(frozen=True)
class RavdessConfig:
    """Where RAVDESS lives and which actors form each split.

    The default holds actors 11-12 out for model selection and 13-16 for the test; the shipped checkpoint's recipe
    may instead train on 01-12, e.g. `splits={"train": tuple(range(1, 13)), "test": (13, 14, 15, 16)}`.
    Splits must not share an actor.
    """

    data_dir: str | None = None
    splits: dict[str, tuple[int, ...]] = field(default_factory=_default_splits)
    # False when features come precomputed (e.g. an AudioFeaturePack on a machine without the FLAC files).
    check_files: bool = True

    def __post_init__(self) -> None:
        owner: dict[int, str] = {}
        for split, actors in self.splits.items():
            for actor in actors:
                if actor in owner:
                    raise DatasetError(f"RAVDESS actor {actor} is in both {owner[actor]!r} and {split!r} splits")
                owner[actor] = split


class RavdessDataset(LoadedSplit):
    """One actor-independent RAVDESS split (`split="all"`: every actor of every configured split), ordered by actor then
    file name."""

    name = "ravdess"

    def __init__(self, split: str, config: RavdessConfig | None = None) -> None:
        self.config = config or RavdessConfig()
        if split != "all" and split not in self.config.splits:
            raise DatasetError(f"RAVDESS split must be 'all' or one of {tuple(self.config.splits)}, got {split!r}")
        self.split = split
        self.root = resolve_data_dir(self.config.data_dir) / "ravdess"
        self.actors = (
            tuple(sorted(a for actors in self.config.splits.values() for a in actors))
            if split == "all"
            else tuple(sorted(self.config.splits[split]))
        )
        self._records = self._load()
        log.info("RAVDESS %s: %d clips from actors %s", split, len(self._records), self.actors)

    def _load(self) -> list[UtteranceRecord]:
        labels = self.root / "labels.csv"
        if not labels.is_file():
            raise DatasetError(f"RAVDESS labels {labels} not found")
        records: list[UtteranceRecord] = []
        with labels.open(encoding="utf-8", newline="") as handle:
            for line, row in enumerate(csv.DictReader(handle), start=2):
                try:
                    actor = int(row["actor"])
                    if actor in self.actors:
                        records.append(self._record(row, actor))
                except (KeyError, ValueError) as exc:
                    raise DatasetError(f"{labels}:{line}: {exc}") from exc
        records.sort(key=lambda r: (r.speaker, r.dialogue_id))  # speaker is zero-padded: "actor_01"
        return records

    def _record(self, row: dict[str, str], actor: int) -> UtteranceRecord:
        original = row["emotion"].strip().lower()
        if original not in RAVDESS_TO_MELD:
            raise ValueError(f"emotion must be one of {RAVDESS_EMOTIONS}, got {original!r}")
        audio = self.root / row["file"]
        if self.config.check_files and not audio.is_file():
            raise ValueError(f"audio file {audio} not found")
        return UtteranceRecord(
            dataset=self.name,
            split=self.split,
            dialogue_id=audio.stem,
            utterance_index=0,
            speaker=f"actor_{actor:02d}",
            text=row["statement"].strip(),
            emotion=RAVDESS_TO_MELD[original],
            sentiment=None,
            audio_path=str(audio),
            emotion_original=original,
            meta={"intensity": row["intensity"], "repetition": row["repetition"], "gender": row["gender"]},
        )
