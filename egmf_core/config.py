"""Typed configuration for EGMF.

Every dimension of the model lives here so that a checkpoint can carry its full configuration and be rebuilt
exactly. Configs load from YAML or plain dicts; unknown or mistyped keys raise a `ConfigError` that names the
field, because a silently ignored typo in a training config wastes hours of CPU.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

EMOTIONS: tuple[str, ...] = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
SENTIMENTS: tuple[str, ...] = ("negative", "neutral", "positive")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


@dataclass
class BackboneConfig:
    """Which causal LLM carries the answer.

    `name` is a registry key (`smollm2-135m-instruct`, `gemma3-270m`), a Hugging Face model id or a local folder.
    Nothing outside `egmf_core.backbone` knows which one is loaded.
    """

    name: str = "smollm2-135m-instruct"
    dtype: str = "float32"  # "bfloat16" on GPU machines
    device: str = "cpu"


@dataclass
class LoRAConfig:
    enabled: bool = True  # False = the "no LoRA" ablation: the LLM stays frozen
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    # Restrict LoRA to these decoder layers (None = all). Upper layers only lets the backward pass stop early on CPU.
    layers: list[int] | None = None
    # One adapter per utterance language, e.g. ["en", "zh"]: each utterance runs through its language's adapter and
    # prompt template; the first is the default, which also takes every language without an adapter, and must be
    # prompt.language. None = one adapter for every language (checkpoints from before language adapters).
    languages: list[str] | None = None

    def check_languages(self, prompt_language: str) -> None:
        """Each adapter is trained with its language's prompt template, so every language needs one, and the default
        adapter's is prompt.language (the template of utterances in any other language)."""
        langs = self.languages
        if langs is None:
            return
        if not langs or len(set(langs)) != len(langs):
            raise ConfigError(f"lora.languages must be distinct language codes (or null), got {langs}")
        if langs[0] != prompt_language:
            raise ConfigError(
                f"lora.languages[0] is the default adapter and must be prompt.language {prompt_language!r}, got {langs}"
            )
        unknown = [lang for lang in langs if lang not in ("en", "zh")]
        if unknown:
            raise ConfigError(f"lora.languages {unknown}: no prompt template for them (templates: 'en', 'zh')")
        if len(langs) > 1 and not self.enabled:
            raise ConfigError(f"lora.languages lists {len(langs)} adapters but lora.enabled is false")


@dataclass
class FusionConfig:
    """The expert-guided fusion stack between frame features and pseudo tokens."""

    audio_dim: int = 384  # faster-whisper tiny.en encoder states, 50 Hz
    visual_dim: int = 58  # 52 FaceLandmarker blendshapes + yaw/pitch/roll + translation
    audio_rate: float = 50.0  # frames per second of the audio features
    visual_rate: float = 10.0  # frames per second of the visual features
    audio_stride: int = 2  # temporal downsampling of audio frames before the encoder
    hidden: int = 256  # d_h
    heads: int = 4
    encoder_layers: int = 2
    dropout: float = 0.1
    pseudo_tokens: int = 8  # K
    max_text_tokens: int = 64  # utterance tokens seen by the fusion text branch
    # Utterance-level acoustic statistics (masked mean and std of the audio frames) added to f: the summary a
    # linear probe on the same encoder states already finds discriminative, given a short path past the attention.
    audio_stats: bool = False
    # Integrated loudness (LUFS) every utterance is normalized to before the speech encoder (training, evaluation and
    # live alike: `WhisperFrontendConfig.loudness_lufs`); None = audio as recorded (checkpoints before the field).
    audio_loudness_lufs: float | None = None


@dataclass
class AblationConfig:
    """Switches for the paper's ablations. A dropped modality is masked, never fed as zeros."""

    use_audio: bool = True
    use_video: bool = True
    use_text: bool = True
    experts: list[bool] = field(default_factory=lambda: [True, True, True])  # E1 local, E2 semantic, E3 global
    gating: str = "hierarchical"  # or "uniform"


@dataclass
class PromptConfig:
    language: str = "en"  # "en" or "zh" templates
    max_context_turns: int = 3  # bounded past-only context window
    max_turn_tokens: int = 40  # each context turn / utterance is truncated to this many tokens
    score_min: float = -1.0
    score_max: float = 1.0
    score_decimals: int = 1
    # Where the conversation goes (`PROMPT_LAYOUTS`). "pseudo_first": [system; cues; pseudo tokens; context; current
    # utterance; task] (every checkpoint trained before the field existed). "context_first": [system; task; context;
    # cues; pseudo tokens; current utterance]: everything before the pseudo tokens is the same for every utterance of
    # a stream until its next turn, so a live stream's KV cache carries it over and each utterance's prompt pass
    # covers only its own ~30-40 ids. A checkpoint is served with the layout it was trained with.
    layout: str = "pseudo_first"


PROMPT_LAYOUTS = ("pseudo_first", "context_first")

