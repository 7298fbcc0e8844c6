"""What a training run learns from and selects on: the examples of every enabled data set, and their batches.

MELD (text, past-only dialogue context), RAVDESS (Whisper audio features, from the clips or a feature pack, with
optional degraded copies), the further data sets of `data.extra` and an MMSA benchmark (`data.mmsa`, whose file's
features fix the fusion stack's input dims, so its splits are opened before the model is built).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from typing import Sequence

from ..config import ConfigError
from ..data import MeldConfig, MeldDataset, RavdessConfig, RavdessDataset, load_dataset
from ..data.mmsa import MmsaDataset
from ..model import EGMFModel
from .eval_examples import check_mmsa_model, mmsa_examples, open_mmsa
from .feature_lookup import AUDIO_VIEWS, whisper_audio_lookup
from .examples import AudioFeaturePack, Example, build_examples, text_length
from .run_config import RunConfig

__all__ = ["open_mmsa_splits", "load_splits", "make_batches"]

log = logging.getLogger(__name__)


def open_mmsa_splits(cfg: RunConfig) -> dict[str, MmsaDataset]:
    """Open `data.mmsa`'s train (and dev) split and fit the model config to them, before the model is built: the
    fusion stack's input dims become the file's (`dataclasses.replace(fusion, **ds.fusion_dims)`)."""
    m = cfg.data.mmsa
    if m is None:
        return {}
    _check_mmsa_run(cfg)
    splits = {"train": open_mmsa(m.dataset, "train", m.folder, cfg.data.data_dir)}
    if m.dev_split:
        splits["dev"] = open_mmsa(m.dataset, m.dev_split, m.folder, cfg.data.data_dir)
    cfg.model.fusion = dataclasses.replace(cfg.model.fusion, **splits["train"].fusion_dims)
    check_mmsa_model(cfg.model, splits["train"])
    return splits


def _check_mmsa_run(cfg: RunConfig) -> None:
    """What cannot share a run with an MMSA benchmark: data whose audio is Whisper's (other feature dims than the
    file's), and the auxiliary emotion head (MMSA clips have no emotion label)."""
    d, t = cfg.data, cfg.train
    if d.ravdess or d.extra:
        raise ConfigError("data.mmsa feeds its file's own audio features to the fusion stack, so it cannot be combined "
                          "with data.ravdess or data.extra (Whisper audio features); MELD (text only) can stay")
    if t.aux_weight or not t.lm_weight:
        raise ConfigError("data.mmsa has no emotion labels for the auxiliary head: set train.aux_weight: 0 and "
                          "train.lm_weight > 0")


