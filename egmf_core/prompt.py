"""Prompt construction: [E_prefix; T_pseudo; E_suffix; P_task] and the generative answer format.

Two layouts (`PromptConfig.layout`) fill that frame. "pseudo_first": the prefix is the system prompt, the suffix the
conversation so far, the current utterance and the question. "context_first": the prefix is the system prompt, the
question and the conversation so far, the suffix the current utterance: the prefix is what consecutive utterances
of a stream share (`PromptIds.reusable`), so its KV cache is computed once per turn, not once per utterance.

Every piece of text is tokenized once: the constant pieces when the builder is created, each conversation turn
when it is first seen (`make_turn`). A prompt is then a concatenation of cached token ids, so a live stream never
re-tokenizes the conversation, and training and serving build byte-identical prompts.

The answer is "<label> <score>" followed by the end-of-turn token, e.g. "joy +0.6": emotion and sentiment are
answered jointly in one generation (the paper's unified generative targets; one LLM pass per utterance instead of
one per task). Scores live on a fixed grid (`score_min..score_max`, `score_decimals`), so the set of valid answers is
closed and can be scored exactly.

Sentiment-only label sets (`TaskConfig.score_tasks`: MOSI, MOSEI, CH-SIMS) have no emotion: their prompt asks for the
score only and the answer is "<score>" (e.g. "+1.4") on the task's own grid, followed by the end-of-turn token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from transformers import PreTrainedTokenizerBase

from .config import ConfigError, PromptConfig, ScoreScale, TaskConfig
from .conversation import ContextWindow

_TEMPLATES = {
    "en": {
        "system": "You recognize emotions and sentiment in conversations from speech, face and words.",
        "cues": "Nonverbal cues of the current utterance:",
        "context": "Conversation so far:\n",
        "no_context": "Conversation so far: (start)\n",
        "current": "Current utterance, ",
        "no_text": " [no transcript]\n",
        "instruction": (
            "What is the emotion of the current utterance ({labels}) and its sentiment score "
            "(from {lo} to {hi})? Answer with the emotion and the score."
        ),
        "score_instruction": (
            "What is the sentiment score of the current utterance (from {lo} to {hi})? Answer with the score only."
        ),
    },
    "zh": {
        "system": "你根据语音、面部和文字识别对话中的情绪和情感倾向。",
        "cues": "当前话语的非语言线索：",
        "context": "之前的对话：\n",
        "no_context": "之前的对话：（开始）\n",
        "current": "当前话语，",
        "no_text": " [无文字]\n",
        "instruction": "当前话语的情绪是什么（{labels}）？情感分数是多少（{lo} 到 {hi}）？请回答情绪和分数。",
        "score_instruction": "当前话语的情感分数是多少（{lo} 到 {hi}）？只回答分数。",
    },
}

DEFAULT_LABEL_SET = "default"
_PSEUDO_MARK = "\u0000PSEUDO\u0000"
_TASK_MARK = "\u0000TASK\u0000"
_ANSWER_RE = re.compile(r"^\s*([^\W\d_]+)\s*([+-]?\d+(?:\.\d+)?)?")
_SCORE_RE = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class Turn:
    """One conversation turn, tokenized once."""

    speaker: str
    text: str
    speaker_ids: tuple[int, ...]  # "Speaker:" piece
    text_ids: tuple[int, ...]  # " text\n" piece, truncated to max_turn_tokens (also the fusion text input)


@dataclass(frozen=True)
class TemplateIds:
    """One language's constant prompt pieces, tokenized once."""

    prefix: list[int]  # chat head + system message + "cues" line, before the pseudo tokens ("pseudo_first")
    head: list[int]  # chat head + system message, up to the user's text ("context_first")
    cues: list[int]  # the line that introduces the pseudo tokens
    suffix: list[int]  # right after the pseudo tokens
    context: list[int]
    no_context: list[int]
    current: list[int]
    no_text: list[int]
    instruction: dict[str, list[int]]  # per label set, the question + end of the user's turn + start of the answer
    question: dict[str, list[int]]  # per label set, the question alone and a line break ("context_first")
    tail: list[int]  # end of the user's turn + start of the answer ("context_first")


