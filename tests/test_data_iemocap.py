"""IEMOCAP loader on a tiny IEMOCAP_full_release folder written in the published formats, with real speech."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from media_clips import cut_clip, speak

from egmf_core.data import (
    IEMOCAP_EMOTIONS,
    IEMOCAP_LABEL_SETS,
    DatasetError,
    IemocapConfig,
    IemocapDataset,
    group_dialogues,
    load_dataset,
    resolve_data_dir,
)
from egmf_core.data.iemocap import parse_emo_evaluation, parse_transcriptions

# One dialogue per session; impro and script dialogues are named as in the release.
DIALOGS = {
    1: "Ses01F_impro01",
    2: "Ses02M_script01_1",
    3: "Ses03F_impro05",
    4: "Ses04M_script02_2",
    5: "Ses05F_impro03",
}
# (suffix, span, label, V/A/D, words) in EmoEvaluation order, which is not time order.
UTTERANCES = [
    ("F000", (1.0, 2.2), "neu", "2.5000, 2.5000, 2.5000", "Excuse me."),
    ("F001", (4.0, 5.0), "exc", "4.0000, 3.5000, 3.0000", "[LAUGHTER] Yeah, that is great."),
    ("M000", (2.5, 3.6), "fru", "2.0000, 3.5000, 3.5000", "Do you have your forms?"),
]
EMO_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"


def _evaluation(dialog: str) -> str:
    blocks = []
    for suffix, (start, end), label, vad, _ in UTTERANCES:
        blocks.append(
            f"[{start:.4f} - {end:.4f}]\t{dialog}_{suffix}\t{label}\t[{vad}]\n"
            "C-E2:\tNeutral;\t()\nC-E3:\tFrustration; Anger;\t()\nC-F1:\tNeutral;\t(curious)\n"
            "A-E3:\tval 3; act 2; dom  2;\t()\nA-F1:\tval 3; act 2; dom  1;\t()\n\n"
        )
    return EMO_HEADER + "".join(blocks)


def _transcription(dialog: str) -> str:
    by_time = sorted(UTTERANCES, key=lambda u: u[1][0])
    lines = [f"{dialog}_{s} [{a:08.4f}-{b:08.4f}]: {words}" for s, (a, b), _, _, words in by_time]
    lines.insert(2, "M: Mm-hmm.")  # an untimed backchannel: no label, not a record
    lines.append(f"{dialog}_MXX0 [005.1000-005.9000]: [BREATHING] Right.")  # overlap turn: no label
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`<data dir>/IEMOCAP_full_release` with one dialogue per session: labels, transcripts, wavs and the avi."""
    data = tmp_path_factory.mktemp("data")
    release = data / "IEMOCAP_full_release"
    speech = {s: speak(words, data / f"{s}.wav") for s, _, _, _, words in UTTERANCES}
    avi = cut_clip(resolve_data_dir() / "media" / "talking_heads" / "2.mp4", data / "dialog.avi", 0.0, 6.0)
    for session, dialog in DIALOGS.items():
        folder = release / f"Session{session}"
        for sub in ("dialog/EmoEvaluation", "dialog/transcriptions", "dialog/avi/DivX", f"sentences/wav/{dialog}"):
            (folder / sub).mkdir(parents=True)
        (folder / "dialog/EmoEvaluation" / f"{dialog}.txt").write_text(_evaluation(dialog))
        (folder / "dialog/transcriptions" / f"{dialog}.txt").write_text(_transcription(dialog))
        shutil.copy(avi, folder / "dialog/avi/DivX" / f"{dialog}.avi")
        for suffix, wav in speech.items():
            shutil.copy(wav, folder / "sentences/wav" / dialog / f"{dialog}_{suffix}.wav")
    return release


