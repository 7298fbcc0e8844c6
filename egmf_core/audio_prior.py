"""The voice prior: a linear classifier on the utterance's voice statistics that guides the LLM's emotion answer.

Why: on speakers it never heard, the EGMF model (fusion stack + LoRA LLM, trained on a handful of RAVDESS actors)
scored below a plain logistic regression on the mean and spread of the same Whisper encoder states (issue 25: 55 %
vs 67 % 8-class on unseen actors). A low-capacity classifier on utterance-level statistics is what generalizes across
speakers from so few of them; the LLM brings the words and the conversation. So the answer combines both, as
classifier-guided decoding: the labels' first-answer-token logits ``z`` of the LLM get ``strength * log p_prior``
added before the label is chosen and before calibration (``egmf_core.calibration``),

    s = z + strength[label_set] * log p_prior(label | voice),   label = argmax s,   probs = softmax(s / T)

and the answer is then generated down that label's answer tree as before. Utterances without audio (text only) are
answered by the LLM alone. The classifier, its input standardization and the strengths per label set are fitted by
``python -m egmf_core.research.fit_audio_prior`` (choices by cross-validation over RAVDESS actors, never the test
actors) and stored in the checkpoint's metadata (JSON, float32 arrays base64-encoded: no pickle); ``load_checkpoint``
attaches them, ``EGMFModel.score`` applies them, so the CLI, the service, evaluation and the benchmarks agree.

The input is exactly what ``egmf_core.fusion.AudioStatistics`` summarizes: the per-dimension mean and standard
deviation over the utterance's encoder frames (``ModelInput.audio``).

Familiar voices: the voice was learned from a few acted speakers in one studio, and it does not transfer: talking-head
interviews and the MEAD clips came out "anger 0.70-0.89" from their voice alone, and a probe trained on RAVDESS scored
below chance on another acted corpus (issue 25). So the prior also knows what the voices it was fitted on look like:
the principal subspace of their standardized statistics. An utterance whose statistics lie further outside that
subspace (mean squared residual) than any held-out speaker's under the channel conditions a user has (the
threshold, fitted on development actors never trained on) is an unfamiliar voice, and ``EGMFModel`` answers it
without its audio (words, face and conversation), which the model knows from MELD, rather than from a voice it
cannot read. ``Prediction.modalities["audio"]`` then says the audio was not used.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .array_json import decode_array, encode_array

__all__ = ["METADATA_KEY", "AudioPrior", "voice_statistics"]

#: The checkpoint metadata entry that holds the prior (JSON); absent = no prior (the LLM answers alone).
METADATA_KEY = "audio_prior"


def voice_statistics(frames: np.ndarray) -> np.ndarray:
    """(2 * dim,) float32: mean and standard deviation over the frames of one utterance's encoder states."""
    x = np.asarray(frames, np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"voice statistics: expected encoder states of shape (frames >= 1, dim), got {x.shape}")
    mean = x.mean(axis=0)
    std = np.sqrt(x.var(axis=0) + 1e-6)
    return np.concatenate([mean, std]).astype(np.float32)


