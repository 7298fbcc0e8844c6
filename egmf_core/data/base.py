"""The dataset interface shared by every loader.

A dataset is an ordered stream of `UtteranceRecord`s. Records of one dialogue are contiguous and in spoken order,
so a consumer can build past-only context (what a live call would have seen) by walking the stream once, without
ever looking at a future utterance. New benchmarks (CMU-MOSEI, CH-SIMS, CHERMA, ...) plug in by implementing the
`Dataset` protocol and mapping their labels onto MELD's seven emotions and the -1..+1 sentiment scale.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

from egmf_core.config import EMOTIONS

log = logging.getLogger(__name__)

DATA_DIR_ENV = "EGMF_DATA_DIR"
# What a loader does with a record whose audio or video file is missing (see `apply_missing_media`).
MISSING_MEDIA_POLICIES: tuple[str, ...] = ("error", "skip", "mask")

# Repository root = two levels above this package (egmf_core/data/base.py -> repo); shared data sits beside it.
_DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"


class DatasetError(ValueError):
    """A dataset folder, file or row is missing or malformed."""


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Find the shared data folder.

    Order: the explicit argument, then `$EGMF_DATA_DIR`, then `<repo root>/../shared/data`. The default is computed
    from this file's location, never a machine-specific absolute path, so a checkout anywhere finds its data.
    """
    if data_dir is not None:
        path = Path(data_dir)
    elif os.environ.get(DATA_DIR_ENV):
        path = Path(os.environ[DATA_DIR_ENV])
    else:
        path = _DEFAULT_DATA_DIR
    path = path.expanduser().resolve()
    if not path.is_dir():
        raise DatasetError(
            f"data directory {path} does not exist; pass data_dir= or set ${DATA_DIR_ENV} to the folder that holds "
            "meld/, ravdess/ and media/"
        )
    return path


@dataclass(frozen=True, slots=True)
class UtteranceRecord:
    """One utterance with its labels and (optional) media.

    Missing things are `None`, never placeholders: a record without `audio_path` has no audio and the audio branch
    must be masked for it. `text` is the ground-truth transcript; it is `""` only for clips whose words are not
    known (the live path transcribes them with the speech recognizer instead).

    `emotion` is always one of MELD's seven names (`egmf_core.config.EMOTIONS`) or `None` when the clip has no label
    or its label has no MELD equivalent; `emotion_original` keeps the dataset's own label (e.g. RAVDESS's 8 classes,
    whose benchmark is 8-class accuracy). `sentiment` is a score in [-1, 1] (-1/0/+1 for MELD's three classes).
    `audio_path` always holds just the utterance (the audio branch encodes whole files of at most 30 s).
    `start_s`/`end_s` locate the utterance inside a `video_path` that holds more than the utterance (IEMOCAP's
    dialogue videos); `None` means the whole file.
    """

    dataset: str
    split: str
    dialogue_id: str
    utterance_index: int
    speaker: str
    text: str
    emotion: str | None
    sentiment: float | None
    audio_path: str | None = None
    video_path: str | None = None
    start_s: float | None = None
    end_s: float | None = None
    language: str = "en"
    emotion_original: str | None = None
    meta: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        if self.emotion is not None and self.emotion not in EMOTIONS:
            raise DatasetError(f"emotion must be one of {EMOTIONS} or None, got {self.emotion!r}")
        if self.sentiment is not None and not (math.isfinite(self.sentiment) and -1.0 <= self.sentiment <= 1.0):
            raise DatasetError(f"sentiment must be a finite score in [-1, 1] or None, got {self.sentiment!r}")
        if self.utterance_index < 0:
            raise DatasetError(f"utterance_index must be >= 0, got {self.utterance_index}")
        if self.start_s is not None and self.end_s is not None and self.end_s < self.start_s:
            raise DatasetError(f"end_s ({self.end_s}) is before start_s ({self.start_s})")

    @property
    def key(self) -> str:
        """A unique, stable id: `dataset/split/dialogue/utterance`."""
        return f"{self.dataset}/{self.split}/{self.dialogue_id}/{self.utterance_index}"


