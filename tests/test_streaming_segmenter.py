"""VAD segmentation on real speech: RAVDESS clips joined with silences, espeak-ng two-speaker stereo calls."""

from __future__ import annotations

import numpy as np
import pytest
from test_streaming_support import (
    SR,
    espeak_conversation,
    join_with_silence,
    load_audio,
    needs_espeak,
    needs_ravdess,
    ravdess_clips,
    speech_bounds,
    with_inner_pause,
)

from egmf_core.features.segmenter import (
    ChannelSegmenter,
    SegmenterConfig,
    SpeechSegment,
    VADSegmenter,
)
from egmf_core.features.vad_gain import VADGain, VADGainConfig

TOL_S = 0.150


@pytest.fixture(scope="module")
def clips():
    return ravdess_clips(8)


@pytest.fixture(scope="module")
def joined(clips):
    return join_with_silence(clips)


def run_segmenter(x, sizes=None, config=None, starts=None):
    seg = VADSegmenter(config, on_speech_start=(starts.append if starts is not None else None))
    if sizes is None:
        out = seg.feed(x)
    else:
        out, i, k = [], 0, 0
        while i < len(x):
            n = int(sizes[k % len(sizes)])
            out += seg.feed(x[i:i + n])
            i, k = i + n, k + 1
    return out + seg.flush()


def match(segs, refs):
    """The segments overlapping each reference span."""
    return [[s for s in segs if s.start_s < e and s.end_s > b] for b, e in refs]


@needs_ravdess
def feed_blocks(seg, x, block=480):
    """Feed 30 ms blocks; returns the final segments with the stream time they came out at, and every distinct
    tentative end with the stream time it first appeared."""
    finals, tentatives = [], []
    for i in range(0, len(x), block):
        finals += [(s, seg.time_s) for s in seg.feed(x[i:i + block])]
        t = seg.tentative
        if t is not None and (not tentatives or tentatives[-1][0] is not t):
            tentatives.append((t, seg.time_s))
    return finals + [(s, seg.time_s) for s in seg.flush()], tentatives


@needs_ravdess
def test_tentative_end_is_the_final_segment_a_hangover_less_post_roll_sooner(joined):
    """Each utterance's last tentative end is its final segment, byte for byte, seen hangover - post-roll sooner.
    Earlier tentative ends of the same utterance (pauses inside a sentence longer than the post-roll) were
    withdrawn when speech resumed."""
    x, refs = joined
    cfg = SegmenterConfig()
    finals, tentatives = feed_blocks(VADSegmenter(cfg), x)
    assert len(finals) == len(refs)
    withdrawn = 0
    for final, t_final in finals:
        before = [(t, seen) for t, seen in tentatives if seen < t_final and t.start_s == final.start_s]
        assert before, f"no tentative end for the utterance at {final.start_s:.2f} s"
        tent, t_seen = before[-1]
        assert (tent.start_s, tent.end_s, tent.audio_start_s, tent.channel) == \
            (final.start_s, final.end_s, final.audio_start_s, final.channel)
        assert np.array_equal(tent.audio, final.audio)
        # seen once the post-roll was in, the final one after the whole hangover
        assert t_final - t_seen == pytest.approx((cfg.hangover_ms - cfg.post_roll_ms) / 1000, abs=1e-9)
        # one post-roll after the end of speech: the decay webrtcvad still calls speech does not delay it
        assert t_seen - final.end_s == pytest.approx(cfg.post_roll_ms / 1000, abs=1e-9)
        assert all(t.end_s < final.end_s for t, _ in before[:-1])  # withdrawn: pauses inside the utterance
        withdrawn += len(before) - 1
    assert len(tentatives) == len(finals) + withdrawn
    print(f"\n{len(finals)} utterances, {withdrawn} tentative ends withdrawn (pauses > {cfg.post_roll_ms} ms)")


@needs_ravdess
def test_tentative_end_is_withdrawn_when_speech_resumes(clips):
    finals, tentatives = feed_blocks(VADSegmenter(), with_inner_pause(clips[1]))
    assert len(finals) == 1
    assert len(tentatives) == 2  # the pause's, withdrawn, then the real end's
    assert tentatives[0][0].end_s < finals[0][0].end_s - 0.3
    assert np.array_equal(tentatives[1][0].audio, finals[0][0].audio)


