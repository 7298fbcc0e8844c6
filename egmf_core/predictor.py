"""Per-utterance prediction for live streams: load once, keep a bounded conversation per stream.

The hot path per utterance: tokenize the new utterance once (`make_turn`), build the prompt from cached turn ids
of the last `max_context_turns` turns, run the fusion stack and one constrained scoring pass. Nothing about the
conversation is re-tokenized or re-encoded from scratch, and the cost does not grow with the conversation's length.

`predict_uncommitted` + `commit` split a prediction from adding its turn to the context, for the live pipeline's
speculative end of utterance: an utterance analyzed during the VAD's hangover joins the context only if it really
ended there, and only if the context is still the one it was predicted with. The conversation
(`egmf_core.conversation.Conversation`) is the type the service's ingress keeps its streams' context in as well.

With a "context_first" checkpoint (`PromptConfig.layout`), `commit` also starts, in a background thread, the KV
cache of the stream's new context (`EGMFModel.prime`): it is computed while the next utterance is still being
spoken, so that utterance's prompt pass covers only the utterance itself.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .checkpoint import checkpoint_version, load_checkpoint, resolve
from .model import EGMFModel
from .model_io import ModelInput, Prediction
from .precision import INT8_CHECK_MARGIN, int8_kernel, pass_threads, resolve_precision
from .serving import freeze_loaded_heap, intra_op_threads
from .conversation import Conversation
from .prompt import Turn

log = logging.getLogger(__name__)

#: The made-up call that int8 serving calibrates on (`EGMFPredictor.calibration_pass`): speakers, lengths and moods
#: of an ordinary support call, none of it from an evaluation set.
INT8_CALIBRATION_LINES: tuple[tuple[str, str], ...] = (
    ("Agent", "Thank you for calling, my name is Sam. How can I help you today?"),
    ("Caller", "Hi. I was charged twice for my subscription this month and I would like a refund."),
    ("Agent", "I'm sorry about that. Let me pull up your account, it will only take a moment."),
    ("Caller", "This is the third time this has happened! I am really fed up with it."),
    ("Agent", "I completely understand. I can see both charges, and I have started the refund now."),
    ("Caller", "Oh, great, thanks. That was much easier than I expected."),
    ("Agent", "Is there anything else I can do for you?"),
    ("Caller", "No, that's all. Have a nice day."),
)


@dataclass(frozen=True)
class PendingTurn:
    """An utterance predicted but not yet in its conversation: its tokenized turn and the context version
    (`egmf_core.conversation.ContextWindow.version`) its prediction saw."""

    turn: Turn
    context_version: int
    language: str | None = None  # the utterance's (the recognizer's): the next utterance's likely prompt language


class EGMFPredictor:
    def __init__(self, model: EGMFModel, version: str, llm_precision: str = "fp32", int8_check_margin: float = 0.0):
        self.model = model
        self.version = version
        #: The number format of the LLM's projections as loaded ("fp32", "bf16" or "int8"; `egmf_core.precision`).
        self.llm_precision = llm_precision
        #: int8 only: answers whose closest decision (`Prediction.decision_margin`) is under this logit gap are
        #: re-scored with the fp32 copies of the projections (`EGMFModel.reference_precision`); 0: never.
        self.int8_check_margin = int8_check_margin if model.has_reference_precision else 0.0
        #: Rows scored, and rows the int8 check re-scored in fp32, since load.
        self.check_counts = {"scored": 0, "rescored": 0}
        #: torch intra-op threads of this predictor's passes (`precision.pass_threads`: 1 for bf16 and int8 on CPU,
        #: every core but one for fp32), never more than the process's setting (the service's `torch_threads`);
        #: None: the process's setting (a GPU).
        self.torch_threads = (min(pass_threads(llm_precision), torch.get_num_threads())
                              if model.device.type == "cpu" else None)
        self._lock = threading.Lock()  # torch modules are not re-entrant across threads for one model
        # One background thread computes committed contexts' KV caches, where the layout lets later prompts reuse them.
        self._primer = (ThreadPoolExecutor(1, thread_name_prefix="egmf-prime")
                        if model.prompts.cfg.layout == "context_first" else None)

    @property
    def audio_loudness_lufs(self) -> float | None:
        """The loudness the checkpoint's audio features were normalized to: the recognizer that feeds this predictor
        must be built with it (`WhisperFrontendConfig.loudness_lufs`)."""
        return self.model.cfg.fusion.audio_loudness_lufs

    @classmethod
    def load(
        cls, checkpoint: str | Path = "default", device: str | None = None,
        prepare: Callable[[EGMFModel, Path], str] | None = None, llm_precision: str = "fp32",
        int8_check_margin: float = INT8_CHECK_MARGIN,
    ) -> "EGMFPredictor":
        """Load a checkpoint for serving. `prepare(model, checkpoint_path)` runs on the loaded model before it is
        frozen for inference and returns a suffix for the model version: the caller's choice of runtime, e.g.
        `export.runner.engines_preparer("engines/")` (the fusion stack in onnxruntime / TensorRT, the LLM the
        exported LoRA-merged one); this library does not know the export package. Otherwise the LoRA is merged into
        the LLM in memory (`EGMFModel.merge_lora_for_inference`), and on CPU its linear layers keep their weights
        transposed (`EGMFModel.use_transposed_linear_weights`), so the model this returns is for inference only.

        ``llm_precision`` ("fp32", "bf16", "int8" or "auto": `egmf_core.precision`): the number format of those
        layers on CPU. fp32, the reference, is the default here (evaluation, tests); the CLI and the service ask for
        "auto". int8 first runs `calibration_pass` in fp32 to smooth its layers by, and keeps the fp32 copies of the
        layers to re-score the answers whose closest decision is under ``int8_check_margin`` (`score`; 0 keeps no
        copies and checks nothing: int8's labels then differ from fp32's on a few percent of utterances)."""
        path = resolve(checkpoint)
        overrides = {"backbone": {"device": device}} if device else None  # default: CUDA if available
        model = load_checkpoint(path, overrides)
        version = checkpoint_version(path, model.cfg.backbone.name)
        if prepare is not None:
            version += prepare(model, path)
        model.eval()
        model.merge_lora_for_inference()
        precision = resolve_precision(llm_precision, model.device.type)
        dtype = {"bf16": torch.bfloat16, "int8": torch.int8}.get(precision, torch.float32)
        calibrator = cls(model, version) if precision == "int8" else None
        kernel = int8_kernel() or "torch"
        try:
            replaced = model.device.type == "cpu" and model.use_transposed_linear_weights(
                dtype, calibrator.calibration_pass if calibrator is not None else None,
                keep_reference=precision == "int8" and int8_check_margin > 0, int8_kernel=kernel)
        finally:
            if calibrator is not None and calibrator._primer is not None:
                calibrator._primer.shutdown(wait=True)  # no background pass may run while the layers are swapped
        if not replaced:
            precision = "fp32"  # adapters kept apart (several languages): peft's layers, in fp32
        log.info("EGMF model %s: LLM projections in %s (requested %s)%s", version, precision, llm_precision,
                 f", int8 kernel {kernel}" if precision == "int8" else "")
        return cls(model, version, precision, int8_check_margin if precision == "int8" else 0.0)

    def calibration_pass(self) -> None:
        """A short made-up call (`INT8_CALIBRATION_LINES`, with and without audio features) through this predictor,
        whose conversation is then discarded: the activations `serving.Int8Linear` is smoothed by. Outlier channels
        are a property of the LLM's weights, not of the words, so a few lines of ordinary conversation find them."""
        conversation = self.new_conversation()
        silence = np.zeros((100, self.model.cfg.fusion.audio_dim), np.float32)
        for i, (speaker, text) in enumerate(INT8_CALIBRATION_LINES):
            self.predict(conversation, text=text, speaker=speaker, audio_features=silence if i % 2 else None)
        if self._primer is not None:  # the background KV passes of those lines are part of the calibration too
            self._primer.submit(lambda: None).result()

    def warm_up(self) -> None:
        """Score one throw-away utterance (1 s of zero audio features, a short text): the first pass pays for lazy
        initialisation (kernels, the template prefix's KV cache), which should not land on a caller's first
        utterance. The conversation used is discarded. Then the loaded objects are frozen for the garbage collector
        (`serving.freeze_loaded_heap`), whose full passes would otherwise stall an utterance."""
        dims = self.model.cfg.fusion
        self.predict(self.new_conversation(), text="Hello.", speaker="Speaker",
                     audio_features=np.zeros((50, dims.audio_dim), np.float32))
        freeze_loaded_heap()

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
        with conversation.lock:  # nothing else enters this conversation between the snapshot and the append
            pred, pending = self.predict_uncommitted(conversation, text, speaker, audio_features, visual_features,
                                                     visual_valid, language)
            self.commit(conversation, pending)
        return pred

    def predict_uncommitted(
        self,
        conversation: Conversation,
        text: str,
        speaker: str,
        audio_features: np.ndarray | None = None,
        visual_features: np.ndarray | None = None,
        visual_valid: np.ndarray | None = None,
        language: str | None = None,
    ) -> tuple[Prediction, PendingTurn]:
        """`predict` without the append: the prediction and what `commit` needs to add the turn later."""
        context, version = conversation.context()
        x, turn = self.prepare_input(context, text, speaker, audio_features, visual_features, visual_valid, language)
        pred = self.score([x])[0]
        pred.expert_outputs = None
        return pred, PendingTurn(turn, version, language)

    def prepare_input(
        self,
        context: Sequence[Turn],
        text: str,
        speaker: str | None,
        audio_features: np.ndarray | None = None,
        visual_features: np.ndarray | None = None,
        visual_valid: np.ndarray | None = None,
        language: str | None = None,
    ) -> tuple[ModelInput, Turn]:
        """The model input of one utterance said after `context` (the conversation's turns, oldest first; the last
        `max_context_turns` are used) and the utterance's tokenized turn, which a conversation appends once it is
        committed. For `score`: `predict_uncommitted` and a caller that keeps the context itself (the service's
        stateless model deployment) build their inputs here."""
        if not isinstance(text, str):
            raise ValueError(f"text: expected a string, got {type(text).__name__}")
        turn = self.model.prompts.make_turn(speaker, text)
        x = ModelInput(context=self._window(context), current=turn, audio=audio_features, visual=visual_features,
                       visual_valid=visual_valid, language=language)
        return x, turn

    def score(self, inputs: Sequence[ModelInput]) -> list[Prediction]:
        """Score prepared inputs in one model pass (`EGMFModel.score`), serialized with this predictor's other
        passes; no conversation changes. For a caller that keeps the context itself: the service's model deployment
        batches the utterances of all its streams into one call.

        With int8 projections and a check margin, the rows whose answer was a near tie (`Prediction.decision_margin`
        under `int8_check_margin`) are scored again with the projections' fp32 copies, and that answer is the one
        returned: int8's rounding moves near-tie answers, and only those, so the labels are fp32's wherever int8
        could have changed them (`benchmarks/results/llm_precision_int8_checked.md`). Their `timings_ms` add
        "int8_check": the fp32 pass's time. Passes run on `torch_threads` intra-op threads (the fp32 re-score, a
        batch of the near ties, on the process's)."""
        with self._lock:
            with intra_op_threads(self.torch_threads):
                preds = self.model.score(inputs)
            self.check_counts["scored"] += len(preds)
            close = [i for i, p in enumerate(preds) if (p.decision_margin or 0.0) < self.int8_check_margin]
            if close:
                t0 = time.perf_counter()
                with self.model.reference_precision():
                    again = self.model.score([inputs[i] for i in close])
                ms = round((time.perf_counter() - t0) * 1000.0, 2)
                for i, p in zip(close, again):
                    p.timings_ms = {**(preds[i].timings_ms or {}), "int8_check": ms}
                    preds[i] = p
                self.check_counts["rescored"] += len(close)
            return preds

    def commit(self, conversation: Conversation, pending: PendingTurn) -> bool:
        """Append the predicted turn (an empty transcript adds nothing) if the context is still the one the
        prediction saw; False (nothing changed) if another turn was added since."""
        with conversation.lock:
            if not conversation.add(pending.turn, pending.context_version):
                return False
            if conversation.window.version != pending.context_version:  # the turn was appended
                self.prime_later(conversation, pending.language)
            return True

    def prime_later(self, conversation: Conversation, language: str | None = None) -> Future | None:
        """Start computing the KV cache of `conversation`'s context as it is now (`EGMFModel.prime`) in the
        background; None where the layout has nothing to gain. The work is skipped if another turn arrives first."""
        version = conversation.window.version

        def current() -> tuple[Turn, ...] | None:
            with conversation.lock:
                return conversation.window.snapshot() if conversation.window.version == version else None

        return self._submit_prime(current, language)

    def prime_context_later(self, context: Sequence[Turn], language: str | None = None) -> Future | None:
        """`prime_later` for a context held elsewhere (the service's model deployment is stateless: the stream's turns
        travel with each request): the last `max_context_turns` of `context`."""
        if self._primer is None:
            return None
        snapshot = self._window(context)
        return self._submit_prime(lambda: snapshot, language)

    def _window(self, context: Sequence[Turn]) -> tuple[Turn, ...]:
        """The last `max_context_turns` turns of `context`: the context window a prompt sees."""
        window = self.model.prompts.new_context()
        for turn in context:
            window.append(turn)
        return window.snapshot()

    def _submit_prime(self, context: Callable[[], tuple[Turn, ...] | None], language: str | None) -> Future | None:
        return None if self._primer is None else self._primer.submit(self._prime, context, language)

    def _prime(self, context: Callable[[], tuple[Turn, ...] | None], language: str | None) -> bool:
        try:
            turns = context()
            if turns is None:  # the conversation moved on
                return False
            with self._lock, intra_op_threads(self.torch_threads):
                return self.model.prime(turns, language=language)
        except Exception as e:  # a failed prime only costs the next utterance the time it would have saved
            log.warning("could not precompute the conversation's KV cache: %s: %s", type(e).__name__, e)
            return False