@dataclass(frozen=True)
class PromptIds:
    before: list[int]  # prefix: ids placed before the K pseudo tokens
    after: list[int]  # suffix + task prompt, up to the start of the answer
    # How many leading ids of `before` the next prompts of the same conversation (same language and label set) also
    # start with, until its next turn: the part whose KV cache is worth keeping. The whole prefix in
    # "pseudo_first" (a constant); all of it in "context_first" (the question, the context and the cues line).
    reusable: int = 0
    # How many leading ids of `before` every prompt of this template and label set starts with (<= reusable): the
    # KV cache worth keeping for a stream's first utterance after its context changed (the question, in
    # "context_first").
    shared: int = 0


def format_score(value: float, decimals: int) -> str:
    return f"{value:+.{decimals}f}"


def score_grid(scale: ScoreScale) -> list[float]:
    """Every valid answer score of `scale`, from score_min to score_max in steps of 10**-score_decimals."""
    steps = round((scale.score_max - scale.score_min) * 10**scale.score_decimals)
    return [round(scale.score_min + i / 10**scale.score_decimals, scale.score_decimals) for i in range(steps + 1)]


class PromptBuilder:
    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, prompt: PromptConfig, task: TaskConfig, use_text: bool = True
    ):
        self.tok = tokenizer
        self.cfg = prompt
        self.task = task
        self.use_text = use_text
        # Sentiment-only label sets offer no emotion labels: an empty list.
        self.label_sets: dict[str, list[str]] = {
            DEFAULT_LABEL_SET: list(task.emotions), **task.dataset_emotions, **{name: [] for name in task.score_tasks}
        }
        # Each label set's score grid: the prompt's for emotion label sets, its own for a sentiment-only one.
        default_scale = ScoreScale(prompt.score_min, prompt.score_max, prompt.score_decimals)
        self.scales = {name: task.score_tasks.get(name, default_scale) for name in self.label_sets}
        # Every language's template, so that each utterance can be prompted in its own language (language adapters).
        self.templates = {language: self._template_ids(language) for language in _TEMPLATES}
        self.eos_id = self._end_of_turn_id()
        self.label_ids = {label: self._ids(label) for labels in self.label_sets.values() for label in labels}
        for name, labels in self.label_sets.items():
            firsts = [self.label_ids[label][0] for label in labels]
            if len(set(firsts)) != len(firsts):
                raise ConfigError(
                    f"label set {name!r} {labels}: two labels start with the same token for this tokenizer, "
                    "so they cannot be scored in one pass; rename one of them"
                )
        self.score_values = score_grid(default_scale)
        self.score_ids = {v: self._ids(" " + format_score(v, prompt.score_decimals)) for v in self.score_values}
        # A score-only answer opens the reply, so it has no leading space ("+1.4", not " +1.4").
        self.score_only_ids = {
            name: {v: self._ids(format_score(v, scale.score_decimals)) for v in score_grid(scale)}
            for name, scale in task.score_tasks.items()
        }

    # -- construction -------------------------------------------------------------------------------------------
    def _ids(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def _template_ids(self, language: str) -> TemplateIds:
        t = _TEMPLATES[language]
        head, middle, tail = self._chat_frame(t["system"])
        return TemplateIds(
            prefix=self._ids(head + t["cues"]),
            head=self._ids(head),
            cues=self._ids(t["cues"]),
            suffix=self._ids("\n" + middle),
            context=self._ids(t["context"]),
            no_context=self._ids(t["no_context"]),
            current=self._ids(t["current"]),
            no_text=self._ids(t["no_text"]),
            instruction={name: self._ids(self._instruction(t, name) + tail) for name in self.label_sets},
            question={name: self._ids(self._instruction(t, name) + "\n") for name in self.label_sets},
            tail=self._ids(tail),
        )

    def _instruction(self, template: dict[str, str], label_set: str) -> str:
        """The task sentence of `label_set`: emotion and score, or the score only for a sentiment-only set."""
        scale = self.scales[label_set]
        lo, hi = (format_score(scale.score_min, scale.score_decimals),
                  format_score(scale.score_max, scale.score_decimals))
        if self.is_score_only(label_set):
            return template["score_instruction"].format(lo=lo, hi=hi)
        return template["instruction"].format(labels=", ".join(self.label_sets[label_set]), lo=lo, hi=hi)

    def _chat_frame(self, system: str) -> tuple[str, str, str]:
        """Split the backbone's chat template into text before the pseudo tokens, between, and after the task.

        Instruction-tuned backbones get their own chat format; base models (no template) get plain text.
        """
        if getattr(self.tok, "chat_template", None):
            rendered = self.tok.apply_chat_template(
                [{"role": "system", "content": system}, {"role": "user", "content": _PSEUDO_MARK + _TASK_MARK}],
                tokenize=False,
                add_generation_prompt=True,
            )
            if _PSEUDO_MARK in rendered and _TASK_MARK in rendered:
                head, rest = rendered.split(_PSEUDO_MARK)
                middle, tail = rest.split(_TASK_MARK)
                return head, middle, tail
        return system + "\n", "", "\nAnswer:"

    def _end_of_turn_id(self) -> int:
        if getattr(self.tok, "chat_template", None):
            rendered = self.tok.apply_chat_template(
                [{"role": "user", "content": "x"}, {"role": "assistant", "content": _TASK_MARK}], tokenize=False
            )
            after = rendered.rsplit(_TASK_MARK, 1)[1] if _TASK_MARK in rendered else ""
            ids = self._ids(after)
            if ids and ids[0] in self.tok.all_special_ids:
                return ids[0]
        if self.tok.eos_token_id is None:
            raise ConfigError("the backbone tokenizer has no end-of-sequence token")
        return self.tok.eos_token_id

    def make_turn(self, speaker: str, text: str) -> Turn:
        speaker = (speaker or "Speaker").strip()
        text_ids = self._ids(" " + " ".join(text.split()))[: self.cfg.max_turn_tokens] + self._ids("\n")
        return Turn(speaker, text, tuple(self._ids(speaker + ":")), tuple(text_ids))

    def new_context(self) -> ContextWindow:
        return ContextWindow(self.cfg.max_context_turns)

    def check_label_set(self, name: str) -> list[str]:
        if name not in self.label_sets:
            raise ValueError(f"label_set {name!r} is unknown; known: {sorted(self.label_sets)}")
        return self.label_sets[name]

    def is_score_only(self, label_set: str) -> bool:
        """Whether `label_set` is a sentiment-only task (`TaskConfig.score_tasks`): no emotion, the score alone."""
        return label_set in self.task.score_tasks

    def _template(self, language: str | None) -> TemplateIds:
        """`language`'s template (None = prompt.language), or a clear error naming the known ones."""
        language = language or self.cfg.language
        if language not in self.templates:
            raise ValueError(f"language {language!r} has no prompt template; known: {sorted(self.templates)}")
        return self.templates[language]

    def _context_ids(self, t: TemplateIds, context: Sequence[Turn]) -> list[int]:
        if not (self.use_text and context):
            return list(t.no_context)
        ids = list(t.context)
        for turn in context:
            ids += turn.speaker_ids + turn.text_ids
        return ids

    def _current_ids(self, t: TemplateIds, current: Turn) -> list[int]:
        return list(t.current) + list(current.speaker_ids) + (list(current.text_ids) if self.use_text else t.no_text)

    def build(
        self, context: Sequence[Turn], current: Turn, label_set: str = "default", language: str | None = None
    ) -> PromptIds:
        """The prompt of `current` after `context`, in the template of `language` (None = prompt.language), laid out
        as `PromptConfig.layout` says (see the module docstring)."""
        t = self._template(language)
        self.check_label_set(label_set)
        if self.cfg.layout == "context_first":
            lead = self.reusable_ids(context, label_set, language)
            after = list(t.suffix) + self._current_ids(t, current) + t.tail
            shared = len(t.head) + len(t.question[label_set])
            return PromptIds(before=lead, after=after, reusable=len(lead), shared=shared)
        after = list(t.suffix) + self._context_ids(t, context) + self._current_ids(t, current)
        after += t.instruction[label_set]
        return PromptIds(before=list(t.prefix), after=after, reusable=len(t.prefix), shared=len(t.prefix))

    def reusable_ids(self, context: Sequence[Turn], label_set: str = "default",
                     language: str | None = None) -> list[int]:
        """`PromptIds.before[:reusable]` of any utterance that follows `context`: what a KV cache can hold before the
        utterance is known (`EGMFModel.prime`)."""
        t = self._template(language)
        self.check_label_set(label_set)
        if self.cfg.layout == "context_first":
            return t.head + t.question[label_set] + self._context_ids(t, context) + t.cues
        return list(t.prefix)

    # -- answers ------------------------------------------------------------------------------------------------
    def snap_score(self, value: float, label_set: str = "default") -> float:
        """`value` clipped to `label_set`'s score range and rounded to its grid."""
        self.check_label_set(label_set)
        scale = self.scales[label_set]
        return round(min(max(value, scale.score_min), scale.score_max), scale.score_decimals)

    def scale_sentiment(self, sentiment: float | None, label_set: str = "default") -> float | None:
        """A record's sentiment (in [-1, 1], the dataset contract) on `label_set`'s answer scale.

        Sentiment-only tasks answer on their own range (MOSEI: -1 -> -3.0, +1 -> +3.0); the emotion label sets'
        scores are the record's own, unchanged.
        """
        if sentiment is None or not self.is_score_only(label_set):
            return sentiment
        scale = self.scales[label_set]
        return scale.score_min + (sentiment + 1.0) / 2.0 * (scale.score_max - scale.score_min)

    def answer_ids(
        self, emotion: str | None, sentiment: float | None, label_set: str = "default"
    ) -> tuple[list[int], int]:
        """Token ids of the target answer and how many of them carry a loss.

        With an unknown sentiment (e.g. RAVDESS) only the label tokens are trained. A sentiment-only label set's
        answer is the score and the end-of-turn token, all of it trained; it needs a sentiment, and no emotion.
        """
        labels = self.check_label_set(label_set)
        if self.is_score_only(label_set):
            if sentiment is None:
                raise ValueError(f"label set {label_set!r} is sentiment-only: training inputs need a sentiment score "
                                 "(field 'sentiment')")
            ids = self.score_only_ids[label_set][self.snap_score(sentiment, label_set)] + [self.eos_id]
            return ids, len(ids)
        if emotion is None:
            raise ValueError("training inputs need an emotion label (field 'emotion')")
        if emotion not in labels:
            raise ValueError(f"emotion label {emotion!r} is not in label set {label_set!r} {labels}")
        ids = list(self.label_ids[emotion])
        if sentiment is None:
            return ids, len(ids)
        ids += self.score_ids[self.snap_score(sentiment)] + [self.eos_id]
        return ids, len(ids)

    def answer_candidates(self, label_set: str = "default") -> Iterable[tuple[str | None, float, list[int]]]:
        """Every valid answer of `label_set` as (label, score, token ids); the label is None for a sentiment-only
        set, whose answers are the scores alone."""
        labels = self.check_label_set(label_set)
        if self.is_score_only(label_set):
            for value, sids in self.score_only_ids[label_set].items():
                yield None, value, sids + [self.eos_id]
            return
        for label in labels:
            for value, sids in self.score_ids.items():
                yield label, value, self.label_ids[label] + sids + [self.eos_id]

    def parse_answer(self, text: str, label_set: str = "default") -> tuple[str | None, float | None]:
        """Parse generated text "joy +0.6" into (label, score); unknown parts come back as None. A sentiment-only
        set's answer "+1.4" gives (None, 1.4)."""
        labels = self.check_label_set(label_set)
        if self.is_score_only(label_set):
            m = _SCORE_RE.match(text)
            return None, float(m.group(1)) if m else None
        m = _ANSWER_RE.match(text)
        if not m:
            return None, None
        label = m.group(1).lower()
        score = float(m.group(2)) if m.group(2) is not None else None
        return (label if label in labels else None), score

    def sentiment_label(self, score: float, label_set: str = "default") -> str:
        """negative / neutral / positive by `task.sentiment_threshold`, which is on the [-1, 1] scale: a
        sentiment-only task's score is mapped back onto it first (MOSEI: divided by 3)."""
        if self.is_score_only(label_set):
            scale = self.scales[label_set]
            score = 2.0 * (score - scale.score_min) / (scale.score_max - scale.score_min) - 1.0
        neg, neu, pos = self.task.sentiments
        if score <= -self.task.sentiment_threshold:
            return neg
        if score >= self.task.sentiment_threshold:
            return pos
        return neu