@needs_ravdess
def test_one_segment_per_ravdess_clip_within_150ms(joined):
    x, refs = joined
    segs = run_segmenter(x)
    assert len(segs) == len(refs), [(s.start_s, s.end_s) for s in segs]
    errs = []
    for (b, e), m in zip(refs, match(segs, refs)):
        assert len(m) == 1
        errs.append((m[0].start_s - b, m[0].end_s - e))
    errs = np.array(errs)
    print(f"\nRAVDESS x{len(refs)}: start error mean {1000 * errs[:, 0].mean():+.0f} ms, "
          f"max |.| {1000 * np.abs(errs[:, 0]).max():.0f} ms; end error mean {1000 * errs[:, 1].mean():+.0f} ms, "
          f"max |.| {1000 * np.abs(errs[:, 1]).max():.0f} ms")
    assert np.abs(errs).max() <= TOL_S, errs


@needs_ravdess
def test_segment_audio_and_times_are_consistent(joined):
    x, refs = joined
    cfg = SegmenterConfig()
    segs = run_segmenter(x)
    prev_end = 0.0
    for s in segs:
        assert s.audio.dtype == np.float32 and s.audio.ndim == 1
        # pre-roll before the start, post-roll after the end, never reaching back into the previous utterance
        assert s.audio_start_s == pytest.approx(max(prev_end, s.start_s - cfg.pre_roll_ms / 1000), abs=0.031)
        assert s.audio_start_s <= s.start_s < s.end_s <= s.audio_end_s
        assert s.audio_end_s - s.end_s <= (cfg.hangover_ms + cfg.frame_ms) / 1000
        # the audio really is the stream's audio at those times
        a = int(round(s.audio_start_s * SR))
        np.testing.assert_array_equal(s.audio, x[a:a + len(s.audio)])
        assert s.speaker == "" and s.channel == 0 and not s.split
        prev_end = s.end_s


@needs_ravdess
@pytest.mark.parametrize("sizes", [[480], [1000], [7, 333, 4801, 1], "random"])
def test_chunking_does_not_change_segments(joined, sizes):
    x, _ = joined
    x = x[: 20 * SR]
    if sizes == "random":
        sizes = np.random.default_rng(3).integers(1, 3000, 200)
    starts_a, starts_b = [], []
    a = run_segmenter(x, starts=starts_a)
    b = run_segmenter(x, sizes, starts=starts_b)
    assert len(a) >= 3 and len(a) == len(b)
    for p, q in zip(a, b):
        assert (p.start_s, p.end_s, p.audio_start_s) == (q.start_s, q.end_s, q.audio_start_s)
        np.testing.assert_array_equal(p.audio, q.audio)
    assert [s.start_s for s in starts_a] == [s.start_s for s in starts_b] == [s.start_s for s in a]


@needs_ravdess
def test_int16_input(joined):
    x, refs = joined
    pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16)
    a = run_segmenter(pcm)
    b = run_segmenter(pcm, [1234])
    assert len(a) == len(refs) == len(b)
    assert [(s.start_s, s.end_s) for s in a] == [(s.start_s, s.end_s) for s in b]
    assert a[0].audio.dtype == np.float32


@needs_ravdess
def test_speech_start_callback_precedes_segments(joined):
    x, refs = joined
    seg = VADSegmenter()
    log = []
    seg.on_speech_start = lambda s: log.append(("start", s.start_s))
    for i in range(0, len(x), 4000):
        for s in seg.feed(x[i:i + 4000]):
            log.append(("seg", s.start_s))
    for s in seg.flush():
        log.append(("seg", s.start_s))
    kinds = [k for k, _ in log]
    assert kinds == ["start", "seg"] * len(refs)
    assert all(log[i][1] == log[i + 1][1] for i in range(0, len(log), 2))


@needs_ravdess
def test_flush_returns_utterance_in_progress(clips):
    x, refs = join_with_silence(clips[:2])
    cut = int((refs[1][0] + 1.0) * SR)  # stop one second into the second clip's speech
    seg = VADSegmenter()
    done = seg.feed(x[:cut])
    assert len(done) == 1 and seg.in_speech
    tail = seg.flush()
    assert len(tail) == 1 and not seg.in_speech
    assert abs(tail[0].start_s - refs[1][0]) <= TOL_S
    assert tail[0].end_s <= cut / SR + 1e-9