@dataclass(frozen=True)
class AudioPrior:
    """``labels``: the classifier's classes; ``mean``/``scale``: input standardization (2*dim,); ``weight`` (C, 2*dim)
    and ``bias`` (C,): the linear classifier; ``merge``: a class counted as another label for label sets that lack
    it (RAVDESS's calm is MELD's neutral); ``strength``: label set -> weight of the prior's log-probabilities (a set
    without an entry, or 0, is answered by the LLM alone); ``fitted_on``: what it was fitted on (report).
    ``domain_center`` (2*dim,) and ``domain_basis`` (k, 2*dim, orthonormal rows): the training voices' principal
    subspace in standardized coordinates; ``domain_threshold``: the largest familiar residual (None: every voice is
    familiar, as for a file fitted before the check existed)."""

    labels: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    strength: dict[str, float] = field(default_factory=dict)
    merge: dict[str, str] = field(default_factory=dict)
    fitted_on: str = ""
    domain_center: np.ndarray | None = None
    domain_basis: np.ndarray | None = None
    domain_threshold: float | None = None

    def __post_init__(self) -> None:
        c, d = self.weight.shape if self.weight.ndim == 2 else (None, None)
        if c != len(self.labels) or self.bias.shape != (c,) or self.mean.shape != (d,) or self.scale.shape != (d,):
            raise ValueError(f"audio_prior: inconsistent shapes: {len(self.labels)} labels, weight "
                             f"{self.weight.shape}, bias {self.bias.shape}, mean {self.mean.shape}, scale "
                             f"{self.scale.shape}")
        if not (self.scale > 0).all():
            raise ValueError("audio_prior.scale: expected every entry > 0")
        for name, s in self.strength.items():
            if not (isinstance(s, (int, float)) and 0.0 <= s <= 10.0):
                raise ValueError(f"audio_prior.strength.{name}: expected a number in [0, 10], got {s!r}")
        if self.domain_threshold is not None:
            basis, center = self.domain_basis, self.domain_center
            if (center is None or basis is None or center.shape != (d,) or basis.ndim != 2 or basis.shape[1] != d
                    or not self.domain_threshold > 0):
                raise ValueError("audio_prior.domain: expected a center (2*dim,), a basis (k, 2*dim) and a threshold "
                                 "> 0 together")

    @property
    def dim(self) -> int:
        """Encoder state width the prior expects (half its input: mean and spread)."""
        return self.mean.shape[0] // 2

    def standardized(self, frames: np.ndarray) -> np.ndarray:
        """(2*dim,) the utterance's voice statistics in the prior's standardized coordinates."""
        return (voice_statistics(frames) - self.mean) / self.scale

    def domain_residual(self, frames: np.ndarray) -> float:
        """Mean squared distance of the utterance's standardized statistics from the training voices' principal
        subspace (0 when there is no domain model)."""
        if self.domain_basis is None or self.domain_center is None:
            return 0.0
        r = self.standardized(frames) - self.domain_center
        r = r - (self.domain_basis @ r) @ self.domain_basis
        return float(np.mean(np.square(r, dtype=np.float64)))

    def familiar(self, frames: np.ndarray) -> bool:
        """Whether the voice is like the ones the audio was learned from (see the module docstring); True without
        a domain model or for encoder states of another width (the prior stays out of those anyway)."""
        if self.domain_threshold is None or len(frames) == 0 or frames.shape[-1] != self.dim:
            return True
        return self.domain_residual(frames) <= self.domain_threshold

    def log_probs(self, frames: np.ndarray) -> np.ndarray:
        """(C,) log-probabilities of the prior's own classes for one utterance's encoder states."""
        z = self.standardized(frames)
        logits = self.weight @ z + self.bias
        logits = logits - logits.max()
        return logits - np.log(np.exp(logits).sum())

    def label_log_probs(self, frames: np.ndarray, labels: Sequence[str]) -> np.ndarray | None:
        """(len(labels),) log-probabilities of a label set's labels (merged classes summed in), or None when some
        label has no class of the prior (the prior then stays out)."""
        p = np.exp(self.log_probs(frames))
        out = np.zeros(len(labels))
        index = {lab: i for i, lab in enumerate(labels)}
        for c, lab in enumerate(self.labels):
            target = lab if lab in index else self.merge.get(lab)
            if target in index:
                out[index[target]] += p[c]
        if (out <= 0).any():
            return None
        return np.log(out)

    def bias_for(self, label_set: str, frames: np.ndarray | None, labels: Sequence[str]) -> np.ndarray | None:
        """What ``EGMFModel.score`` adds to the labels' first-token logits: ``strength * log p``; None without audio,
        without a strength for the set, or with encoder states of another width."""
        s = self.strength.get(label_set, 0.0)
        if not s or frames is None or len(frames) == 0 or frames.shape[-1] != self.dim:
            return None
        lp = self.label_log_probs(frames, labels)
        return None if lp is None else s * lp

    def to_json(self) -> str:
        return json.dumps({
            "labels": list(self.labels), "mean": encode_array(self.mean), "scale": encode_array(self.scale),
            "weight": encode_array(self.weight), "bias": encode_array(self.bias), "strength": self.strength,
            "merge": self.merge, "fitted_on": self.fitted_on,
            **({} if self.domain_threshold is None else {
                "domain": {"center": encode_array(self.domain_center), "basis": encode_array(self.domain_basis),
                           "threshold": self.domain_threshold}}),
        })

    @classmethod
    def from_json(cls, text: str | None) -> "AudioPrior | None":
        if not text:
            return None
        data = json.loads(text)
        domain = data.get("domain")
        arr = lambda entry, name: decode_array(entry, f"audio_prior.{name}")
        return cls(tuple(str(x) for x in data["labels"]), arr(data["mean"], "mean"), arr(data["scale"], "scale"),
                   arr(data["weight"], "weight"), arr(data["bias"], "bias"),
                   {str(k): float(v) for k, v in data.get("strength", {}).items()},
                   {str(k): str(v) for k, v in data.get("merge", {}).items()}, str(data.get("fitted_on", "")),
                   domain_center=None if domain is None else arr(domain.get("center", {}), "domain.center"),
                   domain_basis=None if domain is None else arr(domain.get("basis", {}), "domain.basis"),
                   domain_threshold=None if domain is None else float(domain["threshold"]))