def test_test_split_is_the_held_out_session_in_time_order(root: Path) -> None:
    records = list(load_dataset("iemocap", "test", data_dir=str(root.parent)))
    dialog = DIALOGS[5]
    assert [r.meta["utterance_id"] for r in records] == [f"{dialog}_{s}" for s in ("F000", "M000", "F001")]
    assert [r.utterance_index for r in records] == [0, 1, 2] and len(list(group_dialogues(records))) == 1
    assert [r.speaker for r in records] == ["F", "M", "F"]
    assert [r.meta["actor"] for r in records] == ["Ses05F", "Ses05M", "Ses05F"]
    assert [r.emotion for r in records] == ["neutral", None, "joy"]  # fru has no MELD equivalent
    assert [r.emotion_original for r in records] == ["neu", "fru", "exc"]
    assert [(r.start_s, r.end_s) for r in records] == [(1.0, 2.2), (2.5, 3.6), (4.0, 5.0)]
    assert [r.text for r in records] == ["Excuse me.", "Do you have your forms?", "Yeah, that is great."]
    assert all(r.sentiment is None and r.language == "en" and r.split == "test" for r in records)
    assert records[1].meta["valence"] == "2.0000" and records[1].meta["dominance"] == "3.5000"
    folder = root / "Session5"
    assert records[0].audio_path == str(folder / "sentences/wav" / dialog / f"{dialog}_F000.wav")
    assert {r.video_path for r in records} == {str(folder / "dialog/avi/DivX" / f"{dialog}.avi")}


@pytest.mark.parametrize("test_session", [1, 2, 3, 4, 5])
def test_leave_one_session_out(root: Path, test_session: int) -> None:
    config = IemocapConfig(root=str(root), test_session=test_session)
    train, test = IemocapDataset("train", config), IemocapDataset("test", config)
    assert train.sessions == tuple(s for s in range(1, 6) if s != test_session) and test.sessions == (test_session,)
    assert {r.meta["session"] for r in train} == {str(s) for s in train.sessions}
    assert {r.meta["session"] for r in test} == {str(test_session)}
    assert not {r.meta["actor"] for r in train} & {r.meta["actor"] for r in test}
    assert not {r.dialogue_id for r in train} & {r.dialogue_id for r in test}
    assert len(train) == 12 and train.num_dialogues == 4 and len(list(group_dialogues(train))) == 4


def test_dev_is_one_held_out_actor_of_a_training_session(root: Path) -> None:
    config = IemocapConfig(root=str(root), dev_speaker="Ses02M")
    dev, train = list(IemocapDataset("dev", config)), list(IemocapDataset("train", config))
    assert [r.meta["utterance_id"] for r in dev] == [f"{DIALOGS[2]}_M000"]
    assert "Ses02M" not in {r.meta["actor"] for r in train} and len(train) == 11
    with pytest.raises(DatasetError, match="dev_speaker names an actor"):
        IemocapDataset("dev", IemocapConfig(root=str(root)))
    with pytest.raises(DatasetError, match="is in the test session"):
        IemocapConfig(dev_speaker="Ses05F")
    with pytest.raises(DatasetError, match="look like 'Ses04F'"):
        IemocapConfig(dev_speaker="Ses2M")
    with pytest.raises(DatasetError, match="test_session"):
        IemocapConfig(test_session=6)


def test_label_sets() -> None:
    assert IEMOCAP_EMOTIONS["iemocap6"] == ("joy", "sadness", "neutral", "anger", "excited", "frustrated")
    assert IEMOCAP_EMOTIONS["iemocap4"] == ("joy", "sadness", "neutral", "anger")
    assert IEMOCAP_LABEL_SETS["iemocap4"]["exc"] == IEMOCAP_LABEL_SETS["iemocap4"]["hap"] == "joy"
    assert set(IEMOCAP_LABEL_SETS["iemocap6"]) == {"hap", "sad", "neu", "ang", "exc", "fru"}
    from egmf_core.research.examples import DATASET_LABELS  # the gold labels training and evaluation use

    six, four = DATASET_LABELS["iemocap6"], DATASET_LABELS["iemocap4"]
    assert [six(x) for x in ("exc", "fru", "sur", "xxx")] == ["excited", "frustrated", None, None]
    assert [four(x) for x in ("exc", "hap", "fru")] == ["joy", "joy", None]


