"""Loading a converted MMSA folder: one split as ``UtteranceRecord``s, each with its precomputed features.

Later runs load only the converted folder, with no flag (nothing here unpickles anything).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from egmf_core.data.base import DatasetError, LoadedSplit, UtteranceRecord, resolve_data_dir
from egmf_core.data.mmsa.spec import FOLDERS, FORMAT, ID_SEPARATOR, INDEX_FILE, MMSA_DATASETS

__all__ = ["default_folder", "MmsaConfig", "MmsaDataset"]

log = logging.getLogger(__name__)


def default_folder(dataset: str, data_dir: str | None = None) -> Path:
    """Where training and evaluation look for a converted folder when none is named: `<data dir>/mmsa/<dataset>`
    (data dir: `data_dir`, else `$EGMF_DATA_DIR`, else `../shared/data` beside the repository)."""
    if dataset not in MMSA_DATASETS:
        raise DatasetError(f"dataset must be one of {tuple(MMSA_DATASETS)}, got {dataset!r}")
    return resolve_data_dir(data_dir) / FOLDERS / dataset


def _clip_order(clip_id: str) -> tuple[int, int, str]:
    """Numeric clip ids in numeric order ("2" before "10"), any others after them, by name."""
    return (0, int(clip_id), clip_id) if clip_id.isascii() and clip_id.isdigit() else (1, 0, clip_id)


@dataclass(frozen=True)
class MmsaConfig:
    """Where a converted MMSA folder is. `dataset`, when set, must match the folder's (guards against mix-ups)."""

    folder: str
    dataset: str | None = None


