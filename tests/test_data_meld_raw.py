"""MELD with its clips on a tiny MELD.Raw folder: real CSV rows, clips cut from a real talking-head video."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from media_clips import cut_clip

from egmf_core.data import (
    DatasetError,
    MeldConfig,
    MeldDataset,
    MeldRawConfig,
    MeldRawDataset,
    group_dialogues,
    load_dataset,
    resolve_data_dir,
)
from egmf_core.features import (
    AUDIO_DIM,
    VISUAL_DIM,
    FaceFeatureConfig,
    FaceFeatureExtractor,
    FeatureCache,
    WhisperFrontend,
)

ROWS = 2  # the first two utterances of dialogue 0 of each split


def _copy_rows(split: str, target: Path) -> None:
    """The header and the first rows of the real CSV, byte for byte."""
    lines = (resolve_data_dir() / "meld" / f"{split}_sent_emo.csv").read_bytes().splitlines(keepends=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"".join(lines[: ROWS + 1]))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`<data dir>/MELD.Raw` in the widely shared layout; the dev split lacks its second clip."""
    data = tmp_path_factory.mktemp("data")
    root = data / "MELD.Raw"
    video = resolve_data_dir() / "media" / "talking_heads" / "1.mp4"
    _copy_rows("train", root / "train" / "train_sent_emo.csv")
    _copy_rows("dev", root / "dev_sent_emo.csv")
    train = root / "train" / "train_splits"
    dev = root / "dev" / "dev_splits_complete"
    train.mkdir(parents=True)
    dev.mkdir(parents=True)
    cut_clip(video, train / "dia0_utt0.mp4", 0.0, 2.0)
    cut_clip(video, train / "dia0_utt1.mp4", 2.0, 4.0)
    (dev / "dia0_utt0.mp4").write_bytes((train / "dia0_utt0.mp4").read_bytes())
    return data


def test_records_carry_their_clip_and_the_meld_labels(data_dir: Path) -> None:
    dataset = load_dataset("meld_raw", "train", data_dir=str(data_dir))
    records = list(dataset)
    text_only = list(MeldDataset("train", MeldConfig()))[:ROWS]
    assert len(records) == ROWS and len(list(group_dialogues(records))) == 1
    for index, (record, reference) in enumerate(zip(records, text_only)):
        clip = data_dir / "MELD.Raw" / "train" / "train_splits" / f"dia0_utt{index}.mp4"
        assert record.audio_path == record.video_path == str(clip)
        assert record.start_s is None and record.end_s is None  # the clip is the utterance
        assert record.dataset == "meld_raw" and record.split == "train"
        assert (record.dialogue_id, record.utterance_index) == (reference.dialogue_id, reference.utterance_index)
        assert (record.text, record.speaker, record.emotion, record.sentiment) == (
            reference.text,
            reference.speaker,
            reference.emotion,
            reference.sentiment,
        )
    assert records[0].text.startswith("also I was the point person on my company's")  # repaired like MELD's


def test_missing_clip_is_an_error_by_default(data_dir: Path) -> None:
    with pytest.raises(DatasetError, match=r"1 media file\(s\) not found for 1 of 2 utterances, e\.g\. dia0_utt1\.mp4"):
        MeldRawDataset("dev", MeldRawConfig(data_dir=str(data_dir)))


def test_missing_clip_can_be_skipped_or_masked(data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        kept = list(MeldRawDataset("dev", MeldRawConfig(data_dir=str(data_dir), on_missing="skip")))
    assert [r.utterance_index for r in kept] == [0]
    assert "dia0_utt1.mp4" in caplog.text and "dropping" in caplog.text
    masked = list(MeldRawDataset("dev", MeldRawConfig(root=str(data_dir / "MELD.Raw"), on_missing="mask")))
    assert [r.audio_path is None and r.video_path is None for r in masked] == [False, True]
    assert masked[1].text == "What?"  # still a text-only utterance with its labels


def test_bad_layout_and_settings_are_named(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="test_sent_emo.csv not found"):
        MeldRawDataset("test", MeldRawConfig(data_dir=str(data_dir)))
    with pytest.raises(DatasetError, match="on_missing must be one of"):
        MeldRawConfig(on_missing="ignore")
    _copy_rows("test", tmp_path / "test_sent_emo.csv")
    with pytest.raises(DatasetError, match="output_repeated_splits_test not found"):
        MeldRawDataset("test", MeldRawConfig(root=str(tmp_path)))


@pytest.mark.slow
def test_clip_features_come_from_the_shared_extractors(data_dir: Path, tmp_path: Path) -> None:
    record = next(iter(MeldRawDataset("train", MeldRawConfig(data_dir=str(data_dir)))))
    cache = FeatureCache(tmp_path / "cache")
    audio = WhisperFrontend().encoder_states_file(record.audio_path, cache)
    assert audio.shape[1] == AUDIO_DIM and audio.dtype == np.float32
    assert 95 <= audio.shape[0] <= 105  # 2 s at 50 Hz
    visual = FaceFeatureExtractor(FaceFeatureConfig(fps=10.0)).extract_file(record.video_path, cache)
    assert visual.features.shape == (len(visual), VISUAL_DIM) and 18 <= len(visual) <= 21  # 2 s at 10 fps
    assert np.median(np.diff(visual.times)) == pytest.approx(0.1, abs=0.025)
    assert visual.valid.mean() > 0.9  # a real face
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 2  # both cached per file
