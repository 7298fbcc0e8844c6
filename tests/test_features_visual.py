"""FaceLandmarker features on real talking-face video: shapes, sampling rate, no-face masking, spans, pose maths."""

from __future__ import annotations

import math

import numpy as np
import pytest

from egmf_core.data import resolve_data_dir
from egmf_core.features import (
    BLENDSHAPE_NAMES,
    VISUAL_DIM,
    FaceFeatureConfig,
    FaceFeatureExtractor,
    VisualFeatures,
    extract_span,
    read_video_frames,
)
from egmf_core.features.visual import pose_from_matrices

pytestmark = pytest.mark.slow

VIDEO = "media/talking_heads/1.mp4"  # 700x700: PyAV returns row-padded (non-contiguous) RGB arrays for this width


@pytest.fixture(scope="module")
def extractor() -> FaceFeatureExtractor:
    return FaceFeatureExtractor(FaceFeatureConfig(fps=10.0))


@pytest.fixture(scope="module")
def video_features(extractor: FaceFeatureExtractor) -> VisualFeatures:
    return extractor.extract_file(resolve_data_dir() / VIDEO)


def test_constants() -> None:
    assert VISUAL_DIM == 58 and len(BLENDSHAPE_NAMES) == 52


def test_talking_head_features(video_features: VisualFeatures) -> None:
    features, valid, times = video_features.features, video_features.valid, video_features.times
    n = len(video_features)
    assert features.shape == (n, VISUAL_DIM) and features.dtype == np.float32
    assert valid.dtype == bool and times.dtype == np.float64
    assert 40 <= n <= 80  # a 5-7 s clip at 10 fps
    assert valid.mean() > 0.9
    blendshapes, pose = features[valid, :52], features[valid, 52:]
    assert (blendshapes >= 0).all() and (blendshapes <= 1).all()
    assert np.isfinite(pose).all() and (np.abs(pose[:, :3]) < math.pi).all()
    assert (pose[:, 5] < 0).all() and (np.abs(pose[:, 3:]) < 10).all()  # face in front of the camera, O(1) scale


def test_frames_follow_configured_fps(video_features: VisualFeatures) -> None:
    times = video_features.times
    assert (np.diff(times) > 0).all()
    assert np.median(np.diff(times)) == pytest.approx(0.1, abs=0.025)
    buckets = np.floor(times * 10 + 1e-6)
    assert len(np.unique(buckets)) == len(times)  # at most one frame per 1/fps interval


def test_frames_without_a_face_are_masked(extractor: FaceFeatureExtractor) -> None:
    frames = list(read_video_frames(resolve_data_dir() / VIDEO, fps=5.0))[:6]
    uniform = [(t, np.full_like(rgb, 127)) for t, rgb in frames[:3]]
    upside_down = [(t, rgb[::-1]) for t, rgb in frames[3:]]
    result = extractor.extract(uniform + upside_down)
    assert len(result) == 6 and not result.valid.any()
    assert not result.features.any()  # storage only: the mask is the truth
    upright = extractor.extract(frames)
    assert upright.valid.all()


def test_extract_span_cuts_utterance(video_features: VisualFeatures) -> None:
    span = extract_span(video_features, 1.0, 2.5)
    assert len(span) > 0
    assert (span.times >= 1.0).all() and (span.times < 2.5).all()
    inside = (video_features.times >= 1.0) & (video_features.times < 2.5)
    np.testing.assert_array_equal(span.features, video_features.features[inside])
    assert len(extract_span(video_features, 100.0, 101.0)) == 0
    with pytest.raises(ValueError, match="before"):
        extract_span(video_features, 2.0, 1.0)


def test_bad_frames_and_timestamps_are_rejected(extractor: FaceFeatureExtractor) -> None:
    with pytest.raises(ValueError, match="uint8"):
        extractor.extract([(0.0, np.zeros((48, 64, 3), dtype=np.float32))])
    with pytest.raises(ValueError, match="RGB"):
        extractor.extract([(0.0, np.zeros((48, 64), dtype=np.uint8))])
    frame = np.zeros((48, 64, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="non-decreasing"):
        extractor.extract([(1.0, frame), (0.5, frame)])
    assert len(extractor.extract([])) == 0


def test_pose_from_matrices_recovers_angles() -> None:
    yaw, pitch, roll = 0.3, -0.2, 0.1
    cy, sy, cp, sp, cr, sr = (math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch), math.cos(roll),
                              math.sin(roll))
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    matrix = np.eye(4)
    matrix[:3, :3] = 1.5 * (ry @ rx @ rz)  # a scaled rotation: the scale must not leak into the angles
    matrix[:3, 3] = [2.0, -3.0, -40.0]
    pose = pose_from_matrices(matrix[None])[0]
    np.testing.assert_allclose(pose, [yaw, pitch, roll, 0.2, -0.3, -4.0], atol=1e-5)


def test_mediapipe_native_logs_are_quiet_by_default(extractor: FaceFeatureExtractor, capfd, caplog) -> None:
    """mediapipe's C++ log lines (written to fd 2 when a landmarker is created) go to the module's logger at DEBUG,
    not to stderr; anything else written to stderr meanwhile is passed through."""
    import logging
    import os

    from egmf_core.features.visual import _NATIVE_LOG_LINE, _native_stderr

    caplog.set_level(logging.DEBUG, logger="egmf_core.features.visual")
    frames = list(read_video_frames(resolve_data_dir() / VIDEO, fps=10.0))[:3]
    capfd.readouterr()
    assert extractor.extract(frames).valid.all()
    with _native_stderr:
        os.write(2, b"W0000 00:00:1795801822.370922    2704 face_landmarker_graph.cc:181] a native warning\n")
        os.write(2, b"not from mediapipe\n")
    err = capfd.readouterr().err
    assert err == "not from mediapipe\n"
    assert not any(_NATIVE_LOG_LINE.match(line) for line in err.splitlines())
    native = [r for r in caplog.records if r.message.startswith("mediapipe: ")]
    assert any("a native warning" in r.message for r in native)
    assert all(r.levelno == logging.DEBUG for r in native)
