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

One concern per module: :mod:`~egmf_core.data.mmsa.spec` (the folder format's names and the benchmarks' language
and label scale), :mod:`~egmf_core.data.mmsa.convert` (reading, checking and converting a pickle),
:mod:`~egmf_core.data.mmsa.dataset` (loading a converted folder), :mod:`~egmf_core.data.mmsa.cli` (the command).
Importers use this package (``from egmf_core.data.mmsa import MmsaDataset``).
"""

from egmf_core.data.mmsa.cli import main
from egmf_core.data.mmsa.convert import convert_mmsa_pickle, read_mmsa_pickle
from egmf_core.data.mmsa.dataset import MmsaConfig, MmsaDataset, default_folder
from egmf_core.data.mmsa.spec import (
    EXTRA_LABEL_FIELDS,
    FOLDERS,
    FORMAT,
    ID_SEPARATOR,
    INDEX_FILE,
    MMSA_DATASETS,
    MMSA_SPLITS,
    MODALITIES,
    REQUIRED_FIELDS,
    MmsaSpec,
)

__all__ = [
    "FORMAT",
    "INDEX_FILE",
    "ID_SEPARATOR",
    "MMSA_SPLITS",
    "REQUIRED_FIELDS",
    "EXTRA_LABEL_FIELDS",
    "MODALITIES",
    "FOLDERS",
    "MmsaSpec",
    "MMSA_DATASETS",
    "read_mmsa_pickle",
    "convert_mmsa_pickle",
    "default_folder",
    "MmsaConfig",
    "MmsaDataset",
    "main",
]
