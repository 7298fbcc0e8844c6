"""Reconnect-and-resume: what the ingress keeps of a stream across its connections (``deploy/README.md``,
"Delivery, reconnect and resume").

A client that loses its connection reconnects with the same ``stream_id`` and the last utterance id it received:
:class:`StreamRecord` keeps the stream's recent events (sent again after that id), its next utterance id, the stream
time already analyzed and its conversation, and :func:`rebase` puts the events of a later connection on the stream's
clock and utterance count.
"""

from collections import deque
from dataclasses import dataclass, field, replace

from deploy.start import StartError
from egmf_core.conversation import Conversation
from streaming.events import ErrorEvent, Event, SpeechStartedEvent, UtteranceEvent


@dataclass
class StreamRecord:
    """What the ingress keeps of a stream across its connections: the next utterance id (ids never restart when a
    client reconnects with the same ``stream_id``), the stream time already analyzed (event times go on from it),
    the conversation (the model's context), and the last ``max_resume_events`` events sent or meant to be sent, for
    a client that reconnects after losing its connection."""

    stream_id: str
    conversation: Conversation
    events: deque = field(default_factory=deque)  # (utterance id or None, the event's JSON), oldest first
    lost: int = 0  # events pushed out of ``events`` by newer ones
    next_utterance_id: int = 0
    audio_s: float = 0.0
    active: bool = False
    ended_at: float = 0.0  # time.monotonic() when its last connection ended

    def remember(self, utterance_id: int | None, text: str, keep: int) -> None:
        self.events.append((utterance_id, text))
        while len(self.events) > keep:
            self.events.popleft()
            self.lost += 1

    def after(self, last_utterance_id: int) -> tuple[list[str], bool]:
        """The events after the utterance ``last_utterance_id`` (-1: all), and whether some of them are no longer
        kept (they were pushed out by newer ones)."""
        if last_utterance_id >= self.next_utterance_id:
            sent = (f"utterances up to id {self.next_utterance_id - 1}" if self.next_utterance_id else
                    "no utterance (a new stream, or one that ended more than resume_ttl_s ago)")
            raise StartError("last_utterance_id", f"stream {self.stream_id!r} has sent {sent}, got "
                             f"{last_utterance_id}")
        texts = [t for _, t in self.events]
        for i, (uid, _) in enumerate(self.events):
            if uid == last_utterance_id:
                return texts[i + 1:], False
        return texts, last_utterance_id >= 0 or self.lost > 0


def rebase(ev: Event, id_base: int, t_base: float) -> Event:
    """An event of a stream's later connection on the stream's clock and utterance count."""
    if not id_base and not t_base:
        return ev
    if isinstance(ev, UtteranceEvent):
        return replace(ev, utterance_id=ev.utterance_id + id_base, start=round(ev.start + t_base, 6),
                       end=round(ev.end + t_base, 6))
    if isinstance(ev, SpeechStartedEvent):
        return replace(ev, start=round(ev.start + t_base, 6))
    if isinstance(ev, ErrorEvent) and ev.start is not None:  # an utterance's error: its span
        return replace(ev, start=round(ev.start + t_base, 6), end=round(ev.end + t_base, 6))
    return ev