RAVDESS_EMOTIONS: tuple[str, ...] = ("neutral", "calm", "joy", "sadness", "anger", "fear", "disgust", "surprise")


@dataclass
class ScoreScale:
    """The answer scale of a sentiment-only task: the score alone, on a grid from score_min to score_max.

    Sentiment-intensity benchmarks (CMU-MOSI/MOSEI in [-3, 3], CH-SIMS in [-1, 1]) are answered on their own scale:
    the answer is the label as annotated to the grid's resolution (0.1 of the data set's own units, where [-1, 1]
    would give MOSEI steps of 0.3), and the benchmark's metrics read it directly, with no rescaling that float
    rounding could push across a class edge (Acc-7 rounds at x.5).
    """

    score_min: float = -1.0
    score_max: float = 1.0
    score_decimals: int = 1

    def check(self, where: str) -> None:
        """Refuse an empty range, and a grid too fine to list: scoring builds a trie of every valid answer."""
        if not self.score_min < self.score_max:
            raise ConfigError(f"{where}.score_min ({self.score_min}) must be below {where}.score_max "
                              f"({self.score_max})")
        if not 0 <= self.score_decimals <= 3:
            raise ConfigError(f"{where}.score_decimals must be 0..3, got {self.score_decimals}")


@dataclass
class TaskConfig:
    emotions: list[str] = field(default_factory=lambda: list(EMOTIONS))
    # Dataset-specific label sets: the task prompt lists the dataset's own labels (the paper's per-dataset task
    # prompts), e.g. RAVDESS's 8 classes, whose "calm" has no MELD equivalent. Live analysis uses `emotions`.
    dataset_emotions: dict[str, list[str]] = field(default_factory=lambda: {"ravdess": list(RAVDESS_EMOTIONS)})
    # Sentiment-only label sets (e.g. {"mosei": {score_min: -3.0, score_max: 3.0}}): the task prompt asks for a
    # sentiment score only and the answer is the score alone on that scale, no emotion (MOSI, MOSEI, CH-SIMS).
    score_tasks: dict[str, ScoreScale] = field(default_factory=dict)
    sentiments: list[str] = field(default_factory=lambda: list(SENTIMENTS))
    # Score -> sentiment label: below -threshold negative, above +threshold positive, else neutral.
    sentiment_threshold: float = 0.5


@dataclass
class EGMFConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    task: TaskConfig = field(default_factory=TaskConfig)

    def validate(self) -> None:
        f, a, p = self.fusion, self.ablation, self.prompt
        if f.hidden % 8 != 0:
            raise ConfigError(f"fusion.hidden must be divisible by 8 (expert bottleneck d/8), got {f.hidden}")
        if f.hidden % f.heads != 0:
            raise ConfigError(f"fusion.hidden ({f.hidden}) must be divisible by fusion.heads ({f.heads})")
        if f.pseudo_tokens < 1:
            raise ConfigError(f"fusion.pseudo_tokens must be >= 1, got {f.pseudo_tokens}")
        if len(a.experts) != 3 or not any(a.experts):
            raise ConfigError(f"ablation.experts must be 3 booleans with at least one true, got {a.experts}")
        if a.gating not in ("hierarchical", "uniform"):
            raise ConfigError(f"ablation.gating must be 'hierarchical' or 'uniform', got {a.gating!r}")
        if p.language not in ("en", "zh"):
            raise ConfigError(f"prompt.language must be 'en' or 'zh', got {p.language!r}")
        if p.layout not in PROMPT_LAYOUTS:
            raise ConfigError(f"prompt.layout must be one of {list(PROMPT_LAYOUTS)}, got {p.layout!r}")
        self.lora.check_languages(p.language)
        if not p.score_min < p.score_max:
            raise ConfigError("prompt.score_min must be below prompt.score_max")
        if len(set(self.task.emotions)) != len(self.task.emotions) or len(self.task.emotions) < 2:
            raise ConfigError(f"task.emotions must be at least 2 distinct labels, got {self.task.emotions}")
        self._check_score_tasks()

    def _check_score_tasks(self) -> None:
        """A score task's name is a label set like the emotion ones, so the two must not share a name."""
        for name, scale in self.task.score_tasks.items():
            if name == "default" or name in self.task.dataset_emotions:
                raise ConfigError(
                    f"task.score_tasks.{name}: the name is already an emotion label set (default or "
                    "task.dataset_emotions)"
                )
            scale.check(f"task.score_tasks.{name}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EGMFConfig":
        cfg = build_dataclass(cls, data, "")
        cfg.validate()
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> "EGMFConfig":
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        model = data.get("model", data)
        return cls.from_dict(model)


def build_dataclass(cls: type, data: Any, prefix: str = "") -> Any:
    """Recursively build dataclass `cls` from `data`, naming the offending field on error."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown config field(s) {sorted(prefix + k for k in unknown)}; known: {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, where + ".")
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value
