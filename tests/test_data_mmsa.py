"""MMSA feature files (CMU-MOSI/MOSEI, CH-SIMS): pickle refusal, conversion to the safe folder, records, features.

MMSA's data cannot be downloaded here, so `make_mmsa_pickle` writes a tiny file in MMSA's layout (field names,
float32/int dtypes, (N, T, d) shapes, "video$_$clip" ids, [-3, 3] or [-1, 1] labels; aligned and unaligned
variants) into pytest's tmp_path.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from egmf_core.config import FusionConfig
from egmf_core.data import DatasetError, group_dialogues
from egmf_core.data.mmsa import (
    MmsaConfig,
    MmsaDataset,
    convert_mmsa_pickle,
    main,
    read_mmsa_pickle,
)

MOSEI_DIMS = (74, 35)  # COVAREP audio, FACET vision
SIMS_DIMS = (33, 709)  # CH-SIMS librosa audio, OpenFace vision

# Per split: (video, clip) in file order. Video "vidA" is interleaved with "vidB" and its clip ids are out of order,
# with "10" vs "2" to show the ordering is numeric, not by string.
MOSEI_IDS = {
    "train": [("vidA", "2"), ("vidB", "0"), ("vidA", "10"), ("vidA", "1")],
    "valid": [("vidC", "1"), ("vidC", "0")],
    "test": [("vidD", "3"), ("vidE", "1"), ("vidD", "4")],
}
MOSEI_LABELS = {"train": [1.4, -3.0, 3.0, 0.0], "valid": [-0.6, 2.2], "test": [0.8, -1.8, 0.0]}
SIMS_IDS = {
    "train": [("video_0002", "0003"), ("video_0001", "0002"), ("video_0002", "0001")],
    "valid": [("video_0003", "0001")],
    "test": [("video_0004", "0001"), ("video_0004", "0002")],
}
SIMS_LABELS = {"train": [0.8, -1.0, 0.2], "valid": [-0.4], "test": [1.0, 0.0]}


def _split(
    ids: list[tuple[str, str]],
    labels: list[float],
    dims: tuple[int, int],
    aligned: bool,
    sims: bool,
    rng: np.random.Generator,
) -> dict[str, Any]:
    n = len(ids)
    t_audio, t_vision = (8, 8) if aligned else (12, 9)
    audio = np.zeros((n, t_audio, dims[0]), np.float32)
    vision = np.zeros((n, t_vision, dims[1]), np.float32)
    audio_lengths = rng.integers(1, t_audio + 1, n)
    vision_lengths = rng.integers(1, t_vision + 1, n)
    if n > 1:
        vision_lengths[1] = 0  # a clip where the face was never found
    for i in range(n):  # frame value i*100 + t + 1: real frames are never 0, padding (after them) is
        audio[i, : audio_lengths[i]] = (i * 100 + np.arange(audio_lengths[i]) + 1)[:, None]
        vision[i, : vision_lengths[i]] = (i * 100 + np.arange(vision_lengths[i]) + 1)[:, None]
    audio[0, 0, 0] = -np.inf  # MMSA's audio features hold some -inf; its loaders set them to 0
    split: dict[str, Any] = {
        "raw_text": np.array([f" utterance {v} {c} " for v, c in ids]),
        "audio": audio,
        "vision": vision,
        "id": np.array([f"{v}$_${c}" for v, c in ids]),
        "text": rng.standard_normal((n, 5, 768)).astype(np.float32),  # BERT features, unused
        "text_bert": np.ones((n, 3, 5), np.float32),  # token ids / mask / segments, unused
        "annotations": np.array(["Positive" if x > 0 else "Negative" if x < 0 else "Neutral" for x in labels]),
        "classification_labels": np.array([2 if x > 0 else 0 if x < 0 else 1 for x in labels], np.int64),
        "regression_labels": np.array(labels, np.float32),
    }
    if not aligned:
        split["audio_lengths"] = audio_lengths.astype(np.int64)
        split["vision_lengths"] = vision_lengths.astype(np.int64)
    if sims:
        for m in "TAV":
            split[f"regression_labels_{m}"] = np.clip(np.array(labels, np.float32) + 0.2, -1, 1)
    return split


def make_mmsa_pickle(path: Path, kind: str = "mosei", aligned: bool = False) -> dict[str, Any]:
    """Write a tiny MMSA-format pickle (kind "mosei" or "sims") and return the dict that was pickled."""
    sims = kind == "sims"
    ids, labels, dims = (SIMS_IDS, SIMS_LABELS, SIMS_DIMS) if sims else (MOSEI_IDS, MOSEI_LABELS, MOSEI_DIMS)
    rng = np.random.default_rng(0)
    data = {name: _split(ids[name], labels[name], dims, aligned, sims, rng) for name in ("train", "valid", "test")}
    path.write_bytes(pickle.dumps(data))
    return data


@pytest.fixture()
def mosei(tmp_path: Path) -> tuple[dict[str, Any], Path]:
    data = make_mmsa_pickle(tmp_path / "unaligned_50.pkl")
    out = convert_mmsa_pickle(tmp_path / "unaligned_50.pkl", tmp_path / "mosei", "mosei", allow_pickle=True)
    (tmp_path / "unaligned_50.pkl").unlink()  # the safe folder must stand on its own
    return data, out


class _RunsCode:
    """Unpickling this creates a directory: the kind of side effect a hostile pickle could have."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def test_pickle_is_refused_without_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "code_ran"
    hostile = tmp_path / "hostile.pkl"
    hostile.write_bytes(pickle.dumps({"train": _RunsCode(marker)}))
    with pytest.raises(DatasetError, match="arbitrary code.*allow_pickle=True"):
        read_mmsa_pickle(hostile)
    with pytest.raises(DatasetError, match="arbitrary code"):
        convert_mmsa_pickle(hostile, tmp_path / "out", "mosei")
    assert main(["convert", "--pickle", str(hostile), "--out", str(tmp_path / "out"), "--dataset", "mosei"]) == 2
    assert "--allow-pickle" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_cli_converts_to_safetensors_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_mmsa_pickle(tmp_path / "unaligned_50.pkl")
    out = tmp_path / "mosei"
    argv = [
        "convert",
        "--pickle",
        str(tmp_path / "unaligned_50.pkl"),
        "--out",
        str(out),
        "--dataset",
        "mosei",
        "--allow-pickle",
    ]
    assert main(argv) == 0
    assert "converted mosei" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "dev.safetensors",
        "mmsa.json",
        "test.safetensors",
        "train.safetensors",
    ]
    index = json.loads((out / "mmsa.json").read_text(encoding="utf-8"))
    assert (index["dataset"], index["language"], index["aligned"]) == ("mosei", "en", False)
    assert (index["audio_dim"], index["vision_dim"]) == MOSEI_DIMS
    assert index["source"] == "unaligned_50.pkl"  # the file name only, never the converting machine's path
    assert index["nonfinite_zeroed"] == {"audio": 3, "vision": 0}  # one -inf per split
    assert index["splits"]["dev"]["ids"] == ["vidC$_$1", "vidC$_$0"]
    assert index["splits"]["train"]["padded_frames"] == {"audio": 12, "vision": 9}
    assert index["splits"]["train"]["extra_labels"]["classification_labels"] == [2.0, 0.0, 2.0, 1.0]


