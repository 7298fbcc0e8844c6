"""CMU-MOSI, CMU-MOSEI, CH-SIMS and CH-SIMS v2 from the MMSA toolkit's published feature files.

MMSA (thuiar/MMSA) distributes these benchmarks as one pickle per variant (`aligned_50.pkl`, `unaligned_50.pkl`,
`unaligned_39.pkl`, ...): a dict with splits 'train'/'valid'/'test', each holding `raw_text`, padded `audio`
(N, T_a, d_a) and `vision` (N, T_v, d_v) feature arrays, their true `audio_lengths`/`vision_lengths` (absent in some
aligned variants), `regression_labels` and ids "videoid$_$clipid" (see MMSA's README and `src/MMSA/data_loader.py`).
The BERT text arrays (`text`, `text_bert`) are not used: the analyzer reads the raw text with its own LLM.

Unpickling runs whatever code the file asks for, so a pickle is read only from a path the user names and only with
`allow_pickle=True` (`--allow-pickle`), once, to convert it into a safe folder:

    DIR/mmsa.json           dataset name, language, feature dims, aligned flag, and per split the ids, raw texts
                            and the extra label fields (SIMS's per-modality labels, classification labels)
    DIR/{train,dev,test}.safetensors
                            audio (sum of lengths, d_a), vision (sum of lengths, d_v): every clip's frames back to
                            back with the padding removed; audio_lengths, vision_lengths (N,); labels (N,)

Non-finite feature values become 0, as MMSA's own loaders do with the -inf in its audio features; the count is
logged and kept in the JSON.
Later runs load only that folder (`MmsaDataset`), with no flag. Convert with
`python -m egmf_core.data.mmsa convert --pickle PATH --out DIR --dataset mosei --allow-pickle`.
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from egmf_core.data.base import (
    DatasetError,
    LoadedSplit,
    UtteranceRecord,
    resolve_data_dir,
)

log = logging.getLogger(__name__)

FORMAT = "egmf-mmsa-features/1"
INDEX_FILE = "mmsa.json"
ID_SEPARATOR = "$_$"
# MMSA's split names -> ours.
MMSA_SPLITS: dict[str, str] = {"train": "train", "valid": "dev", "test": "test"}
REQUIRED_FIELDS: tuple[str, ...] = ("raw_text", "audio", "vision", "id", "regression_labels")
# Kept in the JSON when present: CH-SIMS(-v2) per-modality labels and MMSA's (deprecated) 3-class labels.
EXTRA_LABEL_FIELDS: tuple[str, ...] = (
    "regression_labels_T",
    "regression_labels_A",
    "regression_labels_V",
    "classification_labels",
)
MODALITIES: tuple[str, ...] = ("audio", "vision")
FOLDERS = "mmsa"  # converted folders live at <data dir>/mmsa/<dataset> unless a path is named


@dataclass(frozen=True)
class MmsaSpec:
    """What differs between the MMSA benchmarks: the transcript language and the label scale.

    Labels lie in [-label_bound, label_bound]; a record's `sentiment` is label / label_bound, in [-1, 1].
    Score MOSI/MOSEI with `metrics.mosei_regression_report` and SIMS with `metrics.sims_regression_report`, on the
    original scale (`meta["label"]`, or sentiment * label_bound).
    """

    language: str
    label_bound: float


MMSA_DATASETS: dict[str, MmsaSpec] = {
    "mosi": MmsaSpec(language="en", label_bound=3.0),
    "mosei": MmsaSpec(language="en", label_bound=3.0),
    "sims": MmsaSpec(language="zh", label_bound=1.0),
    "simsv2": MmsaSpec(language="zh", label_bound=1.0),
}


# --- reading and checking the pickle ----------------------------------------------------------------------------


def read_mmsa_pickle(path: str | Path, *, allow_pickle: bool = False) -> dict[str, Any]:
    """Unpickle an MMSA feature file, only when the caller explicitly allows it."""
    path = Path(path)
    if not allow_pickle:
        raise DatasetError(
            f"refusing to unpickle {path}: loading a pickle can run arbitrary code. Only if you trust the file "
            "(e.g. MMSA's published features, checked against the SHA-256 in MMSA's README), convert it once with "
            "allow_pickle=True (CLI: --allow-pickle) into a safe folder and load that folder from then on"
        )
    if not path.is_file():
        raise DatasetError(f"MMSA feature file {path} not found")
    log.info("unpickling %s (%.1f MB)", path, path.stat().st_size / 1e6)
    with path.open("rb") as handle:
        data = pickle.load(handle)
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a dict with splits {tuple(MMSA_SPLITS)}, got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class _Split:
    """One split after checking: features with the padding removed, labels as float32."""

    ids: list[str]
    raw_text: list[str]
    features: dict[str, np.ndarray]  # modality -> (sum of lengths, d) float32
    lengths: dict[str, np.ndarray]  # modality -> (N,) int64
    padded_frames: dict[str, int]  # modality -> T in the pickle
    lengths_given: dict[str, bool]  # False: no <modality>_lengths field, every clip keeps all T frames
    labels: np.ndarray  # (N,) float32
    extra_labels: dict[str, list[float]]
    nonfinite: dict[str, int]  # modality -> values that were -inf/inf/nan and are now 0


def _strings(where: str, field: str, value: Any, n: int) -> list[str]:
    items = list(value) if isinstance(value, (list, tuple, np.ndarray)) else None
    if items is None or len(items) != n:
        got = f"length {len(items)}" if items is not None else type(value).__name__
        raise DatasetError(f"{where}: field {field!r} must hold {n} strings (one per clip), got {got}")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise DatasetError(f"{where}: field {field!r}[{i}] must be a string, got {type(item).__name__}")
    return [str(item) for item in items]


def _vector(where: str, field: str, value: Any, n: int) -> np.ndarray:
    """A length-N numeric vector; MMSA also stores labels as (N, 1)."""
    try:
        x = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{where}: field {field!r} must be numeric: {exc}") from exc
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.shape != (n,):
        raise DatasetError(f"{where}: field {field!r} must have shape ({n},) (one value per clip), got {x.shape}")
    if not np.isfinite(x).all():
        raise DatasetError(f"{where}: field {field!r} has non-finite values")
    return x


def _labels(where: str, field: str, value: Any, n: int, bound: float) -> np.ndarray:
    x = _vector(where, field, value, n)
    if n and np.abs(x).max() > bound:
        raise DatasetError(
            f"{where}: field {field!r} must lie in [-{bound:g}, {bound:g}], got {x.min():g}..{x.max():g}"
        )
    return x.astype(np.float32)


def _frames(where: str, modality: str, value: Any, lengths: Any, n: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(frames back to back, lengths, padded T, non-finite count) for one modality."""
    try:
        x = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{where}: field {modality!r} must be a float array: {exc}") from exc
    if x.ndim != 3 or x.shape[0] != n:
        raise DatasetError(f"{where}: field {modality!r} must have shape ({n}, T, d) (N = {n} clips), got {x.shape}")
    field = f"{modality}_lengths"
    if lengths is None:
        length = np.full(n, x.shape[1], dtype=np.int64)
    else:
        raw = _vector(where, field, lengths, n)
        if (raw != np.round(raw)).any() or (raw < 0).any() or (raw > x.shape[1]).any():
            raise DatasetError(
                f"{where}: field {field!r} must hold whole numbers in 0..{x.shape[1]} (T of {modality!r})"
            )
        length = raw.astype(np.int64)
    # MMSA pads after the real frames (its models pack_padded_sequence them), so a clip's frames are [:length].
    flat = np.concatenate([x[i, : length[i]] for i in range(n)]) if n else np.zeros((0, x.shape[2]), np.float32)
    bad = ~np.isfinite(flat)
    flat[bad] = 0.0  # MMSA's loaders set -inf to 0 before use; nan/+inf would poison training just the same
    return np.ascontiguousarray(flat), length, int(x.shape[1]), int(bad.sum())


