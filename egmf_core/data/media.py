"""Short real video clips in `media/`: MEAD posed-emotion clips and unlabeled talking-head videos.

These are test and demo assets (a handful of clips, research-only or unstated licenses), not training data, so the
only split is `"test"`. Their words are not transcribed (`text == ""`): the live path gets text from the speech
recognizer. MEAD's `contempt` has no MELD equivalent, so it keeps `emotion=None` with `emotion_original="contempt"`.
Clips without an audio stream have `audio_path=None` (masked), never silence.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass

from egmf_core.config import EMOTIONS
from egmf_core.data.base import (
    DatasetError,
    LoadedSplit,
    UtteranceRecord,
    resolve_data_dir,
)

log = logging.getLogger(__name__)

MEDIA_SUBSETS: tuple[str, ...] = ("mead", "talking_heads")


@dataclass(frozen=True)
class MediaConfig:
    """Which clip folder to read (`"mead"` or `"talking_heads"`) and where the data lives."""

    subset: str = "mead"
    data_dir: str | None = None

    def __post_init__(self) -> None:
        if self.subset not in MEDIA_SUBSETS:
            raise DatasetError(f"media subset must be one of {MEDIA_SUBSETS}, got {self.subset!r}")


class MediaDataset(LoadedSplit):
    """The clips of one media subset, one single-utterance "dialogue" per clip, ordered by file name."""

    name = "media"
    split = "test"

    def __init__(self, split: str = "test", config: MediaConfig | None = None) -> None:
        if split != self.split:
            raise DatasetError(f"media clips only have a 'test' split, got {split!r}")
        self.config = config or MediaConfig()
        self.root = resolve_data_dir(self.config.data_dir) / "media" / self.config.subset
        if not self.root.is_dir():
            raise DatasetError(f"media folder {self.root} not found")
        self._records = self._load_mead() if self.config.subset == "mead" else self._load_unlabeled()
        log.info("media/%s: %d clips", self.config.subset, len(self._records))

    def _record(self, file: str, emotion: str | None, original: str | None, has_audio: bool) -> UtteranceRecord:
        video = self.root / file
        if not video.is_file():
            raise DatasetError(f"media clip {video} not found")
        return UtteranceRecord(
            dataset=f"{self.name}/{self.config.subset}",
            split=self.split,
            dialogue_id=video.stem,
            utterance_index=0,
            speaker=video.stem,
            text="",
            emotion=emotion,
            sentiment=None,
            audio_path=str(video) if has_audio else None,
            video_path=str(video),
            emotion_original=original,
        )

    def _load_mead(self) -> list[UtteranceRecord]:
        labels = self.root / "labels.csv"
        if not labels.is_file():
            raise DatasetError(f"MEAD labels {labels} not found")
        records = []
        with labels.open(encoding="utf-8", newline="") as handle:
            for line, row in enumerate(csv.DictReader(handle), start=2):
                try:
                    original = row["emotion"].strip().lower()
                    has_audio = {"yes": True, "no": False}[row["has_audio"].strip().lower()]
                    file = row["file"].strip()
                except KeyError as exc:
                    raise DatasetError(f"{labels}:{line}: missing or invalid value {exc}") from exc
                emotion = original if original in EMOTIONS else None
                records.append(self._record(file, emotion, original, has_audio))
        return sorted(records, key=lambda r: r.dialogue_id)

    def _load_unlabeled(self) -> list[UtteranceRecord]:
        return [self._record(p.name, None, None, has_audio=True) for p in sorted(self.root.glob("*.mp4"))]
