"""The soak benchmark's latency reference: the frame that held an utterance's end, when the recording is looped and
its last frame is short (the soaks before 2026-12-07 divided by the frame size and drifted ~85 ms per loop)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_soak import FRAME, frame_holding  # noqa: E402


def test_frame_holding_counts_short_frames_of_a_looped_recording():
    length = 188 * FRAME + 237  # the soak's 4-clip recording: 188 full frames and a short one
    ends = []
    for _ in range(100):  # 100 loops, as the 8 x 30 min soak sends
        for start in range(0, length, FRAME):
            ends.append((ends[-1] if ends else 0) + min(FRAME, length - start))
    assert len(ends) == 100 * 189
    loop = 99
    sample = loop * length + 5 * FRAME + 10  # an utterance ending in the 6th frame of the last loop
    assert frame_holding(ends, sample) == loop * 189 + 5
    assert sample // FRAME == loop * 189 + 5 - 85  # what the division said: 85 frames (8.5 s) too early
    assert frame_holding(ends, 0) == 0 and frame_holding(ends, FRAME - 1) == 0 and frame_holding(ends, FRAME) == 1
    assert frame_holding(ends, 10**12) == len(ends) - 1  # past the end: the last frame
