"""RAVDESS and media loaders on the real files: actor-independent splits, label mapping, masked modalities."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from egmf_core.data import (
    RAVDESS_EMOTIONS,
    RAVDESS_TO_MELD,
    DatasetError,
    RavdessConfig,
    RavdessDataset,
    load_dataset,
)


@pytest.fixture(scope="module")
def splits() -> dict[str, RavdessDataset]:
    return {split: RavdessDataset(split) for split in ("train", "dev", "test", "all")}


def test_default_splits_are_actor_independent(splits: dict[str, RavdessDataset]) -> None:
    actors = {split: {r.speaker for r in splits[split]} for split in ("train", "dev", "test")}
    assert actors["train"] == {f"actor_{a:02d}" for a in range(1, 11)}
    assert actors["dev"] == {"actor_11", "actor_12"}
    assert actors["test"] == {f"actor_{a:02d}" for a in range(13, 17)}
    assert not (actors["train"] & actors["dev"]) and not (actors["train"] & actors["test"])
    assert not (actors["dev"] & actors["test"])
    assert (len(splits["train"]), len(splits["dev"]), len(splits["test"])) == (600, 120, 240)


def test_all_clips_labels_and_text(splits: dict[str, RavdessDataset]) -> None:
    records = list(splits["all"])
    assert len(records) == 960
    original = Counter(r.emotion_original for r in records)
    assert set(original) == set(RAVDESS_EMOTIONS) and original["neutral"] == 64 and original["calm"] == 128
    assert all(r.emotion == RAVDESS_TO_MELD[r.emotion_original] for r in records)
    assert Counter(r.emotion for r in records)["neutral"] == 192  # neutral + calm
    assert {r.text for r in records} == {"Kids are talking by the door", "Dogs are sitting by the door"}
    assert all(r.sentiment is None and r.video_path is None and r.utterance_index == 0 for r in records)
    assert all(Path(r.audio_path).is_file() for r in records)  # type: ignore[arg-type]
    assert len({r.dialogue_id for r in records}) == 960  # each clip is its own dialogue


def test_configurable_splits() -> None:
    config = RavdessConfig(splits={"train": tuple(range(1, 13)), "test": (13, 14, 15, 16)})
    assert len(RavdessDataset("train", config)) == 720
    with pytest.raises(DatasetError, match="both"):
        RavdessConfig(splits={"train": (1, 2), "test": (2, 3)})
    with pytest.raises(DatasetError, match="split"):
        RavdessDataset("dev", config)


def test_media_clips() -> None:
    mead = list(load_dataset("mead", "test"))
    assert len(mead) == 7
    by_name = {r.dialogue_id: r for r in mead}
    assert by_name["contempt"].emotion is None and by_name["contempt"].emotion_original == "contempt"
    assert by_name["contempt"].audio_path is None  # no audio stream: masked
    assert by_name["sad"].emotion == "sadness" and by_name["sad"].audio_path == by_name["sad"].video_path
    assert sum(r.audio_path is not None for r in mead) == 4
    heads = list(load_dataset("talking_heads", "test"))
    assert len(heads) == 5 and all(r.emotion is None and r.video_path and r.text == "" for r in heads)
