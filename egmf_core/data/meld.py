"""MELD (Friends dialogues): text, speakers, dialogue order, 7 emotions and 3 sentiments.

Only the CSVs are available here (no audio or video), so every record has `audio_path=None` and
`video_path=None` and those branches are masked; `meld_raw.py` reads the same CSVs with the official clips. MELD's
`StartTime`/`EndTime` locate the line inside the TV episode, not inside any file we have, so they go to `meta`
rather than `start_s`/`end_s`.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from egmf_core.data.base import (
    DatasetError,
    LoadedSplit,
    UtteranceRecord,
    resolve_data_dir,
)

log = logging.getLogger(__name__)

MELD_SPLITS: tuple[str, ...] = ("train", "dev", "test")
SENTIMENT_SCORES: dict[str, float] = {"negative": -1.0, "neutral": 0.0, "positive": 1.0}

# Typographic punctuation -> ASCII. The live transcript comes from Whisper, which writes plain ASCII apostrophes
# and quotes, so training text is normalised the same way to keep "don’t" and "don't" one token sequence.
_ASCII_PUNCT = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u2013": "-",
        "\u2014": "-",
        "\u2026": "...",
        "\u00a0": " ",
    }
)
# UTF-8 text that was decoded as cp1252 ("â€™" for "’", "Ã©" for "é"): runs of non-ASCII characters are re-encoded
# as cp1252 and decoded as UTF-8; runs for which that fails are genuine text and stay as they are.
_NON_ASCII_RUN = re.compile("[^\x00-\x7f]+")
# A lone "Â" left before a space or at the end is the remnant of a mangled no-break space.
_STRAY_A_CIRC = re.compile("\u00c2(?=\\s|$)")
# C1 control characters: cp1252 bytes (0x91 = left single quote, ...) that were decoded as Latin-1.
_C1 = re.compile("[\u0080-\u009f]")
_SPACES = re.compile(r"\s+")


def _c1_to_cp1252(match: re.Match[str]) -> str:
    try:
        return bytes([ord(match.group())]).decode("cp1252")
    except UnicodeDecodeError:  # 0x81, 0x8d, 0x8f, 0x90, 0x9d are undefined in cp1252
        return ""


def _undo_cp1252_mojibake(match: re.Match[str]) -> str:
    run = match.group()
    try:
        return run.encode("cp1252").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return run


def clean_text(text: str) -> str:
    """Repair MELD's encoding artifacts and normalise punctuation to what the live recognizer writes.

    Handles the two kinds of damage found in public MELD copies: UTF-8 read as cp1252 ("Monicaâ€™s") and raw cp1252
    bytes read as Latin-1 ("Monica\\x92s"). Then typographic quotes, dashes and ellipses become ASCII and whitespace
    is collapsed. Accented letters ("Café") are kept.
    """
    text = _NON_ASCII_RUN.sub(_undo_cp1252_mojibake, text)
    text = _STRAY_A_CIRC.sub("", text)
    text = _C1.sub(_c1_to_cp1252, text)
    text = text.translate(_ASCII_PUNCT)
    return _SPACES.sub(" ", text).strip()


@dataclass(frozen=True)
class MeldConfig:
    """Where MELD lives. `data_dir` falls back to `$EGMF_DATA_DIR`, then `<repo>/../shared/data`."""

    data_dir: str | None = None


class MeldDataset(LoadedSplit):
    """One MELD split as an ordered sequence of `UtteranceRecord`s (dialogue by dialogue, in spoken order).

    The CSV is small (at most ~10k rows), so it is read and validated once, eagerly: a malformed row fails at
    construction with its file and line, not in the middle of a training epoch.
    """

    name = "meld"

    def __init__(self, split: str, config: MeldConfig | None = None) -> None:
        if split not in MELD_SPLITS:
            raise DatasetError(f"MELD split must be one of {MELD_SPLITS}, got {split!r}")
        self.split = split
        self.config = config or MeldConfig()
        self.path = self._csv_path()
        self._records = self._load()
        log.info("%s %s: %d utterances in %d dialogues", self.name, split, len(self._records), self.num_dialogues)

    def _csv_path(self) -> Path:
        """The split's `<split>_sent_emo.csv` (a hook: `MeldRawDataset` reads the copy inside MELD.Raw)."""
        return resolve_data_dir(self.config.data_dir) / "meld" / f"{self.split}_sent_emo.csv"

    def _load(self) -> list[UtteranceRecord]:
        if not self.path.is_file():
            raise DatasetError(f"MELD file {self.path} not found")
        records: list[UtteranceRecord] = []
        with self.path.open(encoding="utf-8", newline="") as handle:
            for line, row in enumerate(csv.DictReader(handle), start=2):
                try:
                    records.append(self._record(row))
                except (KeyError, ValueError) as exc:
                    raise DatasetError(f"{self.path}:{line}: {exc}") from exc
        # The official CSVs are already ordered; sorting (stable) makes the ordering contract hold regardless.
        records.sort(key=lambda r: (int(r.dialogue_id), r.utterance_index))
        return records

    def _record(self, row: dict[str, str]) -> UtteranceRecord:
        sentiment = row["Sentiment"].strip().lower()
        if sentiment not in SENTIMENT_SCORES:
            raise ValueError(f"Sentiment must be one of {tuple(SENTIMENT_SCORES)}, got {sentiment!r}")
        emotion = row["Emotion"].strip().lower()
        return UtteranceRecord(
            dataset=self.name,
            split=self.split,
            dialogue_id=str(int(row["Dialogue_ID"])),
            utterance_index=int(row["Utterance_ID"]),
            speaker=clean_text(row["Speaker"]),
            text=clean_text(row["Utterance"]),
            emotion=emotion,
            sentiment=SENTIMENT_SCORES[sentiment],
            emotion_original=emotion,
            meta={
                "season": row["Season"],
                "episode": row["Episode"],
                "episode_start": row["StartTime"],
                "episode_end": row["EndTime"],
            },
        )