def load_splits(
    cfg: RunConfig, model: EGMFModel, mmsa: dict[str, MmsaDataset] | None = None
) -> tuple[list[Example], dict[str, list[Example]]]:
    """Training examples and each dev set's; `mmsa` holds `data.mmsa`'s opened splits (`open_mmsa_splits`)."""
    d = cfg.data
    train: list[Example] = []
    dev: dict[str, list[Example]] = {}
    if d.meld:
        meld_train = list(MeldDataset("train", MeldConfig(data_dir=d.data_dir)))
        if d.meld_train_limit is not None:
            meld_train = meld_train[: d.meld_train_limit]
        train += build_examples(meld_train, model.prompts)
        meld_dev = list(MeldDataset("dev", MeldConfig(data_dir=d.data_dir)))
        dev["meld"] = build_examples(meld_dev[: cfg.train.dev_limit], model.prompts)
    if d.ravdess:
        if d.ravdess_audio not in AUDIO_VIEWS:
            raise ConfigError(f"data.ravdess_audio: expected one of {', '.join(AUDIO_VIEWS)}, got {d.ravdess_audio!r}")
        loudness = model.cfg.fusion.audio_loudness_lufs
        audio = (AudioFeaturePack.read(d.audio_pack) if d.audio_pack
                 else whisper_audio_lookup(d.ravdess_audio, loudness))
        if d.audio_pack and audio.view != d.ravdess_audio:
            raise ConfigError(f"data.audio_pack holds features of {audio.view} audio but data.ravdess_audio is "
                              f"{d.ravdess_audio!r} (python -m egmf_core.research.pack_audio --audio "
                              f"{d.ravdess_audio})")
        rcfg = RavdessConfig(
            data_dir=d.data_dir,
            splits={"train": tuple(d.ravdess_train_actors), "dev": tuple(d.ravdess_dev_actors)},
            check_files=d.audio_pack is None,
        )
        r_train = build_examples(list(RavdessDataset("train", rcfg))[: d.ravdess_limit], model.prompts, audio=audio,
                                 label_set="ravdess")
        silent = sum(e.input.audio is None for e in r_train)
        if silent and d.ravdess_audio == "clip":
            raise ConfigError("data.audio_pack lacks features for some RAVDESS training clips")
        if silent:  # live cuts: the VAD heard no speech in these clips (live, no event); they train on text alone
            log.warning("data.ravdess_audio live: %d of %d training clips have no speech segment", silent, len(r_train))
        train += r_train * d.ravdess_repeat
        if d.ravdess_degraded_copies and d.audio_pack:
            raise ConfigError("data.ravdess_degraded_copies needs the clips themselves, not data.audio_pack")
        for k in range(d.ravdess_degraded_copies):
            t0 = time.perf_counter()
            degraded = whisper_audio_lookup(d.ravdess_audio, loudness, degradation=f"random:{k}")
            train += build_examples(list(RavdessDataset("train", rcfg))[: d.ravdess_limit], model.prompts,
                                    audio=degraded, label_set="ravdess")
            print(f"RAVDESS degraded copy {k + 1}/{d.ravdess_degraded_copies}: features in "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
        dev["ravdess"] = build_examples(list(RavdessDataset("dev", rcfg))[: d.ravdess_limit], model.prompts,
                                        audio=audio, label_set="ravdess")
    # one recognizer for every extra data set
    audio = whisper_audio_lookup("clip", model.cfg.fusion.audio_loudness_lufs) if d.extra else None
    for extra in d.extra:
        model.prompts.check_label_set(extra.label_set)
        records = list(load_dataset(extra.name, extra.train_split, d.data_dir))[: extra.train_limit]
        labelled = [e for e in build_examples(records, model.prompts, audio=audio, label_set=extra.label_set)
                    if e.input.emotion is not None]  # unlabelled turns stay as context only
        if not labelled:
            raise ConfigError(f"data.extra {extra.name!r}: no {extra.train_split} utterance has a label in "
                              f"{extra.label_set!r}")
        train += labelled * extra.repeat
        if extra.dev_split:
            dev_records = list(load_dataset(extra.name, extra.dev_split, d.data_dir))[: cfg.train.dev_limit]
            dev[extra.name] = [e for e in build_examples(dev_records, model.prompts, audio=audio,
                                                         label_set=extra.label_set)
                               if e.input.emotion is not None]
    if mmsa:
        train += mmsa_examples(model, mmsa["train"], d.mmsa.train_limit) * d.mmsa.repeat
        if "dev" in mmsa:
            dev[d.mmsa.dataset] = mmsa_examples(model, mmsa["dev"], cfg.train.dev_limit)
    if not train:
        raise ConfigError("data: enable at least one of meld, ravdess, extra, mmsa")
    return train, dev


def make_batches(examples: Sequence[Example], batch_size: int, rng: random.Random) -> list[list[Example]]:
    """Shuffle, then sort within windows of 50 batches by prompt length, so batches have little padding."""
    idx = list(range(len(examples)))
    rng.shuffle(idx)
    batches = []
    window = batch_size * 50
    for w in range(0, len(idx), window):
        chunk = sorted(idx[w : w + window], key=lambda i: text_length(examples[i].input))
        batches += [[examples[i] for i in chunk[b : b + batch_size]] for b in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches
