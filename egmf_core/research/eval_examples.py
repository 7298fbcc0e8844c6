"""The labelled examples a command scores or fits on: a dataset split with its audio and face features
(:func:`dataset_examples`), or a converted MMSA split with the file's features (:func:`open_mmsa`,
:func:`mmsa_examples`, after :func:`check_mmsa_model` checked that the model can answer it).

Apart from the evaluation command (`egmf_core.research.evaluate`) because calibration, distillation, training and the
benchmarks load their examples the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import ConfigError, EGMFConfig
from ..data import DatasetError, UtteranceRecord, load_dataset
from ..data.mmsa import MmsaConfig, MmsaDataset, default_folder
from .examples import AudioLookup, Example, VisualLookup, build_examples
from .feature_lookup import face_visual_lookup, whisper_audio_lookup
from ..model import EGMFModel

__all__ = ["dataset_examples", "check_mmsa_model", "mmsa_examples", "open_mmsa"]

log = logging.getLogger(__name__)


def dataset_examples(
    model: EGMFModel,
    dataset: str,
    split: str,
    limit: int | None = None,
    audio: AudioLookup | None = None,
    label_set: str | None = None,
    visual: VisualLookup | None = None,
    audio_view: str = "clip",
) -> list[Example]:
    """The labelled examples of a split. `label_set` defaults to RAVDESS's own for RAVDESS and MELD's seven
    otherwise; IEMOCAP's benchmarks are `iemocap6`/`iemocap4`, for a checkpoint whose config lists them.
    Without an `audio` lookup, records with audio files get Whisper's features in `audio_view` (`AUDIO_VIEWS`); the
    recognizer is opened only if some record has audio.
    Unlabelled records (no emotion in the label set) are context for their successors but are not scored."""
    label_set = label_set or ("ravdess" if dataset == "ravdess" else "default")
    model.prompts.check_label_set(label_set)
    records: list[UtteranceRecord] = list(load_dataset(dataset, split))
    if limit is not None:
        records = records[:limit]  # a prefix keeps whole dialogues' past context intact
    if audio is None and any(r.audio_path for r in records):
        audio = whisper_audio_lookup(audio_view, model.cfg.fusion.audio_loudness_lufs)
    if visual is None and any(r.video_path for r in records):
        visual = face_visual_lookup()
    examples = build_examples(records, model.prompts, audio=audio, label_set=label_set, visual=visual)
    labelled = [e for e in examples if e.input.emotion is not None]
    if not labelled:
        raise DatasetError(f"{dataset} {split}: no utterance has a label in the label set {label_set!r}")
    if len(labelled) < len(examples):
        log.info("%s %s: %d unlabelled utterances kept as context only", dataset, split, len(examples) - len(labelled))
    return labelled


def check_mmsa_model(cfg: EGMFConfig, ds: MmsaDataset) -> None:
    """Refuse a model that cannot answer `ds`: the answers are scores on the data set's own scale (its label set, a
    `task.score_tasks` entry named after it), read from its features (the fusion stack's input dims) in its
    language (an adapter and prompt template)."""
    name, bound = ds.name, ds.label_bound
    scale = cfg.task.score_tasks.get(name)
    if scale is None:
        raise ConfigError(f"model.task.score_tasks has no {name!r} entry: {name} is answered by a sentiment score "
                          f"alone, e.g. task.score_tasks.{name}: {{score_min: {-bound}, score_max: {bound}}}")
    if (scale.score_min, scale.score_max) != (-bound, bound):
        raise ConfigError(f"model.task.score_tasks.{name} spans [{scale.score_min}, {scale.score_max}], but {name} "
                          f"labels lie in [{-bound}, {bound}]: answers are on the data set's own scale")
    dims = {"audio_dim": cfg.fusion.audio_dim, "visual_dim": cfg.fusion.visual_dim}
    if dims != ds.fusion_dims:
        raise ConfigError(f"model.fusion takes {dims} but {name}'s features in {ds.folder} have {ds.fusion_dims}: "
                          f"the model must be built for this feature file")
    languages = cfg.lora.languages or [cfg.prompt.language]
    if ds.language not in languages:
        raise ConfigError(f"{name} transcripts are {ds.language!r} but the model's prompt languages are {languages}: "
                          f"set model.prompt.language: {ds.language}")


def mmsa_examples(model: EGMFModel, ds: MmsaDataset, limit: int | None = None) -> list[Example]:
    """A converted MMSA split as examples of its sentiment-only label set (named after the data set), with the
    file's audio and visual features. `limit` keeps the first clips (whole videos' earlier clips as context)."""
    check_mmsa_model(model.cfg, ds)
    records = list(ds)[:limit]
    return build_examples(records, model.prompts, label_set=ds.name, features=ds.features)


def open_mmsa(dataset: str, split: str, folder: str | Path | None = None, data_dir: str | None = None) -> MmsaDataset:
    """One split of a converted MMSA folder (default `<data dir>/mmsa/<dataset>`), checked to hold `dataset`."""
    folder = folder or default_folder(dataset, data_dir)
    return MmsaDataset(split, MmsaConfig(folder=str(folder), dataset=dataset))
