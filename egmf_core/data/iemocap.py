"""IEMOCAP (10 actors, 5 dyadic sessions): the published `IEMOCAP_full_release` folder, read as it is distributed.

Per session `Session{n}/`:
- `dialog/EmoEvaluation/<dialog>.txt`: one block per annotated utterance, headed by a line
  `[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]` (span in the dialogue, utterance
  id, consensus label, mean valence/activation/dominance on 1-5), followed by the evaluators' `C-...`/`A-...` lines;
- `dialog/transcriptions/<dialog>.txt`: `Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.`; its lines without
  an annotated utterance id (`M: Yeah.`, overlapping `..._MXX0` turns) have no label and are not records;
- `sentences/wav/<dialog>/<utterance id>.wav`: the utterance's audio (the record's `audio_path`);
- `dialog/avi/DivX/<dialog>.avi`: the whole dialogue's video, both actors side by side (the record's `video_path`,
  with `start_s`/`end_s` locating the utterance in it; the face extractor does not crop to the speaker's half).

A dialogue is one `<dialog>` file in time order; `speaker` is the utterance's F/M letter and `meta["actor"]` the
actor (`Ses01M`). Labels: `neu hap exc sad ang fru sur fea dis oth xxx` (`xxx`: no consensus). `emotion` maps onto
MELD's seven where an equivalent exists (hap and exc -> joy); fru, oth and xxx have none and keep `emotion=None`
with the label in `emotion_original`. IEMOCAP has no sentiment labels, so `sentiment` is `None`: the dimensional
ratings stay in `meta` (`valence`, `activation`, `dominance`, as written in the file) rather than being passed off as
a sentiment score. The benchmarks' 6-class and 4-class label sets are `IEMOCAP_LABEL_SETS`.

Splits are leave-one-session-out: `test` is `test_session`, `train` the other four sessions, and `dev` (optional) the
utterances of one actor of a training session, which `train` then leaves out so that no voice is in both. The other
actor's turns of those dialogues stay training data, so a dev utterance's context holds only its actor's own turns.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from egmf_core.data.base import (
    DatasetError,
    LoadedSplit,
    UtteranceRecord,
    apply_missing_media,
    check_missing_policy,
    resolve_data_dir,
)
from egmf_core.data.meld import clean_text

log = logging.getLogger(__name__)

IEMOCAP_SESSIONS: tuple[int, ...] = (1, 2, 3, 4, 5)
IEMOCAP_SPLITS: tuple[str, ...] = ("train", "dev", "test")
IEMOCAP_LABELS: tuple[str, ...] = ("neu", "hap", "exc", "sad", "ang", "fru", "sur", "fea", "dis", "oth", "xxx")
IEMOCAP_TO_MELD: dict[str, str] = {
    "neu": "neutral",
    "hap": "joy",
    "exc": "joy",
    "sad": "sadness",
    "ang": "anger",
    "sur": "surprise",
    "fea": "fear",
    "dis": "disgust",
}
# The benchmarks' label sets, as `original label -> answer label`; utterances with other labels are outside the set.
# Answer labels use MELD's names where one is equivalent and IEMOCAP's own otherwise (as RAVDESS's "calm"), so one
# model answers "joy" for MELD's joy and IEMOCAP's happiness. 4-class merges excited into happy, as is standard.
IEMOCAP_LABEL_SETS: dict[str, dict[str, str]] = {
    "iemocap6": {
        "hap": "joy",
        "sad": "sadness",
        "neu": "neutral",
        "ang": "anger",
        "exc": "excited",
        "fru": "frustrated",
    },
    "iemocap4": {"hap": "joy", "exc": "joy", "sad": "sadness", "neu": "neutral", "ang": "anger"},
}
# The same sets as label lists, the form `TaskConfig.dataset_emotions` takes.
IEMOCAP_EMOTIONS: dict[str, tuple[str, ...]] = {
    name: tuple(dict.fromkeys(mapping.values())) for name, mapping in IEMOCAP_LABEL_SETS.items()
}

_EVALUATION = re.compile(
    r"^\[\s*(?P<start>\d+\.\d+)\s*-\s*(?P<end>\d+\.\d+)\s*\]\s+(?P<utt>\S+)\s+(?P<label>\S+)\s+"
    r"\[\s*(?P<val>\d+\.\d+),\s*(?P<act>\d+\.\d+),\s*(?P<dom>\d+\.\d+)\s*\]$"
)
_TRANSCRIPT = re.compile(r"^(?P<utt>\S+)\s*\[\d+\.\d+-\d+\.\d+\]:\s?(?P<text>.*)$")
_NON_SPEECH = re.compile(r"\[[A-Za-z]+\]")  # [LAUGHTER], [BREATHING], ...: the live recognizer never writes them
_ACTOR = re.compile(r"^Ses0[1-5][FM]$")


@dataclass(frozen=True)
class IemocapUtterance:
    """One annotated utterance as its EmoEvaluation line gives it."""

    utterance_id: str
    speaker: str  # "F" or "M"
    start_s: float
    end_s: float
    label: str
    valence: str
    activation: str
    dominance: str


def _read_lines(path: Path) -> list[str]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:  # a copy that is not UTF-8 is read byte for byte; clean_text repairs cp1252 marks
        text = data.decode("latin-1")
    return text.splitlines()


def parse_emo_evaluation(path: Path, dialog: str) -> list[IemocapUtterance]:
    """The annotated utterances of one `EmoEvaluation/<dialog>.txt`, in file order.

    Raises `DatasetError` naming the file and line for a line that is none of: blank, the `%` header, an utterance
    line, an evaluator's `C-`/`A-` line; and for an unknown label or an utterance id of another dialogue.
    """
    utterance_id = re.compile(rf"^{re.escape(dialog)}_(?P<speaker>[FM])\d{{3}}$")
    out: list[IemocapUtterance] = []
    for number, line in enumerate(_read_lines(path), start=1):
        line = line.strip()
        if not line or line.startswith(("%", "C-", "A-")):
            continue
        match = _EVALUATION.match(line)
        if match is None:
            raise DatasetError(f"{path}:{number}: expected '[start - end] id label [V, A, D]', got {line!r}")
        utt, label = match["utt"], match["label"]
        speaker = utterance_id.match(utt)
        if speaker is None:
            raise DatasetError(f"{path}:{number}: utterance id {utt!r} does not belong to dialogue {dialog!r}")
        if label not in IEMOCAP_LABELS:
            raise DatasetError(f"{path}:{number}: label {label!r} is not one of {IEMOCAP_LABELS}")
        start, end = float(match["start"]), float(match["end"])
        if end < start:
            raise DatasetError(f"{path}:{number}: utterance {utt} ends ({end}) before it starts ({start})")
        dims = match["val"], match["act"], match["dom"]
        out.append(IemocapUtterance(utt, speaker["speaker"], start, end, label, *dims))
    ids = [u.utterance_id for u in out]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{path}: utterance ids appear twice: {sorted({i for i in ids if ids.count(i) > 1})}")
    return out


def parse_transcriptions(path: Path, dialog: str) -> dict[str, str]:
    """Utterance id -> cleaned text of one `transcriptions/<dialog>.txt`.

    Lines that start with an utterance id of the dialogue must carry its `[start-end]:` span (else `DatasetError`
    with file and line); untimed lines (`M: Yeah.`) are short unannotated turns and are skipped.
    """
    out: dict[str, str] = {}
    for number, line in enumerate(_read_lines(path), start=1):
        line = line.strip()
        if not line.startswith(f"{dialog}_"):
            continue
        match = _TRANSCRIPT.match(line)
        if match is None:
            raise DatasetError(f"{path}:{number}: expected 'id [start-end]: text', got {line!r}")
        out[match["utt"]] = clean_text(_NON_SPEECH.sub(" ", match["text"]))
    return out


@dataclass(frozen=True)
class IemocapConfig:
    """Where IEMOCAP lives and how it is split.

    `root`: the `IEMOCAP_full_release` folder; `None` = `<data dir>/IEMOCAP_full_release` (data dir as in
    `MeldConfig`). `test_session`: the held-out session (1-5; 5 is the usual choice). `dev_speaker`: an actor of a
    training session (`"Ses04F"`) whose utterances form the `dev` split and are left out of `train`; `None` = no
    dev split. `on_missing`: what a missing wav or avi means: `"error"`, `"skip"` (drop the utterance) or `"mask"`
    (keep it without that modality; use it when the avi folder was not downloaded).
    """

    data_dir: str | None = None
    root: str | None = None
    test_session: int = 5
    dev_speaker: str | None = None
    on_missing: str = "error"

    def __post_init__(self) -> None:
        if self.test_session not in IEMOCAP_SESSIONS:
            raise DatasetError(f"IEMOCAP test_session must be one of {IEMOCAP_SESSIONS}, got {self.test_session!r}")
        if self.dev_speaker is not None:
            if not _ACTOR.match(self.dev_speaker):
                raise DatasetError(f"IEMOCAP dev_speaker must look like 'Ses04F', got {self.dev_speaker!r}")
            if int(self.dev_speaker[3:5]) == self.test_session:
                raise DatasetError(f"IEMOCAP dev_speaker {self.dev_speaker} is in the test session {self.test_session}")
        check_missing_policy(self.on_missing)


class IemocapDataset(LoadedSplit):
    """One leave-one-session-out split, dialogue by dialogue (sessions and dialogues by name, utterances by time)."""

    name = "iemocap"

    def __init__(self, split: str, config: IemocapConfig | None = None) -> None:
        if split not in IEMOCAP_SPLITS:
            raise DatasetError(f"IEMOCAP split must be one of {IEMOCAP_SPLITS}, got {split!r}")
        self.config = config or IemocapConfig()
        self.split = split
        dev = self.config.dev_speaker
        if split == "dev":
            if dev is None:
                raise DatasetError("IEMOCAP has a 'dev' split only when IemocapConfig.dev_speaker names an actor")
            self.sessions: tuple[int, ...] = (int(dev[3:5]),)
        elif split == "test":
            self.sessions = (self.config.test_session,)
        else:
            self.sessions = tuple(s for s in IEMOCAP_SESSIONS if s != self.config.test_session)
        root = self.config.root
        self.root = Path(root) if root else resolve_data_dir(self.config.data_dir) / "IEMOCAP_full_release"
        records = [r for session in self.sessions for r in self._load_session(session) if self._keep(r)]
        self._records = apply_missing_media(records, self.config.on_missing, f"IEMOCAP {split} media under {self.root}")
        log.info("IEMOCAP %s: %d utterances from sessions %s", split, len(self._records), self.sessions)

    def _keep(self, record: UtteranceRecord) -> bool:
        held_out = record.meta["actor"] == self.config.dev_speaker
        return held_out if self.split == "dev" else not held_out

    def _load_session(self, session: int) -> list[UtteranceRecord]:
        folder = self.root / f"Session{session}"
        evaluations = folder / "dialog" / "EmoEvaluation"
        if not evaluations.is_dir():
            raise DatasetError(f"IEMOCAP folder {evaluations} not found")
        dialogs = sorted(p for p in evaluations.glob("*.txt") if not p.name.startswith("."))
        if not dialogs:
            raise DatasetError(f"IEMOCAP: no <dialog>.txt files in {evaluations}")
        return [r for path in dialogs for r in self._load_dialog(folder, session, path)]

    def _load_dialog(self, folder: Path, session: int, evaluation: Path) -> list[UtteranceRecord]:
        dialog = evaluation.stem
        transcription = folder / "dialog" / "transcriptions" / f"{dialog}.txt"
        if not transcription.is_file():
            raise DatasetError(f"IEMOCAP transcription {transcription} not found (needed by {evaluation})")
        texts = parse_transcriptions(transcription, dialog)
        utterances = sorted(parse_emo_evaluation(evaluation, dialog), key=lambda u: (u.start_s, u.utterance_id))
        video = folder / "dialog" / "avi" / "DivX" / f"{dialog}.avi"
        records = []
        for index, u in enumerate(utterances):
            if u.utterance_id not in texts:
                raise DatasetError(f"{transcription}: no line for {u.utterance_id} (annotated in {evaluation})")
            records.append(
                UtteranceRecord(
                    dataset=self.name,
                    split=self.split,
                    dialogue_id=dialog,
                    utterance_index=index,
                    speaker=u.speaker,
                    text=texts[u.utterance_id],
                    emotion=IEMOCAP_TO_MELD.get(u.label),
                    sentiment=None,
                    audio_path=str(folder / "sentences" / "wav" / dialog / f"{u.utterance_id}.wav"),
                    video_path=str(video),
                    start_s=u.start_s,
                    end_s=u.end_s,
                    emotion_original=u.label,
                    meta={
                        "utterance_id": u.utterance_id,
                        "session": str(session),
                        "actor": f"Ses{session:02d}{u.speaker}",
                        "valence": u.valence,
                        "activation": u.activation,
                        "dominance": u.dominance,
                    },
                )
            )
        return records
