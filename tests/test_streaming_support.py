"""Shared helpers for the streaming tests: real test inputs and a segmentation-only analyzer.

Not a test module by itself (pytest collects it, finds no tests). Imported by the test_streaming_* modules and, by
module path, by the CLI tests (``--analyzer test_streaming_support:SegmentationOnlyAnalyzer``).

Inputs are real speech: RAVDESS clips from ``../shared/data/ravdess`` (read-only, never copied into the repo) and
espeak-ng voices combined with sox. Everything generated goes to pytest's ``tmp_path``.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streaming.events import EMOTION_LABELS
from streaming.pipeline import AnalysisResult
from egmf_core.features.segmenter import SpeechSegment

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
RAVDESS = SHARED / "ravdess"
TALKING_HEADS = SHARED / "media" / "talking_heads"
SR = 16000

needs_ravdess = pytest.mark.skipif(not (RAVDESS / "labels.csv").is_file(), reason="../shared/data/ravdess missing")
needs_talking_heads = pytest.mark.skipif(not (TALKING_HEADS / "1.mp4").is_file(),
                                         reason="../shared/data/media/talking_heads missing")
needs_espeak = pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")),
                                  reason="espeak-ng and sox are needed (apt-get install espeak-ng sox)")


# ------------------------------------------------------------------------------------------------------ audio I/O


def load_audio(path: str | Path) -> np.ndarray:
    """Decode any audio file to float32 mono 16 kHz (PyAV, the same path as the sources)."""
    import av

    with av.open(str(path)) as c:
        r = av.AudioResampler(format="s16", layout="mono", rate=SR)
        parts = [g.to_ndarray().reshape(-1) for f in c.decode(audio=0) for g in r.resample(f)]
        parts += [g.to_ndarray().reshape(-1) for g in r.resample(None)]
    return np.concatenate(parts).astype(np.float32) / 32768.0


def write_wav(path: str | Path, x: np.ndarray, sr: int = SR) -> Path:
    """float32 (n,) or (n, ch) -> 16-bit PCM wav."""
    x = np.asarray(x, np.float32)
    ch = 1 if x.ndim == 1 else x.shape[1]
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(ch)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
    return Path(path)


def speech_bounds(x: np.ndarray, rel_db: float = -30.0, run: int = 5) -> tuple[float, float]:
    """Reference speech span of a clip, independent of webrtcvad: first/last 10 ms frame of a sustained (>= 50 ms)
    run of frames within ``rel_db`` of the clip's loudest frame."""
    fr = x[: len(x) // 160 * 160].reshape(-1, 160).astype(np.float64)
    db = 10 * np.log10(np.mean(fr**2, axis=1) + 1e-12)
    on = (db > db.max() + rel_db).astype(int)
    full = np.flatnonzero(np.convolve(on, np.ones(run, int), "valid") == run)
    return float(full[0] * 0.01), float((full[-1] + run) * 0.01)


def is_clean(x: np.ndarray, bounds: tuple[float, float], clean_db: float = -40.0, guard_s: float = 0.1) -> bool:
    """True when nothing outside the speech span (breaths, clicks, rustle) comes within ``clean_db`` of the peak:
    for such clips the energy reference is unambiguous."""
    fr = x[: len(x) // 160 * 160].reshape(-1, 160).astype(np.float64)
    db = 10 * np.log10(np.mean(fr**2, axis=1) + 1e-12)
    s, e = int(round(bounds[0] * 100)), int(round(bounds[1] * 100))
    g = int(guard_s * 100)
    outside = np.concatenate([db[: max(0, s - g)], db[e + g:]])
    return len(outside) > 0 and outside.max() < db.max() + clean_db


@dataclass
class Clip:
    file: str
    emotion: str
    audio: np.ndarray
    bounds: tuple[float, float]  # speech span inside the clip


def ravdess_clips(n: int, seed: int = 7, intensity: str = "normal") -> list[Clip]:
    """``n`` clean RAVDESS clips from ``n`` different actors, deterministic for a seed."""
    rows = list(csv.DictReader(open(RAVDESS / "labels.csv", newline="")))
    rows = [r for r in rows if r["intensity"] == intensity]
    order = np.random.default_rng(seed).permutation(len(rows))
    clips, actors = [], set()
    for i in order:
        r = rows[int(i)]
        if r["actor"] in actors:
            continue
        x = load_audio(RAVDESS / r["file"])
        b = speech_bounds(x)
        if is_clean(x, b):
            clips.append(Clip(r["file"], r["emotion"], x, b))
            actors.add(r["actor"])
            if len(clips) == n:
                break
    return clips


def join_with_silence(clips: list[Any], gap_s: float = 1.0, noise_dbfs: float = -70.0,
                      seed: int = 0, tail_s: float = 0.0) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Clips (anything with ``audio`` and its speech span ``bounds``) separated by ``gap_s`` of silence, with
    ``tail_s`` more at the end, plus a faint noise floor, as any real line has. Returns the signal and the reference
    speech spans in stream seconds."""
    gap = np.zeros(int(gap_s * SR), np.float32)
    parts, refs, t = [gap], [], gap_s
    for c in clips:
        refs.append((t + c.bounds[0], t + c.bounds[1]))
        parts += [c.audio, gap]
        t += len(c.audio) / SR + gap_s
    parts.append(np.zeros(int(tail_s * SR), np.float32))
    x = np.concatenate(parts)
    x += np.random.default_rng(seed).normal(0, 10 ** (noise_dbfs / 20), len(x)).astype(np.float32)
    return x, refs


# ------------------------------------------------------------------------------------------------------ espeak


@dataclass
class Turn:
    channel: int
    text: str
    start_s: float  # where the synthesized utterance file is placed on its channel
    ref: tuple[float, float] = (0.0, 0.0)  # reference speech span in stream seconds


VOICES = ("en-us", "en-gb+f3")  # two clearly different voices, one per channel

SCRIPT: list[tuple[int, str, float]] = [
    # (channel, text, gap before this turn starts relative to the end of the previous turn; negative = overlap)
    (0, "Thank you for calling, how can I help you today?", 0.5),
    (1, "My internet has been down since yesterday morning.", 0.6),
    (0, "I am sorry to hear that. Let me check your line.", 0.6),
    (1, "I already restarted the router twice.", -0.7),  # interrupts the agent: overlapping speech
    (0, "Thank you. I can see the problem now.", 0.6),
    (1, "Great, that is a relief.", 0.6),
]


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def espeak_conversation(tmp: Path, script: list[tuple[int, str, float]] = SCRIPT) -> tuple[Path, list[Turn]]:
    """A two-speaker stereo call: espeak-ng speaks each turn with its channel's voice, sox resamples each turn to
    16 kHz, delays it to its place (``pad``), mixes the turns of a channel (``-m``) and merges the two channels into
    one stereo file (``-M``). Returns the file and the turns with reference spans."""
    turns: list[Turn] = []
    per_channel: dict[int, list[Path]] = {0: [], 1: []}
    t_end = 0.0
    for i, (ch, text, gap) in enumerate(script):
        raw, wav = tmp / f"turn{i}_raw.wav", tmp / f"turn{i}.wav"
        _run(["espeak-ng", "-v", VOICES[ch], "-s", "160", "-w", str(raw), text])
        _run(["sox", str(raw), "-r", str(SR), "-c", "1", "-b", "16", str(wav)])
        x = load_audio(wav)
        b = speech_bounds(x)
        start = max(0.0, t_end + gap) - b[0]  # place the *speech* gap seconds after the previous speech end
        start = round(start * SR) / SR
        turns.append(Turn(ch, text, start, (start + b[0], start + b[1])))
        placed = tmp / f"turn{i}_placed.wav"
        _run(["sox", str(wav), str(placed), "pad", f"{start:.6f}", "1.0"])
        per_channel[ch].append(placed)
        t_end = start + b[1]
    chans = []
    for ch in (0, 1):
        out = tmp / f"channel{ch}.wav"
        files = [str(p) for p in per_channel[ch]]
        if len(files) == 1:
            shutil.copy(files[0], out)
        else:
            # -m sums: each turn's file is silent outside the turn, so mixing places them without gain changes.
            # "-v 1" before each input: sox -m otherwise scales every input by 1/n.
            _run(["sox", "-m", *[a for f in files for a in ("-v", "1", f)], str(out)])
        chans.append(out)
    # Pad both channels to the same length, then merge them into one stereo file.
    lens = [load_audio(p).size for p in chans]
    padded = []
    for p, n in zip(chans, lens):
        q = p.with_name(p.stem + "_len.wav")
        _run(["sox", str(p), str(q), "pad", "0", f"{(max(lens) - n) / SR + 0.5:.6f}"])
        padded.append(q)
    stereo = tmp / "call_stereo.wav"
    _run(["sox", "-M", str(padded[0]), str(padded[1]), str(stereo)])
    return stereo, turns


# ------------------------------------------------------------------------------------------------------ analyzer


@dataclass
class SegmentationOnlyAnalyzer:
    """NOT a model. A stand-in :class:`~streaming.pipeline.UtteranceAnalyzer` that only exercises the streaming
    layer (segmentation, video alignment, ordering, the event schema): it always answers "neutral" with certainty,
    an empty transcript and neutral sentiment, and reports which inputs it actually received (audio always; video
    when frames were passed). It records every call so tests can check what the pipeline handed over."""

    version: str = "test-segmentation-only"
    calls: list[tuple[SpeechSegment, Any, Any]] = field(default_factory=list)
    fail_on: set[int] = field(default_factory=set)  # call indices that raise, to test error events

    def new_conversation(self) -> list[str]:
        return []

    def analyze(self, segment: SpeechSegment, video: Any, conversation: list[str]) -> AnalysisResult:
        i = len(self.calls)
        self.calls.append((segment, video, conversation))
        if i in self.fail_on:
            raise RuntimeError(f"deliberate failure on call {i}")
        conversation.append(segment.speaker)
        has_video = bool(video)
        probs = {lab: (1.0 if lab == "neutral" else 0.0) for lab in EMOTION_LABELS}
        return AnalysisResult(text="", language="en", emotion="neutral", emotion_probs=probs, sentiment_score=0.0,
                              sentiment_label="neutral", alpha=[0.5, 0.5, 0.0] if has_video else [1.0, 0.0, 0.0],
                              modalities={"audio": True, "video": has_video, "text": False})


def with_inner_pause(clip: Any, pause_s: float = 0.25, lead_s: float = 0.5, tail_s: float = 1.0,
                     noise_dbfs: float = -70.0) -> np.ndarray:
    """One utterance with a pause in the middle that is longer than the segmenter's post-roll (60 ms) and shorter
    than its hangover (390 ms): a tentative end that speech then withdraws. The clip's speech span, cut in half,
    with silence around."""
    speech = clip.audio[int(clip.bounds[0] * SR):int(clip.bounds[1] * SR)]
    mid = len(speech) // 2
    z = lambda s: np.zeros(int(s * SR), np.float32)  # noqa: E731
    x = np.concatenate([z(lead_s), speech[:mid], z(pause_s), speech[mid:], z(tail_s)])
    return x + np.random.default_rng(0).normal(0, 10 ** (noise_dbfs / 20), len(x)).astype(np.float32)