def _check_split(where: str, split: Any, spec: MmsaSpec) -> _Split:
    if not isinstance(split, dict):
        raise DatasetError(f"{where}: expected a dict of fields, got {type(split).__name__}")
    missing = [f for f in REQUIRED_FIELDS if f not in split]
    if missing:
        raise DatasetError(f"{where}: missing field(s) {missing}; found {sorted(split)}")
    try:
        n = len(split["regression_labels"])
    except TypeError as exc:
        raise DatasetError(f"{where}: field 'regression_labels' must be an array with one label per clip") from exc
    labels = _labels(where, "regression_labels", split["regression_labels"], n, spec.label_bound)
    ids = _strings(where, "id", split["id"], n)
    for i, clip_id in enumerate(ids):
        if ID_SEPARATOR not in clip_id:
            raise DatasetError(f"{where}: field 'id'[{i}] = {clip_id!r} is not 'videoid{ID_SEPARATOR}clipid'")
    if len(set(ids)) != n:
        raise DatasetError(f"{where}: field 'id' has duplicates")
    features, lengths, padded, given, nonfinite = {}, {}, {}, {}, {}
    for modality in MODALITIES:
        raw_lengths = split.get(f"{modality}_lengths")
        features[modality], lengths[modality], padded[modality], nonfinite[modality] = _frames(
            where, modality, split[modality], raw_lengths, n
        )
        given[modality] = raw_lengths is not None
    extra: dict[str, list[float]] = {}
    for field in EXTRA_LABEL_FIELDS:
        if field in split:
            bound = np.inf if field == "classification_labels" else spec.label_bound  # class ids 0/1/2
            extra[field] = _labels(where, field, split[field], n, bound).astype(float).tolist()
    return _Split(
        ids=ids,
        raw_text=_strings(where, "raw_text", split["raw_text"], n),
        features=features,
        lengths=lengths,
        padded_frames=padded,
        lengths_given=given,
        labels=labels,
        extra_labels=extra,
        nonfinite=nonfinite,
    )


