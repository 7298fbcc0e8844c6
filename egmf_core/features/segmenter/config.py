"""The settings of the VAD segmenter, checked once when a segmenter is made.

What each stage is for is described in :mod:`egmf_core.features.segmenter.vad`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from egmf_core.features.vad_gain import VADGainConfig

__all__ = ["SegmenterConfig"]


@dataclass
class SegmenterConfig:
    """Segmentation settings (see :mod:`egmf_core.features.segmenter.vad` for what each stage is for)."""

    sample_rate: int = 16000
    #: webrtcvad mode 0 (least aggressive about filtering out non-speech) .. 3 (most).
    aggressiveness: int = 2
    #: webrtcvad accepts 10, 20 or 30 ms frames; 30 gives the most reliable decisions.
    frame_ms: int = 30
    onset_window_frames: int = 5
    onset_voiced_frames: int = 3
    pre_roll_ms: int = 1000
    #: 390 ms: the 300 ms of webrtcvad-unvoiced frames that ended a turn before ``end_trim_db`` applied to the whole
    #: utterance, plus the ~90 ms of decay webrtcvad called speech; a shorter hangover splits turns at sentence pauses.
    hangover_ms: int = 390
    #: Every millisecond of post-roll is latency (the analysis waits for it); the room tone the model wants after
    #: the speech is added without waiting (streaming.analyzer.utterance_audio). 60 ms: benchmarks/results/
    #: live_segments.md.
    post_roll_ms: int = 60
    min_speech_ms: int = 250
    max_utterance_s: float = 8.0
    split_search_s: float = 1.5
    #: Within an utterance, a frame webrtcvad calls voiced but more than this many dB below the utterance's loudest
    #: frame so far is not counted as speech: webrtcvad keeps calling the reverberant decay after the last word
    #: "speech" for up to 100-150 ms, which would make ``end_s`` late and delay the tentative end, the hangover and
    #: the event by as much (end of speech -> start of the speculative analysis p50 151 -> 99 ms on the conversation
    #: of ``benchmarks/bench_vs_naive.py``). The utterance starts at its first voiced frame within this of its
    #: loudest, too (not on line noise before it). None: webrtcvad's decisions as they are.
    end_trim_db: float | None = 35.0
    #: Gain in front of the VAD for quiet lines (``egmf_core.features.vad_gain``; the VAD's input only, inactive at
    #: ordinary levels); None: the VAD hears the audio as it is.
    vad_gain: VADGainConfig | None = field(default_factory=VADGainConfig)
    #: A gap in chunk timestamps up to this long is filled with silence; a longer one ends the utterance in progress
    #: and re-anchors the clock (a dropped network stream that came back).
    max_gap_fill_s: float = 2.0

    def validate(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"SegmenterConfig.{name}: {why}, got {getattr(self, name)!r}")

        if self.sample_rate not in (8000, 16000, 32000, 48000):
            raise bad("sample_rate", "webrtcvad supports 8000, 16000, 32000 or 48000 Hz")
        if self.aggressiveness not in (0, 1, 2, 3):
            raise bad("aggressiveness", "must be 0, 1, 2 or 3")
        if self.frame_ms not in (10, 20, 30):
            raise bad("frame_ms", "webrtcvad supports 10, 20 or 30 ms frames")
        if not 1 <= self.onset_voiced_frames <= self.onset_window_frames:
            raise bad("onset_voiced_frames", "must be between 1 and onset_window_frames")
        for name in ("pre_roll_ms", "post_roll_ms", "min_speech_ms"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        if self.hangover_ms < self.frame_ms:
            raise bad("hangover_ms", f"must be at least one frame ({self.frame_ms} ms)")
        if self.post_roll_ms > self.hangover_ms:
            raise bad("post_roll_ms", "cannot exceed hangover_ms (the audio after the hangover has not arrived yet)")
        if not self.max_utterance_s * 1000 > max(self.min_speech_ms, 2 * self.frame_ms):
            raise bad("max_utterance_s", "must be longer than min_speech_ms")
        if not 0 < self.split_search_s < self.max_utterance_s:
            raise bad("split_search_s", "must be > 0 and < max_utterance_s")
        if self.max_gap_fill_s < 0:
            raise bad("max_gap_fill_s", "must be >= 0")
        if self.vad_gain is not None:
            self.vad_gain.validate()