def _copy(root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "IEMOCAP_full_release"
    shutil.copytree(root, copy)
    return copy


def _corrupt(root: Path, tmp_path: Path, relative: str, old: str, new: str) -> Path:
    copy = _copy(root, tmp_path)
    path = copy / relative
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return copy


def test_bad_evaluation_line_names_file_and_line(root: Path, tmp_path: Path) -> None:
    relative = f"Session5/dialog/EmoEvaluation/{DIALOGS[5]}.txt"
    copy = _corrupt(root, tmp_path, relative, "[1.0000 - 2.2000]\t", "[1.0000 2.2000]\t")
    with pytest.raises(DatasetError, match=rf"{DIALOGS[5]}\.txt:3: expected '\[start - end\] id label"):
        IemocapDataset("test", IemocapConfig(root=str(copy)))
    with pytest.raises(DatasetError, match=r":3: label 'joy' is not one of"):
        parse_emo_evaluation(_write(tmp_path / "bad.txt", _evaluation("D").replace("\tneu\t", "\tjoy\t")), "D")
    with pytest.raises(DatasetError, match=r":10: utterance id 'Other_M000' does not belong to dialogue 'D'"):
        parse_emo_evaluation(_write(tmp_path / "bad.txt", _evaluation("D").replace("D_F001", "Other_M000")), "D")
    with pytest.raises(DatasetError, match=":5: expected"):
        parse_emo_evaluation(_write(tmp_path / "bad.txt", _evaluation("D").replace("C-E3:", "Evaluator 3:")), "D")


def test_bad_transcription_line_names_file_and_line(root: Path, tmp_path: Path) -> None:
    relative = f"Session5/dialog/transcriptions/{DIALOGS[5]}.txt"
    copy = _corrupt(root, tmp_path, relative, "_M000 [002.5000-003.6000]:", "_M000 002.5-003.6:")
    with pytest.raises(DatasetError, match=rf"{DIALOGS[5]}\.txt:2: expected 'id \[start-end\]: text'"):
        IemocapDataset("test", IemocapConfig(root=str(copy)))
    texts = parse_transcriptions(_write(tmp_path / "t.txt", _transcription("D")), "D")
    assert texts == {
        "D_F000": "Excuse me.",
        "D_M000": "Do you have your forms?",
        "D_F001": "Yeah, that is great.",
        "D_MXX0": "Right.",
    }


def test_unannotated_transcript_and_missing_files(root: Path, tmp_path: Path) -> None:
    relative = f"Session5/dialog/transcriptions/{DIALOGS[5]}.txt"
    copy = _corrupt(root, tmp_path, relative, f"{DIALOGS[5]}_M000 ", f"{DIALOGS[5]}_M099 ")
    with pytest.raises(DatasetError, match=f"no line for {DIALOGS[5]}_M000"):
        IemocapDataset("test", IemocapConfig(root=str(copy)))
    shutil.rmtree(copy)
    copy = _copy(root, tmp_path)
    (copy / "Session5/dialog/avi/DivX" / f"{DIALOGS[5]}.avi").unlink()
    missing = rf"1 media file\(s\) not found for 3 of 3 utterances, e\.g\. {DIALOGS[5]}\.avi"
    with pytest.raises(DatasetError, match=missing):
        IemocapDataset("test", IemocapConfig(root=str(copy)))
    masked = list(IemocapDataset("test", IemocapConfig(root=str(copy), on_missing="mask")))
    assert all(r.video_path is None and r.audio_path is not None for r in masked)
    shutil.rmtree(copy / "Session1")
    with pytest.raises(DatasetError, match="Session1/dialog/EmoEvaluation not found"):
        IemocapDataset("train", IemocapConfig(root=str(copy)))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_training_on_iemocap_with_its_six_class_label_set(root: Path, tmp_path: Path) -> None:
    """`python -m egmf_core.research.train` with a `data.extra` entry: IEMOCAP's 6-class benchmark trains and is scored
    on its dev split, in the dataset's own labels (so users with the data need one config, one command)."""
    import json

    import yaml

    from egmf_core.research.train import main

    labels = sorted(set(IEMOCAP_LABEL_SETS["iemocap6"].values()))
    config = {
        "model": {"task": {"dataset_emotions": {"iemocap6": labels}}},
        "data": {
            "meld": False,
            "ravdess": False,
            "data_dir": str(root.parent),
            "extra": [{"name": "iemocap", "train_split": "train", "dev_split": "test", "label_set": "iemocap6"}],
        },
        "train": {"epochs": 1, "max_steps": 2, "batch_size": 4, "warmup_steps": 1, "out_dir": str(tmp_path / "run")},
    }
    path = tmp_path / "iemocap.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["--config", str(path)]) == 0
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    dev = history[-1]["dev"]["iemocap"]
    assert dev["emotion"]["labels"] == labels
    assert dev["emotion"]["n"] == 3  # session 5's three turns: neutral, excited, frustrated are all 6-class labels
    assert (tmp_path / "run" / "best.safetensors").is_file()


def test_training_config_names_an_unknown_extra_dataset(tmp_path: Path) -> None:
    from egmf_core.config import ConfigError
    from egmf_core.research.run_config import RunConfig

    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  extra:\n    - name: mosei_typo\n")
    with pytest.raises(ConfigError, match="data.extra.name"):
        RunConfig.from_yaml(path)
