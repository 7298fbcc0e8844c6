"""CHERMA (Sun et al., ACL 2023): Chinese utterances labelled per modality and for all modalities jointly.

Verified against the authors' public code (github.com/sunjunaimer/LFMIM, `LFMIM0723v2/data_prepare.py`):
- one JSON file per split, `<split>.json`, for `train` and `test` (the code reads no other split);
- each holds a list of objects with `audio_file` (`<name>.wav`), `video_file`, and four labels: `txt_label`,
  `audio_label`, `visual_label` (one modality each) and `video_label`, the multimodal label the model is scored on;
- labels are Chinese words for 7 classes, in the code's order 愤怒 anger, 厌恶 disgust, 恐惧 fear, 高兴 happy,
  平静 neutral, 悲伤 sad, 惊奇 surprise: MELD's seven emotions, one to one;
- the public download holds features (`text|audio/<split>/<name>.npy`, `visual/<split>/<name>.mp4.npy`) from other
  extractors (1024/1024/2048-d) than this project's, so they are not used.

Inferred (the public code does not show it; both are configurable):
- the transcript's field (`text_key`, default `"text"`); a file without it fails with a message saying so;
- where raw clips sit, which the public download does not include: `<root>/audio/<split>/<audio_file>` and
  `<root>/video/<split>/<video_file>`.
The code reads no dialogue or speaker ids, so each utterance is its own one-utterance dialogue with an unknown
speaker. `emotion` is the multimodal label mapped to MELD's names; the original multimodal label (Chinese) is
`emotion_original` and the unimodal labels are in `meta` under their field names. CHERMA has no sentiment labels
(`sentiment=None`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from egmf_core.data.base import (
    DatasetError,
    LoadedSplit,
    UtteranceRecord,
    apply_missing_media,
    check_missing_policy,
    resolve_data_dir,
)

log = logging.getLogger(__name__)

CHERMA_SPLITS: tuple[str, ...] = ("train", "test")
CHERMA_TO_MELD: dict[str, str] = {
    "愤怒": "anger",
    "厌恶": "disgust",
    "恐惧": "fear",
    "高兴": "joy",
    "平静": "neutral",
    "悲伤": "sadness",
    "惊奇": "surprise",
}
_LABEL_FIELDS: tuple[str, ...] = ("video_label", "txt_label", "audio_label", "visual_label")  # multimodal first


@dataclass(frozen=True)
class ChermaConfig:
    """Where CHERMA lives and how its JSON is read.

    `root`: the folder with `train.json`/`test.json`; `None` = `<data dir>/CHERMA` (data dir as in `MeldConfig`).
    `text_key`: the entry field holding the transcript, or `None` to load without text (`text=""`).
    `on_missing`: what a missing clip means: `"error"`, `"skip"` (drop the utterance) or `"mask"` (keep it without
    that modality).
    """

    data_dir: str | None = None
    root: str | None = None
    text_key: str | None = "text"
    on_missing: str = "error"

    def __post_init__(self) -> None:
        check_missing_policy(self.on_missing)


class ChermaDataset(LoadedSplit):
    """One CHERMA split in the order of its JSON file, one single-utterance dialogue per entry."""

    name = "cherma"

    def __init__(self, split: str, config: ChermaConfig | None = None) -> None:
        if split not in CHERMA_SPLITS:
            raise DatasetError(f"CHERMA split must be one of {CHERMA_SPLITS}, got {split!r}")
        self.split = split
        self.config = config or ChermaConfig()
        root = self.config.root
        self.root = Path(root) if root else resolve_data_dir(self.config.data_dir) / "CHERMA"
        self.path = self.root / f"{split}.json"
        records = self._load()
        self._records = apply_missing_media(records, self.config.on_missing, f"CHERMA {split} clips under {self.root}")
        log.info("CHERMA %s: %d utterances", split, len(self._records))

    def _load(self) -> list[UtteranceRecord]:
        if not self.path.is_file():
            raise DatasetError(f"CHERMA file {self.path} not found")
        try:
            entries = json.loads(self.path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{self.path}: not a UTF-8 JSON file: {exc}") from exc
        if not isinstance(entries, list):
            raise DatasetError(f"{self.path}: expected a JSON list of utterances, got {type(entries).__name__}")
        records: list[UtteranceRecord] = []
        seen: set[str] = set()
        for index, entry in enumerate(entries):
            try:
                record = self._record(entry)
            except (TypeError, ValueError) as exc:
                raise DatasetError(f"{self.path}: entry {index}: {exc}") from exc
            if record.dialogue_id in seen:
                raise DatasetError(f"{self.path}: entry {index}: audio_file {record.dialogue_id!r} appears twice")
            seen.add(record.dialogue_id)
            records.append(record)
        return records

    def _record(self, entry: Any) -> UtteranceRecord:
        if not isinstance(entry, dict):
            raise TypeError(f"expected an object, got {type(entry).__name__}")
        for field in ("audio_file", "video_file", *_LABEL_FIELDS):
            if field not in entry:
                raise ValueError(f"missing field {field!r}")
        labels = {field: str(entry[field]).strip() for field in _LABEL_FIELDS}
        for field, label in labels.items():
            if label not in CHERMA_TO_MELD:
                raise ValueError(f"{field} must be one of {tuple(CHERMA_TO_MELD)}, got {label!r}")
        key = self.config.text_key
        if key is not None and key not in entry:
            raise ValueError(
                f"no {key!r} field (the transcript); set ChermaConfig.text_key to the field that holds it, or to "
                "None to load without text"
            )
        audio_file, video_file = str(entry["audio_file"]), str(entry["video_file"])
        return UtteranceRecord(
            dataset=self.name,
            split=self.split,
            dialogue_id=audio_file.removesuffix(".wav"),
            utterance_index=0,
            speaker="",
            text=" ".join(str(entry[key]).split()) if key is not None else "",
            emotion=CHERMA_TO_MELD[labels["video_label"]],
            sentiment=None,
            audio_path=str(self.root / "audio" / self.split / audio_file),
            video_path=str(self.root / "video" / self.split / video_file),
            language="zh",
            emotion_original=labels["video_label"],
            meta={field: labels[field] for field in _LABEL_FIELDS[1:]},
        )
