"""What goes into `EGMFModel` (one utterance with its context) and what comes out (one prediction)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .prompt import Turn


@dataclass
class ModelInput:
    """One utterance with its past-only context. Media features are optional (missing = masked)."""

    context: Sequence[Turn]
    current: Turn
    audio: np.ndarray | None = None  # (T_a, audio_dim) float32, 50 Hz
    visual: np.ndarray | None = None  # (T_v, visual_dim) float32
    visual_valid: np.ndarray | None = None  # (T_v,) bool: False where no face was found
    emotion: str | None = None  # training target
    sentiment: float | None = None  # training target on the label set's score scale (None = unknown, not trained)
    # Which emotion label set the task prompt offers (see TaskConfig.dataset_emotions), or a sentiment-only task
    # (TaskConfig.score_tasks), whose inputs have no emotion.
    label_set: str = "default"
    # The utterance's language (e.g. the speech recognizer's): picks the LoRA adapter and the prompt template.
    # None = the model's default language; a language without an adapter falls back to the default (logged once).
    language: str | None = None


@dataclass
class Prediction:
    emotion: str  # "unknown" for a sentiment-only label set (and for an unparsed generation)
    emotion_probs: dict[str, float]  # empty for a sentiment-only label set
    sentiment_score: float  # on the label set's score scale (the prompt's; a sentiment-only task's own, e.g. [-3, 3])
    sentiment_label: str
    alpha: list[float]
    modalities: dict[str, bool]
    raw_text: str | None = None  # generated text (generation path only)
    # Whether the voice prior guided the emotion answer (`egmf_core.audio_prior`); its rows have their own temperature.
    voice_prior: bool = False
    # The answer's closest decision (scoring path only): the smallest logit gap between the option taken and the
    # runner-up over its first token and each branching step of its answer tree; inf when nothing was decided. How
    # near a tie the answer was: `EGMFPredictor`'s int8 check re-scores the rows under its threshold in fp32.
    decision_margin: float | None = None
    expert_outputs: np.ndarray | None = field(default=None, repr=False)
    # Wall time of the stages of the call that made this prediction (scoring path only; for a batch, the whole
    # batch's times): "fusion" (fusion stack), "llm_prefill" (prompt assembly + the LLM pass over the prompt),
    # "llm_answer" (the answer-tree pass on the KV cache and the greedy walk through it). Not part of any event.
    timings_ms: dict[str, float] | None = field(default=None, repr=False)
    # Tokens of this row per LLM pass (scoring path only): prompt ids taken from a kept KV cache ("cached", see
    # `PromptCache`) and encoded by the prompt pass ("encoded", the pseudo tokens included); answer-tree nodes the
    # prompt pass carried ("folded", see `EGMFModel.folded_answers`) and that a separate answer pass fed
    # ("answer_pass": 0 when a folded tree held the answer). Not part of any event.
    prompt_tokens: dict[str, int] | None = field(default=None, repr=False)
