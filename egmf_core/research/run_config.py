"""The recipe of a training run: the `model`, `data` and `train` sections of its YAML (`configs/default.yaml`).

Shared by `python -m egmf_core.research.train` and the retrained ablations (`egmf_core.research.ablate_retrained`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import ConfigError, EGMFConfig, build_dataclass
from ..data import DATASETS
from ..data.mmsa import MMSA_DATASETS

__all__ = ["ExtraDataset", "MmsaData", "DataConfig", "TrainConfig", "RunConfig"]


@dataclass
class ExtraDataset:
    """A further labelled data set from `egmf_core.data.load_dataset` (e.g. `iemocap`, `cherma`, `meld_raw`).

    `label_set` names the answer labels (`default` = MELD's seven, or a `model.task.dataset_emotions` entry such as
    `iemocap6`); audio features come from the speech recognizer through the feature cache. Its dev split is scored
    by emotion weighted F1 and joins the selection score.
    """

    name: str = ""
    train_split: str = "train"
    dev_split: str | None = "dev"
    label_set: str = "default"
    repeat: int = 1
    train_limit: int | None = None

    def __post_init__(self) -> None:
        if self.name not in DATASETS or self.name in ("meld", "ravdess"):
            others = [d for d in DATASETS if d not in ("meld", "ravdess")]
            raise ConfigError(f"data.extra.name must be one of {others} (meld and ravdess have their own switches), "
                              f"got {self.name!r}")
        if self.repeat < 1:
            raise ConfigError(f"data.extra.repeat must be >= 1, got {self.repeat}")


@dataclass
class MmsaData:
    """An MMSA sentiment benchmark (CMU-MOSI/MOSEI, CH-SIMS), converted once with `python -m egmf_core.data.mmsa`.

    Its answers are sentiment scores alone in the label set named after the data set, on the data set's own scale
    (`model.task.score_tasks.<dataset>`), read from the file's audio and vision features: their dims replace
    `model.fusion.audio_dim`/`visual_dim`. The dev split joins the selection score by its Acc-2 (`MMSA_SCORING`).
    """

    dataset: str = ""
    folder: str | None = None  # the converted folder; None = <data dir>/mmsa/<dataset>
    dev_split: str | None = "dev"  # MMSA's "valid"; never select on "test"
    repeat: int = 1
    train_limit: int | None = None

    def __post_init__(self) -> None:
        if self.dataset not in MMSA_DATASETS:
            raise ConfigError(f"data.mmsa.dataset must be one of {tuple(MMSA_DATASETS)}, got {self.dataset!r}")
        if self.repeat < 1:
            raise ConfigError(f"data.mmsa.repeat must be >= 1, got {self.repeat}")


@dataclass
class DataConfig:
    meld: bool = True
    meld_train_limit: int | None = None
    ravdess: bool = True
    ravdess_train_actors: list[int] = field(default_factory=lambda: list(range(1, 11)))
    ravdess_dev_actors: list[int] = field(default_factory=lambda: [11, 12])
    ravdess_repeat: int = 3  # oversampling: 600 clips vs ~10k MELD utterances
    ravdess_limit: int | None = None  # the first N clips of each RAVDESS split (smoke runs), None = all
    audio_pack: str | None = None  # precomputed features (AudioFeaturePack) instead of running Whisper
    # Which audio the RAVDESS clips give (egmf_core.research.feature_lookup.whisper_audio_lookup): "clip", the whole
    # file as the shipped checkpoint learned; "live", the clip as the live segmenter cuts and frames it (what the
    # model gets live).
    ravdess_audio: str = "clip"
    # Extra copies of every RAVDESS training clip, each through its own random channel chain
    # (egmf_core.research.degrade.random_chain: room, gain or limiter, noise, phone line or codec), so the audio branch
    # learns the voice rather than one studio's level and room. 0 = the clips as recorded only.
    ravdess_degraded_copies: int = 0
    data_dir: str | None = None
    extra: list[ExtraDataset] = field(default_factory=list)  # the paper's benchmarks, where the user has them
    mmsa: MmsaData | None = None  # one MMSA benchmark: its features fix the fusion stack's input dims


@dataclass
class TrainConfig:
    epochs: int = 3
    batch_size: int = 8
    lr: float = 5e-4  # LoRA
    fusion_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    seed: int = 0
    dev_limit: int | None = None  # MELD dev utterances evaluated per epoch (None = all 1,109)
    eval_batch_size: int = 16
    max_steps: int | None = None
    time_budget_minutes: float | None = None
    out_dir: str = "runs/default"
    log_every: int = 20
    aux_weight: float = 0.0  # weight of the auxiliary emotion head on f_enhanced (0 = off)
    # 0 = fusion-only stage: train the fusion stack through the auxiliary head alone (no LLM pass; fast on CPU) and
    # select on the head's dev accuracy.
    lm_weight: float = 1.0
    init_from: str | None = None  # start from this checkpoint's weights (staged training)
    train_lora: bool = True  # False: keep the LLM's LoRA weights fixed, train only the fusion stack


@dataclass
class RunConfig:
    model: EGMFConfig = field(default_factory=EGMFConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RunConfig":
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh) or {}
        cfg = build_dataclass(cls, raw)
        cfg.model.validate()
        return cfg
