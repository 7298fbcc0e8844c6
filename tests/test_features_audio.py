"""Whisper frontend on real speech: transcripts, encoder-state shapes, one encoder pass, input validation."""

from __future__ import annotations

import math
import re
import shutil
import subprocess

import numpy as np
import pytest

from egmf_core.data import resolve_data_dir
from egmf_core.features import (
    AUDIO_DIM,
    FeatureCache,
    WhisperFrontend,
    WhisperFrontendConfig,
    load_audio,
    num_frames,
)
from egmf_core.research.metrics import word_error_rate

pytestmark = pytest.mark.slow

RAVDESS_CLIP = "ravdess/Actor_01/03-01-05-02-01-01-01.flac"  # angry, strong, "Kids are talking by the door"


@pytest.fixture(scope="module")
def frontend() -> WhisperFrontend:
    return WhisperFrontend(WhisperFrontendConfig(cpu_threads=2))


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return load_audio(resolve_data_dir() / RAVDESS_CLIP)


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", text.lower()).split()


def test_load_audio_flac_and_mp4(clip: np.ndarray) -> None:
    assert clip.dtype == np.float32 and clip.ndim == 1
    assert 2.5 < clip.size / 16000 < 6.0
    assert 0.01 < np.abs(clip).max() <= 1.0
    video_audio = load_audio(resolve_data_dir() / "media/talking_heads/1.mp4")
    assert video_audio.dtype == np.float32 and 4.0 < video_audio.size / 16000 < 8.0


def test_ravdess_clip_transcript_and_states(frontend: WhisperFrontend, clip: np.ndarray) -> None:
    result = frontend.process(clip)
    assert "door" in _words(result.text)
    assert result.language == "en"
    assert result.encoder_states.dtype == np.float32
    assert result.encoder_states.shape == (math.ceil(clip.size / 320), AUDIO_DIM)
    assert abs(result.encoder_states.shape[0] - clip.size / 16000 * 50) <= 1
    assert np.isfinite(result.encoder_states).all()
    assert result.frame_rate == 50.0
    assert 0 < result.encoder_ms <= result.asr_ms