def test_short_click_and_silence_give_nothing():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 10 ** (-70 / 20), 3 * SR).astype(np.float32)
    assert run_segmenter(x) == []
    x[SR:SR + 1600] += (0.3 * np.sin(2 * np.pi * 300 * np.arange(1600) / SR)).astype(np.float32)  # 100 ms burst
    starts = []
    assert run_segmenter(x, starts=starts) == [] and starts == []


@needs_ravdess
def test_max_length_split_at_quiet_point(clips):
    """A 10+ s turn (speech joined by short pauses, each shorter than the hangover) is split once, inside the
    only digital-silence pause in the search window before the 8 s limit."""
    rng = np.random.default_rng(1)
    pieces = []
    for c in clips[:6]:
        b, e = c.bounds
        p = c.audio[int(b * SR):int(e * SR)].copy()
        p += rng.normal(0, 10 ** (-60 / 20), len(p)).astype(np.float32)  # clip pauses never reach digital silence
        pieces.append(p)
    pause = np.zeros(int(0.18 * SR), np.float32)  # < hangover: the VAD alone would not end the turn here
    lead = rng.normal(0, 10 ** (-60 / 20), SR).astype(np.float32)  # a line, not digital silence, before the turn
    x = np.concatenate([lead] + [q for p in pieces for q in (p, pause)][:-1] + [np.zeros(SR, np.float32)])
    # where the pauses are, in stream seconds
    pauses, t = [], 1.0
    for p in pieces[:-1]:
        t += len(p) / SR
        pauses.append((t, t + len(pause) / SR))
        t += len(pause) / SR
    cfg = SegmenterConfig()
    segs = run_segmenter(x, [1600])
    assert len(segs) >= 2
    first, second = segs[0], segs[1]
    assert first.split and not segs[-1].split
    assert first.start_s == pytest.approx(1.0, abs=TOL_S)
    limit = first.start_s + cfg.max_utterance_s
    window = (limit - cfg.split_search_s, limit)
    in_window = [p for p in pauses if p[1] > window[0] and p[0] < window[1]]
    assert len(in_window) == 1, (pauses, window)  # the test input is built so that exactly one pause qualifies
    cut = first.audio_end_s
    assert in_window[0][0] <= cut <= in_window[0][1], (cut, in_window)
    assert first.end_s <= cut and first.end_s - first.start_s <= cfg.max_utterance_s
    # the turn continues right after the cut, with no audio lost or duplicated
    assert second.audio_start_s == pytest.approx(cut)
    assert second.start_s >= cut and second.start_s - in_window[0][1] <= 0.1
    a = int(round(first.audio_start_s * SR))
    np.testing.assert_array_equal(np.concatenate([first.audio, second.audio[: int(round((second.end_s - cut) * SR))]]),
                                  x[a:a + len(first.audio) + int(round((second.end_s - cut) * SR))])
    # and chunking still does not matter
    other = run_segmenter(x, [777])
    assert [(s.start_s, s.end_s, s.split) for s in other] == [(s.start_s, s.end_s, s.split) for s in segs]


@needs_ravdess
def test_turn_whose_speech_ends_just_before_the_limit_ends_at_its_hangover(clips):
    """Speech that stops shortly before max_utterance_s, so that the hangover runs past the limit: the turn ends as
    any other (not split in its trailing silence, which would also move its end and drop its speculative analysis),
    and its last tentative end is its final segment, byte for byte."""
    cfg = SegmenterConfig()
    pause = np.zeros(int(0.18 * SR), np.float32)  # < hangover: one turn
    speech = np.concatenate([q for c in clips[:6] for q in (c.audio[int(c.bounds[0] * SR):int(c.bounds[1] * SR)],
                                                              pause)])
    lead = np.zeros(SR, np.float32)
    x = np.concatenate([lead, speech[:int((cfg.max_utterance_s - 0.1) * SR)], np.zeros(int(1.5 * SR), np.float32)])
    x += np.random.default_rng(2).normal(0, 10 ** (-70 / 20), len(x)).astype(np.float32)
    finals, tentatives = feed_blocks(VADSegmenter(cfg), x)
    assert len(finals) == 1
    final, t_final = finals[0]
    span = final.end_s - final.start_s
    # the case under test: the hangover after the last word ends beyond the limit
    assert cfg.max_utterance_s - cfg.hangover_ms / 1000 < span <= cfg.max_utterance_s, span
    assert not final.split
    tent = [t for t, seen in tentatives if seen < t_final][-1]
    assert (tent.start_s, tent.end_s) == (final.start_s, final.end_s) and np.array_equal(tent.audio, final.audio)