def test_records(mosei: tuple[dict[str, Any], Path]) -> None:
    _, folder = mosei
    train = MmsaDataset("train", MmsaConfig(folder=str(folder)))
    assert (train.name, train.split, len(train), train.num_videos) == ("mosei", "train", 4, 2)
    records = list(train)
    # vidA's clips come together and in numeric clip order (1, 2, 10), then vidB.
    assert [(r.dialogue_id, r.utterance_index, r.meta["clip_id"]) for r in records] == [
        ("vidA", 0, "1"),
        ("vidA", 1, "2"),
        ("vidA", 2, "10"),
        ("vidB", 0, "0"),
    ]
    assert [[r.meta["id"] for r in d] for d in group_dialogues(records)] == [
        ["vidA$_$1", "vidA$_$2", "vidA$_$10"],
        ["vidB$_$0"],
    ]
    first = records[0]
    assert first.text == "utterance vidA 1"
    assert (first.dataset, first.language, first.emotion, first.speaker) == ("mosei", "en", None, "")
    assert first.audio_path is None and first.video_path is None
    # MOSEI labels [-3, 3] -> sentiment / 3; the original label stays in meta.
    assert {r.meta["id"]: (r.meta["label"], r.sentiment) for r in records} == {
        "vidA$_$1": ("0.0", 0.0),
        "vidA$_$2": ("1.4", pytest.approx(1.4 / 3)),
        "vidA$_$10": ("3.0", 1.0),
        "vidB$_$0": ("-3.0", -1.0),
    }
    dev = MmsaDataset("dev", MmsaConfig(folder=str(folder), dataset="mosei"))
    assert [r.key for r in dev] == ["mosei/dev/vidC/0", "mosei/dev/vidC/1"]
    assert [r.meta["label"] for r in dev] == ["2.2", "-0.6"]


