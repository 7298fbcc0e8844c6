"""One stream's conversation, the same type wherever it is kept: in the CLI's predictor (`EGMFPredictor`) and in the
service's ingress, whose model deployment is stateless (the turns travel with each request).

Light on purpose (the standard library only): the ingress keeps conversations without loading the model, the
tokenizer or torch.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .prompt import Turn


@dataclass
class ContextWindow:
    """Bounded past-only conversation context (the last `max_turns` turns, already tokenized)."""

    max_turns: int
    turns: deque[Turn] = field(default_factory=deque)
    version: int = 0  # turns appended so far: tells a prediction whether its context is still current

    def append(self, turn: Turn) -> None:
        self.version += 1
        self.turns.append(turn)
        while len(self.turns) > self.max_turns:
            self.turns.popleft()

    def snapshot(self) -> tuple[Turn, ...]:
        return tuple(self.turns)


@dataclass
class Conversation:
    """One stream's context: the last few turns, tokenized once each."""

    window: ContextWindow
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def context(self) -> tuple[tuple[Turn, ...], int]:
        """The turns an utterance said now is predicted after, oldest first, and the version they are at (for
        `add`)."""
        with self.lock:
            return self.window.snapshot(), self.window.version

    def add(self, turn: Turn | None, version: int) -> bool:
        """Append an utterance's turn predicted with the context at `version`: False (nothing changed) if another
        turn was added since; an empty transcript (or None) adds nothing."""
        with self.lock:
            if self.window.version != version:
                return False
            if turn is not None and turn.text.strip():
                self.window.append(turn)
            return True