@needs_ravdess
def test_split_without_pause_picks_the_lowest_energy_frame(clips):
    cfg = SegmenterConfig(max_utterance_s=3.0, split_search_s=1.0)
    c = clips[0]
    b, e = c.bounds
    speech = np.tile(c.audio[int(b * SR):int(e * SR)], 3)  # ~4.5 s of speech with no pause
    x = np.concatenate([np.zeros(SR // 2, np.float32), speech, np.zeros(SR, np.float32)])
    x += np.random.default_rng(2).normal(0, 1e-4, len(x)).astype(np.float32)
    segs = run_segmenter(x, config=cfg)
    first = segs[0]
    assert first.split and first.end_s - first.start_s <= cfg.max_utterance_s + 1e-9
    fl = SR * cfg.frame_ms // 1000
    f0 = int(round(first.start_s * SR)) // fl
    lo, hi = f0 + int(round((cfg.max_utterance_s - cfg.split_search_s) * 1000 / cfg.frame_ms)), \
        f0 + int(round(cfg.max_utterance_s * 1000 / cfg.frame_ms))
    frames = x[lo * fl:hi * fl].reshape(-1, fl).astype(np.float64)
    energy = np.mean(frames**2, axis=1)
    q = int(round(first.audio_end_s * SR)) // fl - lo  # the frame that holds the cut
    assert energy[q] == pytest.approx(energy.min(), rel=1e-6)


def test_gap_in_timestamps_is_filled_with_silence():
    # Two pushes of the same tone 5 s apart in stream time: the segment boundaries follow the timestamps.
    tone = (0.2 * np.sin(2 * np.pi * 220 * np.arange(SR) / SR)).astype(np.float32)
    noise = np.random.default_rng(0).normal(0, 1e-4, SR).astype(np.float32)
    seg = VADSegmenter(SegmenterConfig(max_gap_fill_s=10.0))
    out = seg.feed(noise, start_s=0.0)
    out += seg.feed(noise, start_s=1.0)
    out += seg.feed(noise, start_s=6.0)  # 4 s gap, filled
    assert seg.time_s == pytest.approx(6.99, abs=0.03)
    # and a gap beyond max_gap_fill_s re-anchors the clock
    seg2 = VADSegmenter(SegmenterConfig(max_gap_fill_s=1.0))
    seg2.feed(noise, start_s=0.0)
    seg2.feed(noise, start_s=100.0)
    assert seg2.time_s == pytest.approx(100.99, abs=0.03)
    del tone, out


@needs_ravdess
@pytest.mark.parametrize("db", [-20.0, -30.0])
def test_a_quiet_line_is_heard_through_the_vad_gain(joined, db):
    """The RAVDESS conversation turned down 20 / 30 dB (its line noise with it, to -90 / -100 dBFS): with the VAD
    gain every utterance is cut within 150 ms of its reference span, and the segments carry the stream's own
    samples (the gain is for the VAD's ears only). Without it webrtcvad's energy gate misses utterances at -30 dB
    (the reason for the gain)."""
    x, refs = joined
    quiet = (x * np.float32(10 ** (db / 20))).astype(np.float32)
    segs = run_segmenter(quiet)
    assert len(segs) == len(refs), [(s.start_s, s.end_s) for s in segs]
    for (b, e), m in zip(refs, match(segs, refs)):
        assert len(m) == 1 and abs(m[0].start_s - b) <= TOL_S and abs(m[0].end_s - e) <= TOL_S, (b, e, m)
        a = int(round(m[0].audio_start_s * SR))
        np.testing.assert_array_equal(m[0].audio, quiet[a:a + len(m[0].audio)])
    if db == -30.0:
        assert len(run_segmenter(quiet, config=SegmenterConfig(vad_gain=None))) < len(refs)


@needs_ravdess
def test_the_vad_gain_is_silent_at_ordinary_levels(joined):
    """At its recorded level, over a -70 dBFS line, the conversation is cut exactly as without the gain: the line's
    noise floor sits at the ceiling, so the VAD's input is lifted by a fraction of a dB at most."""
    x, _ = joined
    a = run_segmenter(x)
    b = run_segmenter(x, config=SegmenterConfig(vad_gain=None))
    assert [(s.start_s, s.end_s, s.audio_start_s) for s in a] == [(s.start_s, s.end_s, s.audio_start_s) for s in b]


def test_vad_gain_lifts_quiet_speech_but_never_noise_above_the_ceiling():
    cfg = VADGainConfig()
    frame_s = 0.03
    # a line at -100 dBFS: the floor allows 30 dB (capped), so the noise reaches -70 at most
    g = VADGain(cfg, frame_s).gains_db(np.full(50, -100.0))
    assert np.allclose(g, cfg.max_gain_db)
    # speech peaking at -55 dBFS over it: lifted to the -40 target once the peak is seen
    g = VADGain(cfg, frame_s).gains_db(np.r_[np.full(20, -100.0), np.full(30, -55.0)])
    assert g[-1] == pytest.approx(cfg.target_peak_dbfs + 55.0)
    # ordinary speech (peak -25) over a -75 dBFS line: nothing at any frame after the first speech frame
    g = VADGain(cfg, frame_s).gains_db(np.r_[np.full(20, -75.0), np.full(30, -25.0), np.full(30, -75.0)])
    assert np.all(g[:20] <= 5.0 + 1e-9) and np.all(g[20:] == 0.0)
    # a noisy quiet line (noise at -65): never amplified
    assert not VADGain(cfg, frame_s).gains_db(np.r_[np.full(20, -65.0), np.full(30, -55.0)]).any()
    # faint noise lifted to the ceiling is not taken for speech
    noise = np.random.default_rng(0).normal(0, 10 ** (-100 / 20), 5 * SR).astype(np.float32)
    assert run_segmenter(noise) == []


def test_config_validation():
    with pytest.raises(ValueError, match="frame_ms"):
        VADSegmenter(SegmenterConfig(frame_ms=25))
    with pytest.raises(ValueError, match="aggressiveness"):
        SegmenterConfig(aggressiveness=4).validate()
    with pytest.raises(ValueError, match="split_search_s"):
        SegmenterConfig(split_search_s=9.0).validate()
    with pytest.raises(ValueError, match="post_roll_ms"):
        SegmenterConfig(post_roll_ms=500).validate()
    with pytest.raises(ValueError, match="mono"):
        VADSegmenter().feed(np.zeros((100, 2), np.float32))
    with pytest.raises(ValueError, match="noise_ceiling_dbfs"):
        SegmenterConfig(vad_gain=VADGainConfig(noise_ceiling_dbfs=-30.0)).validate()


# ------------------------------------------------------------------------------------------------ stereo calls


@pytest.fixture(scope="module")
def call(tmp_path_factory):
    return espeak_conversation(tmp_path_factory.mktemp("call"))


@needs_espeak
def test_channel_segmenter_two_speakers(call):
    path, turns = call
    x = load_audio_stereo(path)
    cs = ChannelSegmenter(2)
    segs: list[SpeechSegment] = []
    for i in range(0, len(x), 1000):  # ~62 ms chunks, not frame-aligned
        segs += cs.feed(x[i:i + 1000])
    segs += cs.flush()
    assert len(segs) == len(turns)
    assert [s.start_s for s in segs] == sorted(s.start_s for s in segs)  # released in start order
    for s, t in zip(segs, turns):  # the script is in start order too
        assert s.channel == t.channel and s.speaker == f"Speaker {t.channel + 1}"
        assert abs(s.start_s - t.ref[0]) <= TOL_S and abs(s.end_s - t.ref[1]) <= TOL_S, (s, t)
    overlaps = [(a, b) for a, b in zip(segs, segs[1:]) if b.start_s < a.end_s]
    assert len(overlaps) == 1 and overlaps[0][0].channel != overlaps[0][1].channel


@needs_espeak
def test_channel_segmenter_orders_a_long_turn_before_a_short_reply(tmp_path):
    """Channel 0 speaks a long turn; channel 1 says something short in the middle of it. Channel 1's segment
    finishes first but must be released after channel 0's, which started earlier."""
    script = [(0, "This is a rather long explanation of the problem that keeps going for a while.", 0.3),
              (1, "Okay.", -2.5)]
    path, turns = espeak_conversation(tmp_path, script)
    x = load_audio_stereo(path)
    cs = ChannelSegmenter(2, speakers=["Agent", "Customer"])
    released: list[tuple[int, SpeechSegment]] = []
    for k, i in enumerate(range(0, len(x), 800)):
        released += [(k, s) for s in cs.feed(x[i:i + 800])]
    released += [(10**9, s) for s in cs.flush()]
    assert [s.speaker for _, s in released] == ["Agent", "Customer"]
    short_end = released[1][1].end_s
    assert released[1][1].start_s > released[0][1].start_s
    # the short reply was held back until the long turn was complete (released in the same feed call)
    assert released[0][0] == released[1][0] and released[0][1].end_s > short_end


def test_channel_segmenter_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="speaker"):
        ChannelSegmenter(2, speakers=["a"])
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        ChannelSegmenter(2).feed(np.zeros((10, 3), np.float32))


def load_audio_stereo(path) -> np.ndarray:
    from streaming.sources import AudioChunk, AVFileSource

    parts = [it.samples for it in AVFileSource(path, stereo=True, video=False) if isinstance(it, AudioChunk)]
    x = np.concatenate(parts)
    assert x.ndim == 2 and x.shape[1] == 2
    return x


def test_reference_bounds_helper_is_sane():
    # The energy reference itself: a tone in silence.
    x = np.zeros(3 * SR, np.float32)
    x[SR:2 * SR] = 0.1 * np.sin(2 * np.pi * 200 * np.arange(SR) / SR)
    b, e = speech_bounds(x)
    assert b == pytest.approx(1.0, abs=0.011) and e == pytest.approx(2.0, abs=0.011)
    assert load_audio  # imported for other modules


@needs_espeak
def test_channel_segmenter_offers_only_the_next_segment_as_tentative(tmp_path):
    """The short reply on channel 1 ends during channel 0's long turn: it is not offered as a tentative end (it will
    be released second); the long turn's tentative end equals the segment released first."""
    script = [(0, "This is a rather long explanation of the problem that keeps going for a while.", 0.3),
              (1, "Okay.", -2.5)]
    path, _ = espeak_conversation(tmp_path, script)
    x = load_audio_stereo(path)
    cs = ChannelSegmenter(2, speakers=["Agent", "Customer"])
    released, offered = [], []
    for i in range(0, len(x), 480):
        released += cs.feed(x[i:i + 480])
        t = cs.tentative
        if t is not None:
            offered.append((len(released), t))
    released += cs.flush()
    assert [s.speaker for s in released] == ["Agent", "Customer"]
    assert not [t for n, t in offered if n == 0 and t.speaker == "Customer"]
    agent = [t for n, t in offered if n == 0 and t.speaker == "Agent"]
    assert agent and np.array_equal(agent[-1].audio, released[0].audio)
    assert (agent[-1].start_s, agent[-1].end_s) == (released[0].start_s, released[0].end_s)


@needs_espeak
def test_an_onset_on_line_noise_does_not_start_the_utterance(tmp_path):
    """At the start of a quiet line the VAD gain lifts the line noise, and webrtcvad calls a few noise frames speech;
    the hangover bridges that onset into the speech that follows. The utterance still starts at the speech (its
    first voiced frame within ``end_trim_db`` of its loudest), so the pre-roll before it is the line's room tone."""
    from media_clips import speak
    from egmf_core.features.audio import load_audio

    speech = load_audio(speak("I would like to talk about my order, please.", tmp_path / "s.wav"))
    onset = 0.5 + np.argmax(np.abs(speech) > 0.01) / SR  # the speech's first audible sample, after the noise lead
    x = np.concatenate([np.zeros(SR // 2, np.float32), speech, np.zeros(SR // 2, np.float32)])
    x += np.random.default_rng(0).normal(0, 10 ** (-75 / 20), len(x)).astype(np.float32)  # a quiet line's noise
    starts: list = []
    (seg,) = run_segmenter(x, starts=starts)
    assert starts[0].start_s < 0.2  # webrtcvad's onset on the noise (what the rule corrects)
    assert abs(seg.start_s - onset) <= TOL_S, (seg.start_s, onset)
    assert seg.audio_start_s == 0.0  # the pre-roll still reaches back to the line's start