def test_one_encoder_pass_feeds_text_and_states(
    frontend: WhisperFrontend, clip: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    class CountingModel:
        """Delegates to the CTranslate2 model and counts encoder passes."""

        def __init__(self, model: object) -> None:
            self._model = model
            self.encodes = 0

        def encode(self, *args: object, **kwargs: object) -> object:
            self.encodes += 1
            return self._model.encode(*args, **kwargs)

        def __getattr__(self, name: str) -> object:
            return getattr(self._model, name)

    counting = CountingModel(frontend.model)
    monkeypatch.setattr(frontend, "model", counting)
    result = frontend.process(clip)
    assert counting.encodes == 1 and result.text
    states = frontend.encoder_states(clip)  # the training path: same computation, no decoding
    assert counting.encodes == 2
    np.testing.assert_array_equal(states, result.encoder_states)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_synthetic_sentence_transcribed(frontend: WhisperFrontend, tmp_path) -> None:
    sentence = "Please call me back when you get this message."
    wav = tmp_path / "sentence.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), sentence], check=True, capture_output=True)
    audio = load_audio(wav)
    result = frontend.process(audio)
    assert word_error_rate(sentence, result.text) * len(_words(sentence)) <= 1, result.text  # at most one word off
    assert result.encoder_states.shape == (num_frames(audio.size), AUDIO_DIM)


def test_silence_gives_no_text(frontend: WhisperFrontend) -> None:
    result = frontend.process(np.zeros(16000, dtype=np.float32))
    assert result.text == ""
    assert result.encoder_states.shape == (50, AUDIO_DIM)


def test_encoder_states_file_uses_cache(frontend: WhisperFrontend, clip: np.ndarray, tmp_path) -> None:
    source = tmp_path / "clip.flac"
    shutil.copyfile(resolve_data_dir() / RAVDESS_CLIP, source)
    cache = FeatureCache(tmp_path / "cache")
    first = frontend.encoder_states_file(source, cache)
    entries = list((tmp_path / "cache").rglob("*.npz"))
    assert len(entries) == 1
    np.testing.assert_array_equal(first, frontend.encoder_states_file(source, cache))
    np.testing.assert_array_equal(first, frontend.encoder_states(clip))


@pytest.mark.parametrize(
    ("audio", "message"),
    [
        (np.zeros(1600, dtype=np.int16), "float32"),
        (np.zeros((2, 1600), dtype=np.float32), "mono"),
        (np.zeros(0, dtype=np.float32), "empty"),
        (np.zeros(31 * 16000, dtype=np.float32), "30 s"),
        (np.full(1600, np.nan, dtype=np.float32), "NaN"),
    ],
)
def test_bad_input_is_rejected(frontend: WhisperFrontend, audio: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        frontend.process(audio)
    with pytest.raises(ValueError, match=message):
        frontend.encoder_states(audio)


def test_english_only_model_rejects_other_language(frontend: WhisperFrontend, clip: np.ndarray) -> None:
    with pytest.raises(ValueError, match="English-only"):
        frontend.process(clip, language="de")


def test_shorter_encoder_window(frontend: WhisperFrontend, clip: np.ndarray) -> None:
    """A 10 s window gives states of the same shape, close to the 30 s ones, the same words, and its own cache key."""
    short = WhisperFrontend(WhisperFrontendConfig(cpu_threads=2, window_s=10.0))
    a, b = frontend.process(clip), short.process(clip)
    assert b.encoder_states.shape == a.encoder_states.shape
    cos = np.sum(a.encoder_states * b.encoder_states, 1) / (
        np.linalg.norm(a.encoder_states, axis=1) * np.linalg.norm(b.encoder_states, axis=1))
    assert cos.mean() > 0.9 and not np.allclose(a.encoder_states, b.encoder_states)
    assert _words(b.text) == _words(a.text)
    assert short.cache_identity["window_s"] == 10.0 and "window_s" not in frontend.cache_identity
    long_audio = np.tile(clip, math.ceil(12 * 16000 / clip.size))[: 12 * 16000]  # longer than the window: 30 s
    assert np.allclose(short.encoder_states(long_audio), frontend.encoder_states(long_audio))
    with pytest.raises(ValueError, match="window_s must be in"):
        WhisperFrontendConfig(window_s=45.0)


def test_live_cut_is_framed_with_its_own_room_tone(clip: np.ndarray) -> None:
    """The segmenter's cut of a real clip (live defaults) gets at least a second of audio on each side of the speech,
    as the training clips had; the cut itself is unchanged inside it, and the added audio is the clip's own room
    tone from before the speech (quiet, not digital silence)."""
    from egmf_core.features.live_cut import utterance_audio
    from egmf_core.features.segmenter import VADSegmenter

    seg = VADSegmenter()
    segs = seg.feed(clip) + seg.flush()
    assert len(segs) == 1
    s = segs[0]
    framed = utterance_audio(s, 1.0, 10.0)
    lead = round(max(0.0, 1.0 - (s.start_s - s.audio_start_s)) * 16000)
    trail = len(framed) - lead - len(s.audio)
    assert np.array_equal(framed[lead:lead + len(s.audio)], s.audio)
    assert (lead + (s.start_s - s.audio_start_s) * 16000) >= 16000 - 1
    assert (trail + (s.audio_end_s - s.end_s) * 16000) >= 16000 - 1
    assert trail > 0.8 * 16000  # the cut keeps only the post-roll after the speech

    def db(x: np.ndarray) -> float:
        return 10 * math.log10(float(np.mean(np.square(x, dtype=np.float64))) + 1e-20)

    speech = s.audio[round((s.start_s - s.audio_start_s) * 16000):round((s.end_s - s.audio_start_s) * 16000)]
    added = framed[len(framed) - trail:]
    assert db(speech) - 30 > db(added) > -120  # room tone: far below the speech, yet not zeros
    assert set(np.unique(added)) <= set(np.unique(s.audio[:round((s.start_s - s.audio_start_s) * 16000)]))


def test_framing_stays_within_the_window_and_falls_back_to_zeros(clip: np.ndarray) -> None:
    from egmf_core.features.audio import frame_utterance

    long = np.resize(clip, int(9.6 * 16000))
    framed = frame_utterance(long, 0.5, 9.5, pad_s=1.0, max_s=10.0)
    assert len(framed) == 10 * 16000  # 0.4 s of room left, shared between the two sides in proportion to need
    lead = 8000 * 6400 // (8000 + 14400)  # wanted 0.5 s before and 0.9 s after; 0.4 s (6,400 samples) of room
    assert np.array_equal(framed[lead:lead + len(long)], long)
    assert frame_utterance(long, 0.5, 9.5, pad_s=1.0, max_s=9.0) is long  # no room: the cut as it is

    short_lead = clip[:2 * 16000]
    framed = frame_utterance(short_lead, 0.05, 1.9, pad_s=1.0)  # under 0.1 s of tone before the speech: zeros
    assert not framed[:16000 - 800].any() and not framed[-900:].any()
    assert frame_utterance(short_lead, 0.05, 1.9, pad_s=0.0) is short_lead
    with pytest.raises(ValueError, match="outside"):
        frame_utterance(short_lead, 0.5, 2.5, pad_s=1.0)
    with pytest.raises(ValueError, match="pad_s"):
        frame_utterance(short_lead, 0.5, 1.5, pad_s=-1.0)
