"""Gain in front of the voice-activity detector for quiet lines (the VAD's input only; the audio is untouched).

Why: webrtcvad gates on absolute frame energy before its speech/noise model looks at a frame, so speech that is
merely quiet is not heard at all. RAVDESS test clips turned down 20 dB (speech peaks of -51 to -66 dBFS per 30 ms
frame, ~-45 to -77 LUFS) gave no segment in 32 of 240 cases, while the same clips at their recorded level (peaks -13
to -46 dBFS) were all cut. A phone line or a far microphone can be that quiet; the model itself is level-independent
(``egmf_core.features.loudness``), so the VAD was the only stage that lost such speech.

What: per 30 ms frame, causally (each frame's gain depends on that frame and the ones before it, so the result
does not depend on how the stream is chunked), the gain that lifts the recent speech peak to ``target_peak_dbfs``, but
never lifts the noise floor above ``noise_ceiling_dbfs`` and never exceeds ``max_gain_db``:

    gain = clip(min(target_peak - peak, noise_ceiling - floor), 0, max_gain)

``peak``: a peak hold of frame energies with a slow release (a loud utterance lowers the gain for the next ~10 s);
``floor``: a minimum tracker with a slow rise (the line's noise). Both start at the first frame. At ordinary levels
(speech peaks above the target) the gain is 0 and the VAD sees exactly what it saw before; on a line whose noise
is already near the ceiling (a noisy quiet line) nothing is amplified either, so amplified noise is never offered
to the VAD as speech. This is level tracking, not dynamics processing: a library AGC (WebRTC's, through
``webrtc-noise-gain``) was tried and lowered the misses (14 -> 5 of 120) but also changed normal-level cuts, which
the shipped checkpoint was trained on; a 20-line tracker that is provably inactive at normal levels was preferred.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["VADGainConfig", "VADGain"]


@dataclass(frozen=True)
class VADGainConfig:
    """Settings of :class:`VADGain` (dBFS are frame energies: 10 log10 of the mean square of a float frame)."""

    #: Speech whose recent peak frame is below this is lifted to it. RAVDESS clips at their recorded level peak at
    #: -13 to -46 dBFS (median -30) and are all heard; -40 leaves ~95 % of them untouched.
    target_peak_dbfs: float = -40.0
    #: The line's noise floor is never lifted above this: frames this quiet are never taken for speech.
    noise_ceiling_dbfs: float = -70.0
    max_gain_db: float = 30.0
    #: Peak-hold release and noise-floor rise, in dB per second.
    peak_release_db_s: float = 3.0
    floor_rise_db_s: float = 1.5

    def validate(self) -> None:
        if not 0.0 <= self.max_gain_db <= 60.0:
            raise ValueError(f"VADGainConfig.max_gain_db: expected 0..60 dB, got {self.max_gain_db!r}")
        if self.noise_ceiling_dbfs >= self.target_peak_dbfs:
            raise ValueError(f"VADGainConfig.noise_ceiling_dbfs: must be below target_peak_dbfs "
                             f"({self.target_peak_dbfs}), got {self.noise_ceiling_dbfs!r}")
        for name in ("peak_release_db_s", "floor_rise_db_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"VADGainConfig.{name}: must be > 0, got {getattr(self, name)!r}")


class VADGain:
    """The per-frame gain (dB) for the VAD's input of one channel; state is the two trackers."""

    def __init__(self, config: VADGainConfig, frame_s: float):
        config.validate()
        self.config = config
        self._release = config.peak_release_db_s * frame_s
        self._rise = config.floor_rise_db_s * frame_s
        self._peak: float | None = None
        self._floor: float | None = None

    def gains_db(self, energy_db: np.ndarray) -> np.ndarray:
        """The gain for each frame of ``energy_db`` (the frames' energies in order), from that frame and the ones
        before it; updates the trackers with every frame."""
        c = self.config
        out = np.zeros(len(energy_db))
        peak, floor = self._peak, self._floor
        for i, e in enumerate(energy_db.tolist()):
            if peak is None:
                peak = floor = e
            else:
                peak = max(e, peak - self._release)
                floor = min(e, floor + self._rise)
            out[i] = min(c.target_peak_dbfs - peak, c.noise_ceiling_dbfs - floor, c.max_gain_db)
        self._peak, self._floor = peak, floor
        return np.maximum(out, 0.0)
