"""Reading an MMSA pickle (only with ``allow_pickle``), checking every split, and writing it as a safe folder.

Every split is checked before anything is written, so a malformed file leaves no half-converted folder. The folder's
layout is described in :mod:`egmf_core.data.mmsa`.
"""

from __future__ import annotations

import json
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from egmf_core.data.base import DatasetError
from egmf_core.data.mmsa.spec import (
    EXTRA_LABEL_FIELDS,
    FORMAT,
    ID_SEPARATOR,
    INDEX_FILE,
    MMSA_DATASETS,
    MMSA_SPLITS,
    MODALITIES,
    REQUIRED_FIELDS,
    MmsaSpec,
)

__all__ = ["read_mmsa_pickle", "convert_mmsa_pickle"]

log = logging.getLogger(__name__)


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
    """Check an MMSA pickle and write it as a safe folder (see :mod:`egmf_core.data.mmsa`); returns the folder.

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