@runtime_checkable
class Dataset(Protocol):
    """What every loader provides.

    Iteration yields records grouped by dialogue, each dialogue in spoken order (`utterance_index` increasing).
    """

    name: str
    split: str

    def __iter__(self) -> Iterator[UtteranceRecord]: ...

    def __len__(self) -> int: ...


class LoadedSplit:
    """Base of the loaders that read their whole split up front (every data set here is small enough, and a
    malformed entry then fails at construction, not mid-epoch): the records, in dataset order, in `_records`."""

    _records: list[UtteranceRecord]

    @property
    def num_dialogues(self) -> int:
        return len({r.dialogue_id for r in self._records})

    def __iter__(self) -> Iterator[UtteranceRecord]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)


def group_dialogues(records: Iterable[UtteranceRecord]) -> Iterator[list[UtteranceRecord]]:
    """Yield the records of each dialogue as one list, checking the ordering contract on the way.

    Raises `DatasetError` when a dialogue reappears after another one started or its indices go backwards, because
    a past-only context built from such a stream would silently include future or foreign turns.
    """
    seen: set[str] = set()
    current: list[UtteranceRecord] = []
    for record in records:
        if current and record.dialogue_id != current[-1].dialogue_id:
            yield current
            current = []
        if not current:
            if record.dialogue_id in seen:
                raise DatasetError(f"dialogue {record.dialogue_id!r} is not contiguous in the stream")
            seen.add(record.dialogue_id)
        elif record.utterance_index <= current[-1].utterance_index:
            raise DatasetError(
                f"dialogue {record.dialogue_id!r}: utterance {record.utterance_index} follows "
                f"{current[-1].utterance_index}; records must be in spoken order"
            )
        current.append(record)
    if current:
        yield current


def check_missing_policy(policy: str) -> None:
    """Raise `DatasetError` unless `policy` is one of `MISSING_MEDIA_POLICIES` (for the loaders' configs)."""
    if policy not in MISSING_MEDIA_POLICIES:
        raise DatasetError(f"on_missing must be one of {MISSING_MEDIA_POLICIES}, got {policy!r}")


def apply_missing_media(records: Sequence[UtteranceRecord], policy: str, where: str) -> list[UtteranceRecord]:
    """Check that every record's `audio_path`/`video_path` exists and apply `policy` to the records that lack one.

    Public copies of the benchmarks often miss a few clips (MELD's dev set lacks `dia110_utt7.mp4`), and a partial
    download must never pass unnoticed. `"error"` raises a `DatasetError` with the number of missing files and the
    first few names; `"skip"` drops the records with a missing file and `"mask"` sets the missing path to `None`
    (that modality is masked), both with a logged warning that gives the same count.
    """
    check_missing_policy(policy)
    exists: dict[str, bool] = {}

    def found(path: str | None) -> bool:
        if path is None:
            return True
        if path not in exists:
            exists[path] = Path(path).is_file()
        return exists[path]

    lacking = [r for r in records if not (found(r.audio_path) and found(r.video_path))]
    if not lacking:
        return list(records)
    missing = sorted(path for path, ok in exists.items() if not ok)
    summary = (
        f"{where}: {len(missing)} media file(s) not found for {len(lacking)} of {len(records)} utterances, "
        f"e.g. {', '.join(Path(p).name for p in missing[:5])}"
    )
    if policy == "error":
        raise DatasetError(f"{summary}; set on_missing='skip' to drop those utterances or 'mask' to mask the modality")
    log.warning("%s; %s", summary, "dropping those utterances" if policy == "skip" else "masking those modalities")
    if policy == "skip":
        return [r for r in records if found(r.audio_path) and found(r.video_path)]
    return [
        replace(
            r,
            audio_path=r.audio_path if found(r.audio_path) else None,
            video_path=r.video_path if found(r.video_path) else None,
        )
        for r in records
    ]