def test_features_are_trimmed_to_their_lengths(mosei: tuple[dict[str, Any], Path]) -> None:
    data, folder = mosei
    for split, mmsa_split in (("train", "train"), ("test", "test")):
        ds = MmsaDataset(split, MmsaConfig(folder=str(folder)))
        source = data[mmsa_split]
        row_of = {clip_id: i for i, clip_id in enumerate(source["id"])}
        for record in ds:
            i = row_of[record.meta["id"]]
            audio, vision = ds.features(record)
            assert audio.dtype == np.float32 and vision.dtype == np.float32
            assert audio.shape == (source["audio_lengths"][i], MOSEI_DIMS[0])
            assert vision.shape == (source["vision_lengths"][i], MOSEI_DIMS[1])
            expected = source["audio"][i, : source["audio_lengths"][i]].copy()
            expected[~np.isfinite(expected)] = 0.0  # the -inf became 0
            np.testing.assert_array_equal(audio, expected)
            np.testing.assert_array_equal(vision, source["vision"][i, : source["vision_lengths"][i]])
    train = MmsaDataset("train", MmsaConfig(folder=str(folder)))
    no_face = next(r for r in train if r.meta["id"] == "vidB$_$0")  # file row 1: vision length 0
    assert train.features(no_face)[1].shape == (0, MOSEI_DIMS[1])
    dev = MmsaDataset("dev", MmsaConfig(folder=str(folder)))
    with pytest.raises(DatasetError, match="not in mosei split 'dev'"):
        dev.features(next(iter(train)))


def test_aligned_variant_keeps_every_step(tmp_path: Path) -> None:
    data = make_mmsa_pickle(tmp_path / "aligned_50.pkl", aligned=True)
    assert "audio_lengths" not in data["train"]
    data["train"]["regression_labels"] = data["train"]["regression_labels"][:, None]  # MMSA also stores (N, 1)
    (tmp_path / "aligned_50.pkl").write_bytes(pickle.dumps(data))
    folder = convert_mmsa_pickle(tmp_path / "aligned_50.pkl", tmp_path / "out", "mosi", allow_pickle=True)
    ds = MmsaDataset("train", MmsaConfig(folder=str(folder)))
    assert ds.aligned and ds.name == "mosi"
    assert [r.meta["label"] for r in ds] == ["0.0", "1.4", "3.0", "-3.0"]
    audio, vision = ds.features(next(iter(ds)))
    assert audio.shape == (8, MOSEI_DIMS[0]) and vision.shape == (8, MOSEI_DIMS[1])