# --- conversion -----------------------------------------------------------------------------------------------------


def convert_mmsa_pickle(
    pickle_path: str | Path, out_dir: str | Path, dataset: str, *, allow_pickle: bool = False
) -> Path:
    """Check an MMSA pickle and write it as a safe folder (see the module docstring); returns the folder.

    Every split is checked before anything is written, so a malformed file leaves no half-converted folder.
    """
    if dataset not in MMSA_DATASETS:
        raise DatasetError(f"dataset must be one of {tuple(MMSA_DATASETS)}, got {dataset!r}")
    spec = MMSA_DATASETS[dataset]
    pickle_path = Path(pickle_path)
    data = read_mmsa_pickle(pickle_path, allow_pickle=allow_pickle)
    missing = [s for s in MMSA_SPLITS if s not in data]
    if missing:
        raise DatasetError(f"{pickle_path}: missing split(s) {missing}; found {sorted(map(str, data))}")
    ignored = sorted(str(k) for k in data if k not in MMSA_SPLITS)
    if ignored:  # e.g. CH-SIMS v2's unlabelled 'train_mix'
        log.info("ignoring split(s) %s (only %s are benchmark splits)", ignored, tuple(MMSA_SPLITS))
    splits: dict[str, _Split] = {}
    for mmsa_name, ours in MMSA_SPLITS.items():
        split = _check_split(f"{pickle_path.name}: split {mmsa_name!r}", data[mmsa_name], spec)
        splits[ours] = split
        for m in MODALITIES:
            log.info(
                "%s -> %s: %d clips, %s: %d frames without padding (T = %d), dim %d",
                mmsa_name,
                ours,
                len(split.ids),
                m,
                len(split.features[m]),
                split.padded_frames[m],
                split.features[m].shape[1],
            )
    dims = {m: {s.features[m].shape[1] for s in splits.values()} for m in MODALITIES}
    for modality, found in dims.items():
        if len(found) != 1:
            raise DatasetError(
                f"{pickle_path.name}: field {modality!r} has different feature dims across splits: {sorted(found)}"
            )
    nonfinite = {m: sum(s.nonfinite[m] for s in splits.values()) for m in MODALITIES}
    if any(nonfinite.values()):
        log.warning("set %s non-finite feature values to 0, as MMSA's loaders do", nonfinite)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / INDEX_FILE).unlink(missing_ok=True)  # re-converting: the folder is unfinished until the new index lands
    for name, split in splits.items():
        tensors = {m: split.features[m] for m in MODALITIES}
        tensors.update({f"{m}_lengths": split.lengths[m] for m in MODALITIES})
        tensors["labels"] = split.labels
        save_file(tensors, str(out / f"{name}.safetensors"), metadata={"format": FORMAT})
        log.info("wrote %s", out / f"{name}.safetensors")
    index = {
        "format": FORMAT,
        "dataset": dataset,
        "language": spec.language,
        "label_bound": spec.label_bound,
        "source": pickle_path.name,
        # MMSA's aligned variants average audio and vision over each word, so both share the text's T.
        "aligned": all(s.padded_frames["audio"] == s.padded_frames["vision"] for s in splits.values()),
        "audio_dim": dims["audio"].pop(),
        "vision_dim": dims["vision"].pop(),
        "nonfinite_zeroed": nonfinite,
        "splits": {
            name: {
                "n": len(s.ids),
                "padded_frames": s.padded_frames,
                "lengths_given": s.lengths_given,
                "ids": s.ids,
                "raw_text": s.raw_text,
                "extra_labels": s.extra_labels,
            }
            for name, s in splits.items()
        },
    }
    # The index goes last: a folder with mmsa.json is a finished conversion.
    (out / INDEX_FILE).write_text(json.dumps(index, ensure_ascii=False), encoding="utf-8")
    log.info("wrote %s", out / INDEX_FILE)
    return out


# --- loading the safe folder ----------------------------------------------------------------------------------------


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


# --- command line ---------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m egmf_core.data.mmsa", description="MMSA feature files (MOSI, MOSEI, CH-SIMS)."
    )
    commands = ap.add_subparsers(dest="command", required=True)
    convert = commands.add_parser(
        "convert", help="check an MMSA pickle and write it as a safe safetensors + JSON folder"
    )
    convert.add_argument("--pickle", required=True, help="MMSA feature file, e.g. MOSEI/Processed/unaligned_50.pkl")
    convert.add_argument("--out", required=True, help="folder to write (created if needed)")
    convert.add_argument("--dataset", required=True, choices=tuple(MMSA_DATASETS))
    convert.add_argument(
        "--allow-pickle",
        action="store_true",
        help="required: unpickling can run arbitrary code, so confirm you trust this file",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        out = convert_mmsa_pickle(args.pickle, args.out, args.dataset, allow_pickle=args.allow_pickle)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"converted {args.dataset} into {out}; load it with MmsaDataset(split, MmsaConfig(folder=...))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
