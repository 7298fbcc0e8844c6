"""Per-utterance prediction for live streams: load once, keep a bounded conversation per stream.

The hot path per utterance: tokenize the new utterance once (`make_turn`), build the prompt from cached turn ids
of the last `max_context_turns` turns, run the fusion stack and one constrained scoring pass. Nothing about the
conversation is re-tokenized or re-encoded from scratch, and the cost does not grow with the conversation's length.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checkpoint import load_checkpoint, resolve
from .model import EGMFModel, ModelInput, Prediction
from .prompt import ContextWindow


@dataclass
class Conversation:
    """One stream's context: the last few turns, tokenized once each."""

    window: ContextWindow
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class EGMFPredictor:
    def __init__(self, model: EGMFModel, version: str):
        self.model = model
        self.version = version
        self._lock = threading.Lock()  # torch modules are not re-entrant across threads for one model

    @classmethod
    def load(
        cls, checkpoint: str | Path = "default", device: str | None = None, engines: str | Path | None = None
    ) -> "EGMFPredictor":
        """Load a checkpoint for serving; with `engines` (a `python -m export` folder) the fusion stack runs in
        onnxruntime / TensorRT and the LLM is the exported LoRA-merged one. Without engines the LoRA is merged into
        the LLM in memory (`EGMFModel.merge_lora_for_inference`), so the model this returns is for inference only."""
        path = resolve(checkpoint)
        overrides = {"backbone": {"device": device}} if device else None  # default: CUDA if available
        model = load_checkpoint(path, overrides)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        version = f"egmf-{model.cfg.backbone.name}-{path.stem}-{digest}"
        if engines:
            from export.runner import use_engines

            engine = use_engines(model, engines, checkpoint=path)
            version += f"+engines-{engine.provider}"
        model.eval()
        model.merge_lora_for_inference()
        return cls(model, version)

    def warm_up(self) -> None:
        """Score one throw-away utterance (1 s of zero audio features, a short text): the first pass pays for lazy
        initialisation (kernels, the template prefix's KV cache), which should not land on a caller's first
        utterance. The conversation used is discarded."""
        dims = self.model.cfg.fusion
        self.predict(self.new_conversation(), text="Hello.", speaker="Speaker",
                     audio_features=np.zeros((50, dims.audio_dim), np.float32))

    def new_conversation(self) -> Conversation:
        return Conversation(self.model.prompts.new_context())

    def predict(
        self,
        conversation: Conversation,
        text: str,
        speaker: str,
        audio_features: np.ndarray | None = None,
        visual_features: np.ndarray | None = None,
        visual_valid: np.ndarray | None = None,
        language: str | None = None,
    ) -> Prediction:
        """Predict emotion + sentiment for one utterance, then append it to the conversation's context.

        `language` (the speech recognizer's) picks the LoRA adapter and prompt template; None = the model's default.
        """
        if not isinstance(text, str):
            raise ValueError(f"text: expected a string, got {type(text).__name__}")
        turn = self.model.prompts.make_turn(speaker, text)
        with conversation.lock:
            x = ModelInput(
                context=conversation.window.snapshot(),
                current=turn,
                audio=audio_features,
                visual=visual_features,
                visual_valid=visual_valid,
                language=language,
            )
            with self._lock:
                pred = self.model.score([x])[0]
            if text.strip():
                conversation.window.append(turn)
        pred.expert_outputs = None
        return pred
