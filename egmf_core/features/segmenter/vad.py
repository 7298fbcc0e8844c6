"""One channel's voice-activity segmentation into utterances with exact stream-time boundaries.

:class:`VADSegmenter` runs webrtcvad (package ``webrtcvad-wheels``) on fixed 30 ms frames and turns its per-frame
decisions into utterances:

* **onset**: speech starts when ``onset_voiced_frames`` of the last ``onset_window_frames`` frames are voiced (one
  voiced frame alone is usually a click); the start is the first voiced frame of that window.
* **pre-roll**: the utterance audio begins ``pre_roll_ms`` before the start (never reaching back into the previous
  utterance), because soft onsets (fricatives, breathy vowels) are often below the VAD's threshold and the
  recognizer needs them, and because the model's audio branch learned from clips with about a second of room tone
  before the speech (``streaming.analyzer.utterance_audio``). Audio from before the start costs no latency.
  ``start_s`` stays the detected speech start; ``audio_start_s`` says where the audio array begins.
* **hangover**: speech ends only after ``hangover_ms`` of unvoiced frames, so that pauses between words and stop
  closures do not cut an utterance; ``end_s`` is the end of the last voiced frame, the audio keeps ``post_roll_ms``
  more. Within an utterance a frame webrtcvad calls voiced counts as voiced only if it is within ``end_trim_db`` of
  the utterance's loudest frame so far: webrtcvad keeps calling the reverberant decay after the last word speech for
  up to 100-150 ms, and every frame of it would delay the tentative end (below), the hangover and the event. The
  same rule sets ``start_s``: the first voiced frame within ``end_trim_db`` of the utterance's loudest (an onset on
  line noise that the hangover bridged into the speech does not start it).
* **minimum length**: utterances whose voiced span is shorter than ``min_speech_ms`` are dropped (coughs, clicks);
  the speech-start callback fires only once an utterance has reached that length, so every start is followed by a
  segment.
* **maximum length**: a turn longer than ``max_utterance_s`` is split at its quietest 30 ms frame (lowest energy)
  within the last ``split_search_s`` before the limit: a breath or a pause between phrases, rarely mid-word. The
  recognizer and the model both work on bounded input, and the listener gets an event at least every 8 s. The split
  happens when a voiced frame reaches the limit (or comes after it, during the hangover): a turn whose speech ended
  before the limit ends at its hangover like any other (with its tentative end), not at a split in its silence.
* **tentative end**: once an utterance's post-roll audio is in (``post_roll_ms`` of unvoiced frames after its last
  voiced frame), the segment it will become if no speech comes back is fully determined; :attr:`VADSegmenter.tentative`
  holds it until speech resumes or the hangover ends. The pipeline analyzes it during the rest of the hangover
  (speculative end of utterance) instead of after it; the final segment then equals the tentative one exactly.

Chunks of any size (not multiples of a frame) are accepted: leftover samples wait for the next chunk, so the result
does not depend on how the stream was chunked. Per-chunk work (int16 conversion, frame energies) is vectorized;
only the webrtcvad call itself runs once per 30 ms frame.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from egmf_core.features.segmenter.config import SegmenterConfig
from egmf_core.features.segmenter.segments import SpeechSegment, SpeechStart, SpeechStartCallback
from egmf_core.features.vad_gain import VADGain

__all__ = ["VADSegmenter"]

log = logging.getLogger(__name__)


class VADSegmenter:
    """Segment one channel. ``feed()`` returns the segments completed by that chunk; ``flush()`` ends the stream.

    ``on_speech_start`` is called (synchronously, inside ``feed``) when an utterance is confirmed; ``in_speech``
    tells whether an utterance is in progress.
    """

    def __init__(self, config: SegmenterConfig | None = None, *, channel: int = 0, speaker: str = "",
                 on_speech_start: SpeechStartCallback | None = None):
        import webrtcvad

        self.config = config or SegmenterConfig()
        self.config.validate()
        self.channel = channel
        self.speaker = speaker
        self.on_speech_start = on_speech_start
        c = self.config
        self._vad = webrtcvad.Vad(c.aggressiveness)
        self._gain = VADGain(c.vad_gain, c.frame_ms / 1000) if c.vad_gain is not None else None
        self._sr = c.sample_rate
        self._fl = c.sample_rate * c.frame_ms // 1000
        self._frame_s = self._fl / self._sr
        ms_to_frames = lambda ms: int(math.ceil(ms / c.frame_ms - 1e-9))
        self._pre_roll_f = ms_to_frames(c.pre_roll_ms)
        self._hang_f = ms_to_frames(c.hangover_ms)
        self._post_roll_f = min(ms_to_frames(c.post_roll_ms), self._hang_f)
        self._min_f = ms_to_frames(c.min_speech_ms)
        self._max_f = max(self._min_f + 1, int(round(c.max_utterance_s * 1000 / c.frame_ms)))
        self._search_f = max(1, int(round(c.split_search_s * 1000 / c.frame_ms)))
        self._keep_silent_f = self._pre_roll_f + c.onset_window_frames
        self._lazy_trim_f = max(1, 1000 // c.frame_ms)
        self._t0: float | None = None
        self._reset_stream_state()

    # ------------------------------------------------------------------------------------------------ state

    def _reset_stream_state(self) -> None:
        self._pending = np.zeros(0, np.float32)  # samples not yet forming a whole frame
        self._n_frames = 0  # frames processed since the origin
        # Frame-aligned history: audio, voiced flag, energy for frames [_buf_f0, _n_frames).
        cap = self._max_f + self._keep_silent_f + self._hang_f + 2 * self._lazy_trim_f + 64
        self._audio = np.zeros(cap * self._fl, np.float32)
        self._voiced = np.zeros(cap, bool)
        self._energy = np.zeros(cap, np.float64)
        self._buf_f0 = 0
        self._buf_len = 0  # frames stored (may run ahead of _n_frames within one _process_frames call)
        self._in_speech = False
        self._confirmed = False
        self._utt_start_f = 0  # first voiced frame of the utterance
        self._audio_start = 0  # sample index where the utterance audio begins
        self._last_voiced_f = -1
        self._prev_end_sample = 0  # pre-roll never reaches back into the previous utterance
        self._tentative: SpeechSegment | None = None

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    @property
    def tentative(self) -> SpeechSegment | None:
        """The segment the utterance in progress becomes if no more speech comes (see the module docstring), or
        None: no utterance, its post-roll not in yet, or too short to be kept."""
        return self._tentative

    @property
    def time_s(self) -> float:
        """Stream time up to which frames have been analyzed."""
        return (self._t0 or 0.0) + self._n_frames * self._frame_s

    @property
    def earliest_pending_start(self) -> float:
        """No segment completed later can start before this time (used to order segments across channels)."""
        if self._in_speech:
            return self._t(self._utt_start_f * self._fl)
        # A future onset starts at the earliest at the first frame of the current onset window.
        return self._t(max(0, self._n_frames - self.config.onset_window_frames + 1) * self._fl)

    def _t(self, sample: int) -> float:
        return (self._t0 or 0.0) + sample / self._sr

    # ------------------------------------------------------------------------------------------------ input

    def feed(self, chunk: np.ndarray, start_s: float | None = None) -> list[SpeechSegment]:
        """Add mono samples (float32 in [-1, 1] or int16) at ``self.config.sample_rate``.

        ``start_s`` (optional) is the chunk's stream time: the first one sets the origin; later ones are only used
        to detect gaps (filled with silence up to ``max_gap_fill_s``; longer gaps end the utterance in progress).
        """
        x = np.asarray(chunk)
        if x.ndim != 1:
            raise ValueError(f"VADSegmenter.feed expects mono samples of shape (n,), got {x.shape}")
        if x.dtype == np.int16:
            x = x.astype(np.float32) * np.float32(1.0 / 32768.0)
        else:
            x = x.astype(np.float32, copy=False)
        out: list[SpeechSegment] = []
        if self._t0 is None:
            self._t0 = float(start_s) if start_s is not None else 0.0
        elif start_s is not None:
            expected = self._t((self._n_frames * self._fl) + len(self._pending))
            gap = float(start_s) - expected
            if gap > self._frame_s:
                if gap <= self.config.max_gap_fill_s:
                    log.debug("channel %d: filling a %.3f s gap with silence", self.channel, gap)
                    x = np.concatenate([np.zeros(int(round(gap * self._sr)), np.float32), x])
                else:
                    log.warning("channel %d: %.1f s gap in the input, ending the utterance in progress",
                                self.channel, gap)
                    out.extend(self.flush())
                    self._t0 = float(start_s)
                    self._reset_stream_state()
            elif gap < -self._frame_s:
                log.warning("channel %d: chunk timestamp %.3f s is %.3f s behind; treating it as contiguous",
                            self.channel, start_s, -gap)
        if len(self._pending):
            x = np.concatenate([self._pending, x])
        n = len(x) // self._fl
        self._pending = x[n * self._fl:].copy()
        # Work in slices of at most ~1 s of frames so the history buffer stays bounded for huge chunks.
        step = max(1, self._sr // self._fl)
        for i in range(0, n, step):
            out.extend(self._process_frames(x[i * self._fl:min(n, i + step) * self._fl]))
        return out

    def flush(self) -> list[SpeechSegment]:
        """End of stream: return the utterance in progress (if long enough) and reset to silence."""
        out: list[SpeechSegment] = []
        if self._in_speech:
            seg = self._end_of_speech()
            if seg is not None:
                out.append(seg)
        self._in_speech = False
        self._confirmed = False
        self._trim(self._n_frames - self._keep_silent_f, lazy=False)
        return out

    # ------------------------------------------------------------------------------------------------ core

    def _append(self, frames_audio: np.ndarray, voiced: np.ndarray, energy: np.ndarray) -> None:
        """Append frames (analyzed by webrtcvad but not yet run through the state machine) to the history."""
        k = len(voiced)
        used = self._buf_len
        if used + k > len(self._voiced):  # a max-length turn plus margins never gets here; grow rather than fail
            cap = max(2 * len(self._voiced), used + k)
            self._audio = np.concatenate([self._audio, np.zeros((cap - len(self._voiced)) * self._fl, np.float32)])
            self._voiced = np.concatenate([self._voiced, np.zeros(cap - len(self._voiced), bool)])
            self._energy = np.concatenate([self._energy, np.zeros(cap - len(self._energy))])
        self._audio[used * self._fl:(used + k) * self._fl] = frames_audio
        self._voiced[used:used + k] = voiced
        self._energy[used:used + k] = energy
        self._buf_len = used + k

    def _trim(self, keep_from_f: int, lazy: bool = True) -> None:
        """Drop history before frame ``keep_from_f``. In silence this runs every frame, so by default it only
        moves memory once a second's worth of frames can go."""
        drop = keep_from_f - self._buf_f0
        if drop <= 0 or (lazy and drop < self._lazy_trim_f):
            return
        used = self._buf_len
        keep = used - drop
        if keep > 0:
            self._audio[:keep * self._fl] = self._audio[drop * self._fl:used * self._fl].copy()
            self._voiced[:keep] = self._voiced[drop:used].copy()
            self._energy[:keep] = self._energy[drop:used].copy()
        self._buf_f0 = keep_from_f
        self._buf_len = max(0, keep)

    def _process_frames(self, x: np.ndarray) -> list[SpeechSegment]:
        n = len(x) // self._fl
        if n == 0:
            return []
        frames = x.reshape(n, self._fl)
        energy = 10.0 * np.log10(np.mean(np.square(frames, dtype=np.float64), axis=1) + 1e-10)
        heard = frames
        if self._gain is not None:
            gains = self._gain.gains_db(energy)
            if gains.any():
                heard = frames * (10.0 ** (gains / 20.0)).astype(np.float32)[:, None]
        pcm = (np.clip(heard, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        nb = 2 * self._fl
        is_speech = self._vad.is_speech
        voiced = np.fromiter((is_speech(pcm[i * nb:(i + 1) * nb], self._sr) for i in range(n)), bool, count=n)
        self._append(x, voiced, energy)
        out: list[SpeechSegment] = []
        c = self.config
        for j in range(n):
            g = self._n_frames  # global index of this frame
            self._n_frames += 1
            h = g - self._buf_f0
            v = bool(voiced[j])
            if not self._in_speech:
                if v:
                    w0 = max(self._buf_f0, g - c.onset_window_frames + 1)
                    win = self._voiced[w0 - self._buf_f0:h + 1]
                    if int(win.sum()) >= c.onset_voiced_frames:
                        first = w0 + int(np.argmax(win))
                        self._begin(first, first - self._pre_roll_f)
                        self._last_voiced_f = g
                if not self._in_speech:
                    self._trim(self._n_frames - self._keep_silent_f)
                continue
            if v and c.end_trim_db is not None:  # a quiet decay is not speech: the hangover counts from before it
                v = energy[j] >= self._energy[self._utt_start_f - self._buf_f0:h + 1].max() - c.end_trim_db
            if v:
                self._last_voiced_f = g
                self._tentative = None
            if not self._confirmed and self._last_voiced_f + 1 - self._utt_start_f >= self._min_f:
                self._confirm()
            if g - self._last_voiced_f == max(1, self._post_roll_f) and self._post_roll_f < self._hang_f:
                self._tentative = self._end_segment(final=False)
            if g - self._last_voiced_f >= self._hang_f:
                seg = self._end_of_speech()
                if seg is not None:
                    out.append(seg)
                self._trim(self._n_frames - self._keep_silent_f)
            elif v and self._n_frames - self._utt_start_f >= self._max_f:
                out.extend(self._split())
        return out

    def _begin(self, start_f: int, audio_start_f: int) -> None:
        self._in_speech = True
        self._confirmed = False
        self._utt_start_f = start_f
        self._audio_start = max(audio_start_f * self._fl, self._buf_f0 * self._fl, self._prev_end_sample)

    def _confirm(self) -> None:
        self._confirmed = True
        if self.on_speech_start is not None:
            self.on_speech_start(SpeechStart(self._t(self._utt_start_f * self._fl), self.channel, self.speaker))

    def _slice(self, a: int, b: int) -> np.ndarray:
        base = self._buf_f0 * self._fl
        return self._audio[a - base:b - base].copy()

    def _finish(self, end_sample: int, audio_end_sample: int, *, split: bool = False,
                final: bool = True) -> SpeechSegment | None:
        """Make the segment [utterance start, end_sample) of the current utterance, or None if it is too short.

        The audio runs from the pre-roll start to ``audio_end_sample`` (never beyond the analyzed frames).
        ``final=False`` (a tentative end) only builds the segment: no state changes, no callback."""
        start_sample = self._speech_start_f(end_sample) * self._fl
        if not split and end_sample - start_sample < self._min_f * self._fl:
            if final:
                log.debug("channel %d: dropping %.0f ms of speech (< min_speech_ms)", self.channel,
                          1000 * (end_sample - start_sample) / self._sr)
            return None
        audio_end = min(max(end_sample, audio_end_sample), self._n_frames * self._fl)
        if final:
            self._prev_end_sample = end_sample
            self._tentative = None
            if not self._confirmed:
                self._confirm()  # the start callback always precedes the segment
        return SpeechSegment(
            start_s=self._t(start_sample), end_s=self._t(end_sample), audio=self._slice(self._audio_start, audio_end),
            channel=self.channel, speaker=self.speaker, audio_start_s=self._t(self._audio_start), split=split,
            sample_rate=self._sr,
        )

    def _speech_start_f(self, end_sample: int) -> int:
        """The utterance's first voiced frame within ``end_trim_db`` of its loudest frame before ``end_sample``: an
        onset on line noise (which the VAD gain lifts at the start of a quiet line) that the hangover bridged into
        the speech is not speech either. Depends only on frames before the end, like the end itself."""
        f0, trim_db = self._utt_start_f, self.config.end_trim_db
        end_f = -(-end_sample // self._fl)
        if trim_db is None or end_f - f0 <= 1:
            return f0
        e = self._energy[f0 - self._buf_f0:end_f - self._buf_f0]
        speech = (e >= e.max() - trim_db) & self._voiced[f0 - self._buf_f0:end_f - self._buf_f0]
        return f0 + int(np.argmax(speech)) if speech.any() else f0

    def _end_of_speech(self) -> SpeechSegment | None:
        """Hangover expired (or flush): the utterance ends (see :meth:`_end_segment`)."""
        seg = self._end_segment(final=True)
        self._tentative = None
        self._in_speech = False
        self._confirmed = False
        return seg

    def _end_segment(self, final: bool) -> SpeechSegment | None:
        """The utterance ending at its last voiced frame; the audio keeps ``post_roll_ms`` after it. Depends only on
        frames up to the post-roll's end, which is why a tentative end (``final=False``) equals the final one when no
        speech follows."""
        last_f = self._last_voiced_f + 1
        return self._finish(last_f * self._fl, (last_f + self._post_roll_f) * self._fl, final=final)

    def _split(self) -> list[SpeechSegment]:
        """The turn reached max_utterance_s: cut at the quietest frame of the last split_search_s."""
        limit_f = self._utt_start_f + self._max_f  # exclusive; <= self._n_frames (speech resumed in the hangover)
        lo = max(self._utt_start_f + 1, limit_f - self._search_f)
        e = self._energy[lo - self._buf_f0:limit_f - self._buf_f0]
        # Latest of the quietest frames: keeps the first part as long as possible on ties (digital silence).
        q = lo + (len(e) - 1 - int(np.argmin(e[::-1])))
        cut = q * self._fl + self._fl // 2  # centre of the quiet frame
        # The first part ends at the cut, or at its last voiced frame if that comes before the cut.
        last_v = self._last_voiced_before(q + 1)
        end_sample = min(cut, (last_v + 1) * self._fl) if last_v >= self._utt_start_f else cut
        seg = self._finish(end_sample, cut, split=True)
        if seg is not None and len(seg.audio) != cut - self._audio_start:  # audio always runs up to the cut
            seg = SpeechSegment(seg.start_s, seg.end_s, self._slice(self._audio_start, cut), seg.channel, seg.speaker,
                                seg.audio_start_s, True, seg.sample_rate)
        self._prev_end_sample = cut
        # The rest of the turn starts at its first voiced frame after the cut; its audio starts at the cut itself.
        next_v = self._first_voiced_from(q + 1)
        if next_v is None:  # only silence (the hangover) after the cut: the turn is over
            self._in_speech = False
            self._confirmed = False
        else:
            self._in_speech = True
            self._confirmed = False
            self._utt_start_f = next_v
            self._audio_start = cut
            self._trim(q)
            if self._last_voiced_f + 1 - self._utt_start_f >= self._min_f:
                self._confirm()
        return [seg] if seg is not None else []

    def _last_voiced_before(self, f: int) -> int:
        v = self._voiced[:f - self._buf_f0]
        idx = np.flatnonzero(v)
        return self._buf_f0 + int(idx[-1]) if len(idx) else -1

    def _first_voiced_from(self, f: int) -> int | None:
        v = self._voiced[f - self._buf_f0:self._n_frames - self._buf_f0]
        idx = np.flatnonzero(v)
        return f + int(idx[0]) if len(idx) else None