class MmsaDataset(LoadedSplit):
    """One split of a converted MMSA folder as `UtteranceRecord`s, plus each record's precomputed features.

    Each video is a dialogue (`dialogue_id` = the video id), its clips in clip order (`utterance_index` 0, 1, ...;
    the MMSA clip id is in `meta["clip_id"]`), videos in the order they first appear in the file. `sentiment` is the
    label scaled into [-1, 1]; `meta["label"]` keeps the original, `meta["id"]` the MMSA id, and extra label
    fields (CH-SIMS's `regression_labels_T/A/V`, ...) sit in `meta` under their MMSA names. `emotion` is None
    (these are sentiment benchmarks). Speakers are not annotated in the feature files, so `speaker` is "" (MOSI and
    MOSEI videos are single-speaker monologues: there the video id identifies the speaker). Records have no media
    paths: their audio and vision come from `features(record)`.

    Feature frames are read lazily from the safetensors file, one clip at a time.
    """

    def __init__(self, split: str, config: MmsaConfig) -> None:
        self.config = config
        self.folder = Path(config.folder)
        index_path = self.folder / INDEX_FILE
        if not index_path.is_file():
            raise DatasetError(
                f"{index_path} not found: convert MMSA's pickle first with "
                "`python -m egmf_core.data.mmsa convert --pickle PATH --out DIR --dataset NAME --allow-pickle`"
            )
        index = json.loads(index_path.read_text(encoding="utf-8"))
        if index.get("format") != FORMAT:
            raise DatasetError(f"{index_path}: format {index.get('format')!r} is not {FORMAT!r}; convert again")
        self.name: str = index["dataset"]
        if config.dataset is not None and config.dataset != self.name:
            raise DatasetError(f"{self.folder} holds {self.name!r}, not {config.dataset!r}")
        if split not in index["splits"]:
            raise DatasetError(
                f"MMSA split must be one of {tuple(index['splits'])} (MMSA's 'valid' is 'dev' here), got {split!r}"
            )
        self.split = split
        self.language: str = index["language"]
        self.label_bound: float = float(index["label_bound"])
        self.aligned: bool = bool(index["aligned"])
        self.audio_dim: int = int(index["audio_dim"])
        self.vision_dim: int = int(index["vision_dim"])
        info = index["splits"][split]
        path = self.folder / f"{split}.safetensors"
        if not path.is_file():
            raise DatasetError(f"{path} not found")
        self._file = safe_open(str(path), framework="numpy")
        self._check_arrays(path, info)
        self._records = self._build_records(info)
        log.info("%s %s: %d clips in %d videos", self.name, split, len(self._records), self.num_videos)

    @property
    def fusion_dims(self) -> dict[str, int]:
        """Feature sizes under `FusionConfig`'s field names: `dataclasses.replace(cfg.fusion, **ds.fusion_dims)`."""
        return {"audio_dim": self.audio_dim, "visual_dim": self.vision_dim}

    def _check_arrays(self, path: Path, info: dict[str, Any]) -> None:
        n = int(info["n"])
        stored = set(self._file.keys())
        expected = {"labels": [n], "audio_lengths": [n], "vision_lengths": [n]}
        for key, shape in expected.items():
            if key not in stored or self._file.get_slice(key).get_shape() != shape:
                raise DatasetError(f"{path}: array {key!r} must have shape {tuple(shape)}")
        self._labels = self._file.get_tensor("labels")
        self._offsets: dict[str, np.ndarray] = {}
        for modality, dim in (("audio", self.audio_dim), ("vision", self.vision_dim)):
            lengths = self._file.get_tensor(f"{modality}_lengths").astype(np.int64)
            shape = [int(lengths.sum()), dim]
            if modality not in stored or self._file.get_slice(modality).get_shape() != shape:
                raise DatasetError(f"{path}: array {modality!r} must have shape {tuple(shape)} (frames x dim)")
            self._offsets[modality] = np.concatenate([[0], np.cumsum(lengths)])
        for field in ("ids", "raw_text"):
            if len(info[field]) != n:
                raise DatasetError(
                    f"{self.folder / INDEX_FILE}: split {self.split!r}: field {field!r} must have {n} entries"
                )

    def _build_records(self, info: dict[str, Any]) -> list[UtteranceRecord]:
        by_video: dict[str, list[tuple[str, int]]] = {}
        for row, mmsa_id in enumerate(info["ids"]):
            video, _, clip = mmsa_id.partition(ID_SEPARATOR)
            by_video.setdefault(video, []).append((clip, row))
        self.num_videos = len(by_video)
        self._rows: dict[str, int] = {}
        records: list[UtteranceRecord] = []
        for video, clips in by_video.items():
            for index, (clip, row) in enumerate(sorted(clips, key=lambda c: _clip_order(c[0]))):
                label = self._labels[row]
                meta = {"id": info["ids"][row], "clip_id": clip, "label": str(label)}
                meta.update({field: str(np.float32(v[row])) for field, v in info["extra_labels"].items()})
                self._rows[meta["id"]] = row
                records.append(
                    UtteranceRecord(
                        dataset=self.name,
                        split=self.split,
                        dialogue_id=video,
                        utterance_index=index,
                        speaker="",
                        text=info["raw_text"][row].strip(),
                        emotion=None,
                        sentiment=float(label) / self.label_bound,
                        language=self.language,
                        meta=meta,
                    )
                )
        return records

    def features(self, record: UtteranceRecord) -> tuple[np.ndarray, np.ndarray]:
        """The record's audio (T_a, audio_dim) and vision (T_v, vision_dim) frames, float32, padding removed.

        Aligned folders whose pickle had no lengths keep all T frames of every clip (the padding cannot be told
        apart from data there). A clip with no frames of a modality gets a (0, dim) array: mask that modality.
        """
        mmsa_id = record.meta.get("id", "")
        if (record.dataset, record.split) != (self.name, self.split) or mmsa_id not in self._rows:
            raise DatasetError(f"record {record.key} is not in {self.name} split {self.split!r} of {self.folder}")
        row = self._rows[mmsa_id]
        return self._slice("audio", row, self.audio_dim), self._slice("vision", row, self.vision_dim)

    def _slice(self, modality: str, row: int, dim: int) -> np.ndarray:
        start, end = int(self._offsets[modality][row]), int(self._offsets[modality][row + 1])
        if start == end:  # safetensors refuses empty slices at the end of a tensor
            return np.zeros((0, dim), dtype=np.float32)
        return self._file.get_slice(modality)[start:end]
