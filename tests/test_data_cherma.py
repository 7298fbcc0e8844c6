"""CHERMA loader on a tiny folder in the layout of the authors' public code: split JSONs with per-modality labels."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from media_clips import cut_clip, speak

from egmf_core.config import EMOTIONS
from egmf_core.data import (
    CHERMA_TO_MELD,
    ChermaConfig,
    ChermaDataset,
    DatasetError,
    group_dialogues,
    load_dataset,
    resolve_data_dir,
)

ENTRIES = {
    "train": [
        {"audio_file": "tv03_0001.wav", "video_file": "tv03_0001.mp4", "text": "你今天怎么这么高兴？",
         "txt_label": "惊奇", "audio_label": "高兴", "visual_label": "高兴", "video_label": "高兴"},
        {"audio_file": "tv03_0002.wav", "video_file": "tv03_0002.mp4", "text": "别  烦\n我。",
         "txt_label": "愤怒", "audio_label": "愤怒", "visual_label": "平静", "video_label": "愤怒"},
    ],
    "test": [
        {"audio_file": "tv11_0007.wav", "video_file": "tv11_0007.mp4", "text": "我不知道。",
         "txt_label": "平静", "audio_label": "悲伤", "visual_label": "悲伤", "video_label": "悲伤"},
    ],
}  # fmt: skip


def _without(entry: dict[str, str], field: str) -> dict[str, str]:
    return {k: v for k, v in entry.items() if k != field}


def _write_json(path: Path, entries: object) -> None:
    path.write_text(json.dumps(entries, ensure_ascii=False, indent=1), encoding="utf-8")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`<data dir>/CHERMA`: `<split>.json`, Mandarin speech in `audio/<split>/`, face clips in `video/<split>/`."""
    folder = tmp_path_factory.mktemp("data") / "CHERMA"
    clip = cut_clip(resolve_data_dir() / "media" / "talking_heads" / "3.mp4", folder.parent / "clip.mp4", 0.0, 1.0)
    for split, entries in ENTRIES.items():
        (folder / "audio" / split).mkdir(parents=True)
        (folder / "video" / split).mkdir(parents=True)
        _write_json(folder / f"{split}.json", entries)
        for entry in entries:
            speak(entry["text"], folder / "audio" / split / entry["audio_file"], voice="cmn")
            shutil.copy(clip, folder / "video" / split / entry["video_file"])
    return folder


def test_records_follow_the_json(root: Path) -> None:
    records = list(load_dataset("cherma", "train", data_dir=str(root.parent)))
    assert [r.dialogue_id for r in records] == ["tv03_0001", "tv03_0002"]
    assert len(list(group_dialogues(records))) == 2 and all(r.utterance_index == 0 for r in records)
    assert [r.emotion for r in records] == ["joy", "anger"]  # the multimodal label
    assert [r.emotion_original for r in records] == ["高兴", "愤怒"]
    assert records[0].meta == {"txt_label": "惊奇", "audio_label": "高兴", "visual_label": "高兴"}
    assert [r.text for r in records] == ["你今天怎么这么高兴？", "别 烦 我。"]  # whitespace collapsed
    assert all(r.language == "zh" and r.sentiment is None and r.speaker == "" for r in records)
    assert records[1].audio_path == str(root / "audio" / "train" / "tv03_0002.wav")
    assert records[1].video_path == str(root / "video" / "train" / "tv03_0002.mp4")
    assert [r.emotion for r in ChermaDataset("test", ChermaConfig(root=str(root)))] == ["sadness"]


def test_labels_are_meld_seven_one_to_one() -> None:
    assert sorted(CHERMA_TO_MELD.values()) == sorted(EMOTIONS)
    assert len(CHERMA_TO_MELD) == 7


def test_transcript_field_is_configurable(root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "CHERMA"
    shutil.copytree(root, folder)
    _write_json(folder / "train.json", [_without(entry, "text") for entry in ENTRIES["train"]])
    with pytest.raises(DatasetError, match=r"train\.json: entry 0: no 'text' field .* set ChermaConfig\.text_key"):
        ChermaDataset("train", ChermaConfig(root=str(folder)))
    assert [r.text for r in ChermaDataset("train", ChermaConfig(root=str(folder), text_key=None))] == ["", ""]


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"audio_file": "a.wav"}, "expected a JSON list"),
        ([["a.wav"]], "entry 0: expected an object"),
        ([ENTRIES["train"][0], {**ENTRIES["train"][1], "video_label": "开心"}], "entry 1: video_label must be one of"),
        ([{**ENTRIES["train"][0], "visual_label": "joy"}], "entry 0: visual_label must be one of"),
        ([_without(ENTRIES["train"][0], "audio_label")], "entry 0: missing field 'audio_label'"),
        ([ENTRIES["train"][0], ENTRIES["train"][0]], "entry 1: audio_file 'tv03_0001' appears twice"),
    ],
)
def test_bad_entries_name_file_and_entry(root: Path, tmp_path: Path, entries: object, message: str) -> None:
    folder = tmp_path / "CHERMA"
    shutil.copytree(root, folder)
    _write_json(folder / "train.json", entries)
    with pytest.raises(DatasetError, match=message):
        ChermaDataset("train", ChermaConfig(root=str(folder)))


def test_missing_clips_and_splits(root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "CHERMA"
    shutil.copytree(root, folder)
    (folder / "video" / "train" / "tv03_0002.mp4").unlink()
    with pytest.raises(DatasetError, match=r"1 media file\(s\) not found for 1 of 2 utterances, e\.g\. tv03_0002\.mp4"):
        ChermaDataset("train", ChermaConfig(root=str(folder)))
    with caplog.at_level(logging.WARNING):
        masked = list(ChermaDataset("train", ChermaConfig(root=str(folder), on_missing="mask")))
    assert [r.video_path is None for r in masked] == [False, True] and masked[1].audio_path is not None
    assert "masking" in caplog.text
    with pytest.raises(DatasetError, match="CHERMA split must be one of"):
        ChermaDataset("valid", ChermaConfig(root=str(folder)))
    (folder / "test.json").unlink()
    with pytest.raises(DatasetError, match=r"CHERMA file .*test\.json not found"):
        ChermaDataset("test", ChermaConfig(root=str(folder)))
