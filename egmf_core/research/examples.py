"""Turning dataset records into model inputs, with past-only context and cached features.

Shared by training and evaluation so both see exactly the prompts the live service builds: each record's turn is
tokenized once, and its context is the last `max_context_turns` turns of the same dialogue that came before it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from safetensors.numpy import load_file, save_file

from ..data import UtteranceRecord, group_dialogues
from ..data.iemocap import IEMOCAP_LABEL_SETS
from ..data.ravdess import RAVDESS_TO_MELD
from ..model_io import ModelInput
from ..prompt import PromptBuilder

log = logging.getLogger(__name__)

AudioLookup = Callable[[UtteranceRecord], np.ndarray | None]
# A record's face features (T, visual_dim) and their validity mask (T,), or None where no frame shows a face.
VisualLookup = Callable[[UtteranceRecord], tuple[np.ndarray, np.ndarray] | None]
# A record's precomputed (audio, visual) frames, for data sets that ship features instead of media files (MMSA).
FeatureLookup = Callable[[UtteranceRecord], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Example:
    record: UtteranceRecord
    input: ModelInput


def text_length(x: ModelInput) -> int:
    """Tokens of the utterance and its context: the part of a prompt that varies, for length-bucketed batches."""
    return len(x.current.text_ids) + sum(len(t.text_ids) for t in x.context)


def ravdess_label(original: str) -> str:
    """RAVDESS's own 8 classes in the label set the model answers with (MELD names plus 'calm')."""
    return original if original in ("neutral", "calm") else RAVDESS_TO_MELD[original]


# A record's gold label in each dataset-specific label set, from its `emotion_original`; None = outside that set
# (IEMOCAP's "xxx"): the example is unlabelled but its turn is still context. Other label sets use `rec.emotion`.
DATASET_LABELS: dict[str, Callable[[str], str | None]] = {
    "ravdess": ravdess_label,
    **{name: mapping.get for name, mapping in IEMOCAP_LABEL_SETS.items()},
}


def build_examples(
    records: Iterable[UtteranceRecord],
    prompts: PromptBuilder,
    audio: AudioLookup | None = None,
    label_set: str = "default",
    features: FeatureLookup | None = None,
    visual: VisualLookup | None = None,
) -> list[Example]:
    """Records (in dialogue order) -> examples whose context holds only earlier turns of the same dialogue.

    `audio` encodes a record's audio file and `visual` its video's faces; `features` instead gives precomputed audio
    and visual frames (MMSA's files, in the data set's own feature dimensions). A record's sentiment ([-1, 1]) becomes
    the target on the label set's answer scale (a sentiment-only task's own range, e.g. MOSEI's [-3, 3]).
    """
    out: list[Example] = []
    for dialogue in group_dialogues(records):
        context = prompts.new_context()
        for rec in dialogue:
            turn = prompts.make_turn(rec.speaker, rec.text)
            feats = audio(rec) if audio is not None and rec.audio_path else None
            faces = visual(rec) if visual is not None and rec.video_path else None
            vis, valid = faces if faces is not None else (None, None)
            if features is not None:
                feats, vis = features(rec)
            gold = DATASET_LABELS.get(label_set)
            if gold is None:
                emotion = rec.emotion
            else:
                emotion = gold(rec.emotion_original) if rec.emotion_original is not None else None
            x = ModelInput(
                context=context.snapshot(),
                current=turn,
                audio=feats,
                visual=vis,
                visual_valid=valid,
                emotion=emotion,
                sentiment=prompts.scale_sentiment(rec.sentiment, label_set),
                label_set=label_set,
                language=rec.language,
            )
            out.append(Example(rec, x))
            context.append(turn)
    return out


class AudioFeaturePack:
    """A compact file of precomputed audio features for many records (int8 + per-frame scale, safetensors).

    Exists to move training data to a machine without the speech recognizer (e.g. a lent GPU with a 64 MiB
    transfer limit): per-frame absmax int8 keeps the relative error of each frame under 0.4%.
    """

    def __init__(self, arrays: dict[str, np.ndarray], view: str = "clip"):
        self.arrays = arrays
        self.view = view  # which audio the features are of (egmf_core.research.feature_lookup.AUDIO_VIEWS)

    @staticmethod
    def write(path: str | Path, features: dict[str, np.ndarray], view: str = "clip") -> Path:
        tensors = {}
        for key, x in features.items():
            scale = np.abs(x).max(axis=1, keepdims=True).clip(min=1e-8) / 127.0
            tensors[f"{key}/q"] = np.round(x / scale).astype(np.int8)
            tensors[f"{key}/s"] = scale.astype(np.float32)
        save_file(tensors, str(path), metadata={"audio_view": view})
        return Path(path)

    @classmethod
    def read(cls, path: str | Path) -> "AudioFeaturePack":
        from safetensors import safe_open

        with safe_open(str(path), framework="np") as fh:
            view = (fh.metadata() or {}).get("audio_view", "clip")  # packs from before views: whole clips
        raw = load_file(str(path))
        keys = {k.rsplit("/", 1)[0] for k in raw}
        return cls({k: raw[f"{k}/q"].astype(np.float32) * raw[f"{k}/s"] for k in keys}, view)

    def __call__(self, rec: UtteranceRecord) -> np.ndarray | None:
        return self.arrays.get(feature_key(rec))


def feature_key(rec: UtteranceRecord) -> str:
    """Split-independent id of a record's media (the same clip may sit in different splits of different configs)."""
    return f"{rec.dataset}/{rec.dialogue_id}/{rec.utterance_index}"
