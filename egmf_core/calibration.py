"""Confidence calibration: what the emotion probabilities mean, stored in the checkpoint and applied everywhere.

The LLM's softmax over the labels' first answer tokens is sharp: before calibration the shipped model said 0.9+
about utterances it got right well under 90 % of the time, so 0.99 carried no meaning. Temperature scaling (Guo et
al., 2017) divides those logits by a temperature per label set, fitted on dev data by `python -m
egmf_core.research.fit_calibration` (held-out NLL); it never changes which label wins, only how sure the answer says it
is. `load_checkpoint` attaches the file's calibration to the model, and `EGMFModel.score` applies it, so the CLI, the
service, evaluation and every benchmark report the same calibrated probabilities.

Two regimes, two temperatures: where the voice prior (`egmf_core.audio_prior`) adds its log-probabilities to the
logits, the sum is sharper than the LLM's logits alone, so one temperature over both either flattens the text-led
answers (MELD dev: mean confidence 0.46 at 57 % accuracy with a temperature shared half and half) or leaves the
voice-led ones over-confident. A label set may therefore carry a second temperature, under the key
``"<label set>+voice"``, for the rows the voice prior guided; without it the label set's own applies.

Sentiment is answered as a score on [-1, 1] (and a label derived from it), not as a probability: it has no
confidence to calibrate.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["METADATA_KEY", "VOICED", "Calibration"]

#: The checkpoint metadata entry that holds the calibration (JSON); absent = uncalibrated (temperature 1).
METADATA_KEY = "calibration"
#: Suffix of the temperature key for rows the voice prior guided ("default+voice").
VOICED = "+voice"


@dataclass(frozen=True)
class Calibration:
    """``emotion_temperature``: label set name -> temperature (> 0) dividing its first-answer-token logits, and
    ``"<label set>+voice"`` -> the temperature for its rows the voice prior guided (default: the label set's own);
    a label set without an entry is left as the LLM gives it. ``fitted_on``: what the temperatures were fitted on."""

    emotion_temperature: dict[str, float] = field(default_factory=dict)
    fitted_on: str = ""

    def __post_init__(self) -> None:
        for name, t in self.emotion_temperature.items():
            if not (isinstance(t, (int, float)) and 0.05 <= t <= 20.0):
                raise ValueError(f"calibration.emotion_temperature.{name}: expected a number in [0.05, 20], got {t!r}")

    @staticmethod
    def key(label_set: str, voiced: bool = False) -> str:
        """The ``emotion_temperature`` entry of `label_set`'s rows, voice-guided (`voiced`) or not."""
        return label_set + VOICED if voiced else label_set

    def temperature(self, label_set: str, voiced: bool = False) -> float:
        """The temperature of `label_set`'s rows; `voiced`: a row whose logits the voice prior guided."""
        own = float(self.emotion_temperature.get(label_set, 1.0))
        return float(self.emotion_temperature.get(self.key(label_set, True), own)) if voiced else own

    def row_temperatures(self, label_set: str, voiced: Sequence[bool]) -> np.ndarray:
        """(N,) the temperature each of N rows of `label_set` was divided by (evaluation and fitting reports)."""
        return np.array([self.temperature(label_set, bool(v)) for v in voiced], float)

    def emotion_probs(self, logits: torch.Tensor, label_set: str, voiced: bool = False) -> torch.Tensor:
        """Calibrated probabilities from the labels' first-answer-token logits (last dimension)."""
        return torch.softmax(logits.float() / self.temperature(label_set, voiced), dim=-1)

    def to_json(self) -> str:
        return json.dumps({"emotion_temperature": self.emotion_temperature, "fitted_on": self.fitted_on})

    @classmethod
    def from_json(cls, text: str | None) -> "Calibration":
        if not text:
            return cls()
        data = json.loads(text)
        return cls({str(k): float(v) for k, v in data.get("emotion_temperature", {}).items()},
                   str(data.get("fitted_on", "")))
