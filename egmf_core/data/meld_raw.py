"""MELD with its official audio-visual clips (MELD.Raw): the same CSVs as `meld.py`, plus one mp4 per utterance.

MELD.Raw.tar.gz (see docs/datasets.md) holds per split a `<split>_sent_emo.csv` and a folder of clips named
`dia{Dialogue_ID}_utt{Utterance_ID}.mp4`: `train_splits/`, `dev_splits_complete/` and
`output_repeated_splits_test/`. Unpacked copies differ in where these sit (the widely shared layout has
`train/train_sent_emo.csv`, `train/train_splits/`, `dev_sent_emo.csv`, `dev/dev_splits_complete/`, ...), so each is
looked up first inside `<split>/`, then at the top of the folder.

The CSV rows are parsed by `MeldDataset` itself (labels, text repair, ordering), so both loaders always agree; a
clip is both the audio and the video of its record, and its features come from the same extractors as every other
file (`WhisperFrontend.encoder_states_file`, `FaceFeatureExtractor.extract_file`, cached by `FeatureCache`). Public
copies lack a few clips (dev `dia110_utt7.mp4`): `on_missing` decides whether that is an error (default), drops those
utterances or keeps them text-only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from egmf_core.data.base import (
    DatasetError,
    UtteranceRecord,
    apply_missing_media,
    check_missing_policy,
    resolve_data_dir,
)
from egmf_core.data.meld import MeldConfig, MeldDataset

MELD_CLIP_FOLDERS: dict[str, str] = {
    "train": "train_splits",
    "dev": "dev_splits_complete",
    "test": "output_repeated_splits_test",
}


@dataclass(frozen=True)
class MeldRawConfig(MeldConfig):
    """Where MELD.Raw lives and what a missing clip means.

    `root`: the unpacked MELD.Raw folder; `None` = `<data dir>/MELD.Raw` (data dir as in `MeldConfig`).
    `on_missing`: `"error"`, `"skip"` (drop the utterance) or `"mask"` (keep it without audio and video).
    """

    root: str | None = None
    on_missing: str = "error"

    def __post_init__(self) -> None:
        check_missing_policy(self.on_missing)


def _find(root: Path, split: str, name: str) -> Path:
    candidates = (root / split / name, root / name)
    for path in candidates:
        if path.exists():
            return path
    raise DatasetError(f"MELD.Raw {split}: {name} not found (looked for {candidates[0]} and {candidates[1]})")


class MeldRawDataset(MeldDataset):
    """One MELD split whose records carry their clip as `audio_path` and `video_path`."""

    name = "meld_raw"
    config: MeldRawConfig

    def __init__(self, split: str, config: MeldRawConfig | None = None) -> None:
        config = config or MeldRawConfig()
        self.root = Path(config.root) if config.root else resolve_data_dir(config.data_dir) / "MELD.Raw"
        super().__init__(split, config)

    def _csv_path(self) -> Path:
        return _find(self.root, self.split, f"{self.split}_sent_emo.csv")

    def _load(self) -> list[UtteranceRecord]:
        clips = _find(self.root, self.split, MELD_CLIP_FOLDERS[self.split])
        records = []
        for record in super()._load():
            clip = str(clips / f"dia{record.dialogue_id}_utt{record.utterance_index}.mp4")
            records.append(replace(record, audio_path=clip, video_path=clip))
        return apply_missing_media(records, self.config.on_missing, f"MELD.Raw {self.split} clips in {clips}")
