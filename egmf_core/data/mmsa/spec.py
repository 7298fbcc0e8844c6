"""The names of a converted MMSA folder and what differs between the MMSA benchmarks.

Shared by the conversion (:mod:`egmf_core.data.mmsa.convert`), which writes the folder, and the loader
(:mod:`egmf_core.data.mmsa.dataset`), which reads it; the format is described in :mod:`egmf_core.data.mmsa`.
"""

from __future__ import annotations

from dataclasses import dataclass

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
