"""The input: one real-speech conversation. RAVDESS clips and espeak-ng sentences, each trimmed to its speech
+- ``TRIM_PAD_S``, in an order whose last utterances repeat the first ones' audio, joined by ``GAP_S`` of silence
with a faint (-70 dBFS) noise floor."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SR = 16000
GAP_S = 1.0  # silence between utterances
TRIM_PAD_S = 0.15  # audio kept around each piece's speech span
MAX_UTTERANCE_S = 8.0  # longer pieces would be split by the VAD; the latency target is for utterances up to this

# espeak-ng sentences, 2 s to 7.5 s at 160 words per minute; emotional content varies.
SENTENCES = (
    "I am really worried that something happened to her on the way home last night.",
    "I can't believe you did that.",
    "The meeting has been moved to Thursday afternoon because the manager is still travelling and cannot join us "
    "before then.",
    "Oh wow, that is amazing news!",
    "Honestly this is the best news I have heard all week.",
    "We waited for two hours and nobody even bothered to call us back.",
    "Please stop calling me about this because I already told you no.",
    "Thank you so much for helping me move all of these heavy boxes up the stairs this morning.",
    "This is the third time this month that my order arrived broken and frankly I am completely done with your "
    "company and I want my money back.",
    "I am so sorry for your loss. He was a wonderful man.",
    "When I opened the door and saw everyone standing there with the cake I honestly could not stop smiling for the "
    "rest of the evening.",
    "Get out of my office right now.",
)
VOICES = ("en-us", "en-gb+f3")


@dataclass(eq=False)
class Piece:
    name: str
    source: str  # "ravdess" or "espeak-ng"
    audio: np.ndarray  # trimmed to the speech +- TRIM_PAD_S
    bounds: tuple[float, float]  # reference speech span inside `audio`
    script: str | None = None  # what was said (espeak-ng), or the RAVDESS emotion label

    @property
    def speech_s(self) -> float:
        return self.bounds[1] - self.bounds[0]


def trim_piece(name: str, source: str, x: np.ndarray, script: str | None) -> Piece:
    from test_streaming_support import speech_bounds

    b0, b1 = speech_bounds(x)
    lo, hi = max(0, int((b0 - TRIM_PAD_S) * SR)), min(len(x), int(np.ceil((b1 + TRIM_PAD_S) * SR)))
    return Piece(name, source, np.ascontiguousarray(x[lo:hi], np.float32), (b0 - lo / SR, b1 - lo / SR), script)


def espeak_pieces(tmp: Path, sentences: tuple[str, ...] = SENTENCES) -> list[Piece]:
    from test_streaming_support import load_audio

    out = []
    for i, text in enumerate(sentences):
        wav = tmp / f"espeak_{i}.wav"
        subprocess.run(["espeak-ng", "-v", VOICES[i % 2], "-s", "160", "-w", str(wav), text], check=True,
                       capture_output=True)
        out.append(trim_piece(f"espeak{i:02d}", "espeak-ng", load_audio(wav), text))  # PyAV resamples to 16 kHz
    return out


def ravdess_pieces(n: int, seed: int = 5) -> list[Piece]:
    from test_streaming_support import ravdess_clips

    return [trim_piece(Path(c.file).stem, "ravdess", c.audio, c.emotion) for c in ravdess_clips(n, seed=seed)]


def make_pool(tmp: Path, n_ravdess: int, n_espeak: int) -> list[Piece]:
    """Alternating espeak-ng / RAVDESS pieces (espeak-ng first), so any prefix mixes long and short utterances."""
    es = espeak_pieces(tmp, SENTENCES[:n_espeak]) if n_espeak and shutil.which("espeak-ng") else []
    rv = ravdess_pieces(n_ravdess) if n_ravdess else []
    pool = [p for pair in zip(es, rv) for p in pair] + es[len(rv):] + rv[len(es):]
    too_long = [p.name for p in pool if p.speech_s > MAX_UTTERANCE_S - 0.3]
    if too_long:
        raise RuntimeError(f"pieces longer than {MAX_UTTERANCE_S} s would be split by the VAD: {too_long}")
    return pool


def conversation_order(pool: list[Piece], n: int) -> list[Piece]:
    """n utterances; the last ones repeat the first ones' audio so that first and last compare cleanly.

    n >= 10: [A B C D E] + (n - 10 from the rest of the pool, cycling) + [B C D E A]; smaller n: [A B ... A]."""
    if n < 2:
        raise ValueError("need at least 2 utterances")
    if n < 10:
        return pool[: n - 1] + pool[:1]
    head = pool[:5]
    rest = pool[5:] or pool
    middle = [rest[i % len(rest)] for i in range(n - 10)]
    return head + middle + head[1:] + head[:1]


def build_stream(seq: list[Piece], gap_s: float = GAP_S, seed: int = 0) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """The pieces separated by silence with a faint noise floor; returns the signal and the reference speech spans
    in stream seconds. Starts with `gap_s` of silence and ends with `gap_s` + 0.5 s (the VAD closes the last one
    itself)."""
    from test_streaming_support import join_with_silence

    return join_with_silence(seq, gap_s, seed=seed, tail_s=0.5)
