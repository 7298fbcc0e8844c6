"""MELD loader on the real CSVs: counts, labels, dialogue order, text repair."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from egmf_core.config import EMOTIONS
from egmf_core.data import (
    DATA_DIR_ENV,
    Dataset,
    DatasetError,
    MeldDataset,
    UtteranceRecord,
    clean_text,
    group_dialogues,
    load_dataset,
    resolve_data_dir,
)

EXPECTED = {"train": (9989, 1038), "dev": (1109, 114), "test": (2610, 280)}


@pytest.fixture(scope="module")
def meld() -> dict[str, MeldDataset]:
    return {split: MeldDataset(split) for split in EXPECTED}


@pytest.mark.parametrize("split", list(EXPECTED))
def test_counts_and_labels(meld: dict[str, MeldDataset], split: str) -> None:
    dataset = meld[split]
    utterances, dialogues = EXPECTED[split]
    assert isinstance(dataset, Dataset)
    assert len(dataset) == utterances and dataset.num_dialogues == dialogues
    records = list(dataset)
    assert {r.emotion for r in records} == set(EMOTIONS)
    assert {r.sentiment for r in records} == {-1.0, 0.0, 1.0}
    assert all(r.audio_path is None and r.video_path is None for r in records)  # no media: masked, not faked
    assert all(r.text and r.speaker and r.split == split and r.language == "en" for r in records)
    assert len(list(group_dialogues(records))) == dialogues  # contiguous dialogues in spoken order
    assert len({r.key for r in records}) == utterances


def test_label_distribution_matches_the_official_split(meld: dict[str, MeldDataset]) -> None:
    counts = Counter(r.emotion for r in meld["train"])
    assert counts["neutral"] == 4710 and counts["fear"] == 268
    sentiment = Counter(r.sentiment for r in meld["test"])
    assert sentiment == {0.0: 1256, -1.0: 833, 1.0: 521}


def test_text_is_clean(meld: dict[str, MeldDataset]) -> None:
    bad = re.compile("[\u0080-\u009f\u2018\u2019\u201c\u201d\u2026]|â€|Ã.")
    for dataset in meld.values():
        assert not [r.text for r in dataset if bad.search(r.text)]
    first = next(iter(meld["train"]))
    assert first.text == "also I was the point person on my company's transition from the KL-5 to GR-6 system."


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Monica\x92s place", "Monica's place"),  # cp1252 byte read as Latin-1
        ("Monicaâ€™s place", "Monica's place"),  # UTF-8 read as cp1252
        ("I donâ€™t know â€¦", "I don't know ..."),
        ("Paul’s CafÃ©", "Paul's Café"),
        ("OkayÂ  fine Â", "Okay fine"),
        ("\x93Hi\x94 \x96 yes", '"Hi" - yes'),
        ("Nestlé Toll House?", "Nestlé Toll House?"),  # genuine accents survive
    ],
)
def test_clean_text_repairs_mojibake(raw: str, clean: str) -> None:
    assert clean_text(raw) == clean


def test_data_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert resolve_data_dir() == tmp_path.resolve()
    with pytest.raises(DatasetError, match="not found"):
        MeldDataset("dev")
    monkeypatch.delenv(DATA_DIR_ENV)
    assert (resolve_data_dir() / "meld").is_dir()
    with pytest.raises(DatasetError, match="does not exist"):
        resolve_data_dir(tmp_path / "missing")
    with pytest.raises(DatasetError, match="split"):
        load_dataset("meld", "validation")
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("mosei", "test")


def test_record_validation_and_ordering_contract() -> None:
    def record(dialogue: str, index: int, **kwargs: object) -> UtteranceRecord:
        fields = dict(dataset="x", split="test", dialogue_id=dialogue, utterance_index=index, speaker="A", text="hi")
        fields.update(emotion="joy", sentiment=1.0)
        fields.update(kwargs)
        return UtteranceRecord(**fields)  # type: ignore[arg-type]

    with pytest.raises(DatasetError, match="emotion"):
        record("1", 0, emotion="happy")
    with pytest.raises(DatasetError, match="sentiment"):
        record("1", 0, sentiment=2.0)
    with pytest.raises(DatasetError, match="spoken order"):
        list(group_dialogues([record("1", 1), record("1", 0)]))
    with pytest.raises(DatasetError, match="contiguous"):
        list(group_dialogues([record("1", 0), record("2", 0), record("1", 1)]))