def test_sims_variant(tmp_path: Path) -> None:
    make_mmsa_pickle(tmp_path / "unaligned_39.pkl", kind="sims")
    folder = convert_mmsa_pickle(tmp_path / "unaligned_39.pkl", tmp_path / "sims", "sims", allow_pickle=True)
    ds = MmsaDataset("train", MmsaConfig(folder=str(folder)))
    assert (ds.audio_dim, ds.vision_dim, ds.aligned, ds.language) == (*SIMS_DIMS, False, "zh")
    fusion = dataclasses.replace(FusionConfig(), **ds.fusion_dims)
    assert (fusion.audio_dim, fusion.visual_dim) == SIMS_DIMS
    records = list(ds)
    assert [r.meta["id"] for r in records] == ["video_0002$_$0001", "video_0002$_$0003", "video_0001$_$0002"]
    assert all(r.language == "zh" for r in records)
    # SIMS labels are already in [-1, 1]: sentiment is the label itself; per-modality labels are kept.
    assert [r.sentiment for r in records] == [pytest.approx(0.2), pytest.approx(0.8), -1.0]
    assert records[0].meta["regression_labels_T"] == "0.4" and records[2].meta["regression_labels_V"] == "-0.8"
    audio, vision = ds.features(records[0])
    assert audio.shape[1] == 33 and vision.shape[1] == 709


def _rewrite(tmp_path: Path, change) -> Path:
    data = make_mmsa_pickle(tmp_path / "bad.pkl")
    change(data)
    (tmp_path / "bad.pkl").write_bytes(pickle.dumps(data))
    return tmp_path / "bad.pkl"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["train"].pop("vision"), r"split 'train'.*missing field\(s\) \['vision'\]"),
        (lambda d: d.pop("valid"), r"missing split\(s\) \['valid'\]"),
        (lambda d: d["test"].update(audio=d["test"]["audio"][:, :, 0]), r"split 'test'.*field 'audio'.*\(3, 12\)"),
        (lambda d: d["valid"].update(vision=d["valid"]["vision"][:1]), r"field 'vision' must have shape \(2, T, d\)"),
        (
            lambda d: d["train"].update(audio_lengths=d["train"]["audio_lengths"] + 20),
            r"field 'audio_lengths'.*0\.\.12",
        ),
        (
            lambda d: d["train"].update(regression_labels=np.array([4.0, 0, 0, 0], np.float32)),
            r"field 'regression_labels' must lie in \[-3, 3\]",
        ),
        (lambda d: d["train"].update(id=np.array(["a_1", "b$_$1", "c$_$1", "d$_$1"])), r"field 'id'\[0\] = 'a_1'"),
        (lambda d: d["train"].update(raw_text=d["train"]["raw_text"][:2]), r"field 'raw_text' must hold 4 strings"),
        (lambda d: d["valid"].update(regression_labels=0.5), r"split 'valid'.*field 'regression_labels' must be an"),
        (
            lambda d: d["test"].update(vision=np.zeros((3, 9, 7), np.float32)),
            r"field 'vision' has different feature dims across splits: \[7, 35\]",
        ),
    ],
)
def test_malformed_pickles_name_the_field(tmp_path: Path, change, message: str) -> None:
    bad = _rewrite(tmp_path, change)
    with pytest.raises(DatasetError, match=message):
        convert_mmsa_pickle(bad, tmp_path / "out", "mosei", allow_pickle=True)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_folder_errors(mosei: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    _, folder = mosei
    with pytest.raises(DatasetError, match="'valid' is 'dev' here"):
        MmsaDataset("valid", MmsaConfig(folder=str(folder)))
    with pytest.raises(DatasetError, match="holds 'mosei', not 'sims'"):
        MmsaDataset("train", MmsaConfig(folder=str(folder), dataset="sims"))
    with pytest.raises(DatasetError, match="convert MMSA's pickle first"):
        MmsaDataset("train", MmsaConfig(folder=str(tmp_path / "nowhere")))
    with pytest.raises(DatasetError, match="dataset must be one of"):
        convert_mmsa_pickle(tmp_path / "x.pkl", tmp_path / "out", "iemocap", allow_pickle=True)


def test_tampered_folder_is_refused(mosei: tuple[dict[str, Any], Path]) -> None:
    _, folder = mosei
    save_file({"labels": np.zeros(3, np.float32)}, str(folder / "train.safetensors"))
    with pytest.raises(DatasetError, match=r"train.safetensors: array 'labels' must have shape \(4,\)"):
        MmsaDataset("train", MmsaConfig(folder=str(folder)))
