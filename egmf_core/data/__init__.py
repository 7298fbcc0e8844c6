"""Dataset loaders: every data set is an ordered stream of `UtteranceRecord`s (see `base.py` for the contract).

`load_dataset(name, split)` (`name` one of `DATASETS`: "meld", "ravdess", "mead", "talking_heads", "meld_raw",
"iemocap", "cherma", ...) is the one entry point training and evaluation use, so a new benchmark only needs a loader
class and a line in `_LOADERS`.
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
from egmf_core.data.cherma import CHERMA_TO_MELD, ChermaConfig, ChermaDataset
from egmf_core.data.iemocap import (
    IEMOCAP_EMOTIONS,
    IEMOCAP_LABEL_SETS,
    IEMOCAP_TO_MELD,
    IemocapConfig,
    IemocapDataset,
)
from egmf_core.data.media import MediaConfig, MediaDataset
from egmf_core.data.meld import MeldConfig, MeldDataset, clean_text
from egmf_core.data.meld_raw import MeldRawConfig, MeldRawDataset
from egmf_core.data.ravdess import RAVDESS_EMOTIONS, RAVDESS_TO_MELD, RavdessConfig, RavdessDataset

_LOADERS: dict[str, Callable[[str, str | None], Dataset]] = {
    "meld": lambda split, data_dir: MeldDataset(split, MeldConfig(data_dir=data_dir)),
    "ravdess": lambda split, data_dir: RavdessDataset(split, RavdessConfig(data_dir=data_dir)),
    "mead": lambda split, data_dir: MediaDataset(split, MediaConfig(subset="mead", data_dir=data_dir)),
    "talking_heads": lambda split, data_dir: MediaDataset(split,
                                                          MediaConfig(subset="talking_heads", data_dir=data_dir)),
    "meld_raw": lambda split, data_dir: MeldRawDataset(split, MeldRawConfig(data_dir=data_dir)),
    "iemocap": lambda split, data_dir: IemocapDataset(split, IemocapConfig(data_dir=data_dir)),
    "cherma": lambda split, data_dir: ChermaDataset(split, ChermaConfig(data_dir=data_dir)),
}
DATASETS: tuple[str, ...] = tuple(_LOADERS)


def load_dataset(name: str, split: str, data_dir: str | None = None) -> Dataset:
    """Load a data set split with its default configuration (use the loader classes for anything else)."""
    if name not in _LOADERS:
        raise DatasetError(f"unknown dataset {name!r}; known: {DATASETS}")
    return _LOADERS[name](split, data_dir)


__all__ = [
    "CHERMA_TO_MELD",
    "ChermaConfig",
    "ChermaDataset",
    "DATASETS",
    "DATA_DIR_ENV",
    "Dataset",
    "DatasetError",
    "IEMOCAP_EMOTIONS",
    "IEMOCAP_LABEL_SETS",
    "IEMOCAP_TO_MELD",
    "IemocapConfig",
    "IemocapDataset",
    "MediaConfig",
    "MediaDataset",
    "MeldConfig",
    "MeldDataset",
    "MeldRawConfig",
    "MeldRawDataset",
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
