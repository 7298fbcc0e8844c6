"""Dataset loaders: every data set is an ordered stream of `UtteranceRecord`s (see `base.py` for the contract).

`load_dataset("meld" | "ravdess" | "mead" | "talking_heads", split)` is the one entry point training and evaluation
use, so a new benchmark only needs a loader class and a line in `_LOADERS`.
"""

from __future__ import annotations

from collections.abc import Callable

from egmf_core.data.base import (
    DATA_DIR_ENV,
    Dataset,
    DatasetError,
    UtteranceRecord,
    group_dialogues,
    resolve_data_dir,
)
from egmf_core.data.media import MediaConfig, MediaDataset
from egmf_core.data.meld import MeldConfig, MeldDataset, clean_text
from egmf_core.data.ravdess import RAVDESS_EMOTIONS, RAVDESS_TO_MELD, RavdessConfig, RavdessDataset

_LOADERS: dict[str, Callable[[str, str | None], Dataset]] = {
    "meld": lambda split, data_dir: MeldDataset(split, MeldConfig(data_dir=data_dir)),
    "ravdess": lambda split, data_dir: RavdessDataset(split, RavdessConfig(data_dir=data_dir)),
    "mead": lambda split, data_dir: MediaDataset(split, MediaConfig(subset="mead", data_dir=data_dir)),
    "talking_heads": lambda split, data_dir: MediaDataset(split, MediaConfig(subset="talking_heads", data_dir=data_dir)),
}
DATASETS: tuple[str, ...] = tuple(_LOADERS)


def load_dataset(name: str, split: str, data_dir: str | None = None) -> Dataset:
    """Load a data set split with its default configuration (use the loader classes for anything else)."""
    if name not in _LOADERS:
        raise DatasetError(f"unknown dataset {name!r}; known: {DATASETS}")
    return _LOADERS[name](split, data_dir)


__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "Dataset",
    "DatasetError",
    "MediaConfig",
    "MediaDataset",
    "MeldConfig",
    "MeldDataset",
    "RAVDESS_EMOTIONS",
    "RAVDESS_TO_MELD",
    "RavdessConfig",
    "RavdessDataset",
    "UtteranceRecord",
    "clean_text",
    "group_dialogues",
    "load_dataset",
    "resolve_data_dir",
]
