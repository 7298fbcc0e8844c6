"""The steps of `python -m export` and how each reports itself.

Each step prints a line when it starts and one with its timing when it ends. A failure becomes
:class:`StepFailed`, whose message is `export failed at step '<step>': <cause>`; expected failures (missing
checkpoint, data, parity above tolerance, ...) carry no traceback.
"""

from __future__ import annotations

import sys
import time
import traceback
from contextlib import contextmanager
from typing import Iterator

__all__ = ["STEPS", "ExportError", "StepFailed", "Progress"]

STEPS = (
    "load checkpoint",
    "export ONNX graph of the fusion stack",
    "check ONNX graph",
    "parity onnxruntime vs PyTorch",
    "TensorRT engine",
    "merge LoRA into the LLM",
    "check merged LLM vs unmerged",
    "write manifest",
)


class ExportError(RuntimeError):
    """An expected failure: the message is the whole story (no traceback)."""


class StepFailed(Exception):
    def __init__(self, step: str, cause: str, expected: bool):
        super().__init__(f"export failed at step '{step}': {cause}")
        self.step, self.cause, self.expected = step, cause, expected


def _expected_errors() -> tuple[type[BaseException], ...]:
    from egmf_core.checkpoint import CheckpointError
    from egmf_core.config import ConfigError
    from egmf_core.data import DatasetError

    from .parity import ParityError
    from .runner import EngineError
    from .tensorrt_build import ProfileError, TensorRTUnavailable

    return (ExportError, CheckpointError, ConfigError, DatasetError, ParityError, EngineError, ProfileError,
            TensorRTUnavailable, FileNotFoundError, PermissionError)


class Progress:
    def __init__(self, stream=None):
        self.stream = stream  # None: sys.stdout at print time (so redirections apply)
        self.timings: dict[str, float] = {}

    def note(self, text: str) -> None:
        """One line of progress on the stream, flushed at once."""
        print(text, file=self.stream or sys.stdout, flush=True)

    @contextmanager
    def step(self, name: str) -> Iterator[dict[str, str]]:
        index = STEPS.index(name) + 1
        self.note(f"[{index}/{len(STEPS)}] {name}")
        result = {"detail": "", "status": "ok"}
        start = time.perf_counter()
        try:
            yield result
        except StepFailed:
            raise
        except Exception as exc:
            try:
                expected = isinstance(exc, ExportError) or isinstance(exc, _expected_errors())
            except Exception:  # pragma: no cover - the project's own imports failed
                expected = False
            cause = str(exc).strip() or type(exc).__name__
            if not expected:
                cause = f"{type(exc).__name__}: {cause}\n{traceback.format_exc()}"
            raise StepFailed(name, cause, expected) from exc
        elapsed = time.perf_counter() - start
        self.timings[name] = round(elapsed, 3)
        detail = f": {result['detail']}" if result["detail"] else ""
        self.note(f"      {result['status']} in {elapsed:.1f} s{detail}")
