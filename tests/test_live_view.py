"""Training and evaluating on live cuts: RAVDESS clips as the live segmenter cuts and frames them
(`egmf_core.features.live_cut.live_cut`), their Whisper features through the cache (`whisper_audio_lookup("live")`), in
audio packs, in train configs (`data.ravdess_audio`) and in `python -m egmf_core.research.evaluate --audio live`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from egmf_core.data import RavdessConfig, RavdessDataset
from egmf_core.research.feature_lookup import whisper_audio_lookup
from egmf_core.research.examples import AudioFeaturePack, feature_key
from egmf_core.features import WhisperFrontend, WhisperFrontendConfig, load_audio
from egmf_core.features.cache import CACHE_DIR_ENV
from streaming.analyzer import EGMFAnalyzerConfig
from egmf_core.features.live_cut import LINE_NOISE_BELOW_DB, live_cut, utterance_audio
from egmf_core.features.loudness import scaled_loudness
from egmf_core.features.segmenter import SegmenterConfig, VADSegmenter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def records() -> list:
    return list(RavdessDataset("dev", RavdessConfig()))[:3]


def test_live_cut_is_what_the_live_pipeline_analyzes(records) -> None:
    """One segment per clean clip; the audio is the segmenter's cut framed by utterance_audio, exactly as the
    pipeline builds it from the segment it would emit; 60 ms kept after the end of speech; deterministic."""
    clip = load_audio(records[0].audio_path)
    cut = live_cut(clip)
    assert cut.segments == 1 and cut.tail_ms == pytest.approx(60.0)
    pad = np.zeros(8000, np.float32)
    x = np.concatenate([pad, clip, pad])
    noise_dbfs = scaled_loudness(clip) - LINE_NOISE_BELOW_DB  # the line noise sits under the clip's own loudness
    x += np.random.default_rng(0).normal(0, 10 ** (noise_dbfs / 20), len(x)).astype(np.float32)
    seg = VADSegmenter(SegmenterConfig())
    (s,) = seg.feed(x) + seg.flush()
    assert np.array_equal(cut.audio, utterance_audio(s, EGMFAnalyzerConfig().frame_s, 10.0))
    assert np.array_equal(live_cut(clip).audio, cut.audio)
    silent = live_cut(np.zeros(3 * 16000, np.float32))
    assert silent.segments == 0 and len(silent.audio) == 0


def test_live_view_features_are_the_live_encoder_states_and_cached(records, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    live, clip_view = whisper_audio_lookup("live"), whisper_audio_lookup("clip")
    rec = records[0]
    states = live(rec)
    frontend = WhisperFrontend(WhisperFrontendConfig(window_s=EGMFAnalyzerConfig().asr_window_s))
    expected = frontend.encoder_states(live_cut(load_audio(rec.audio_path)).audio)
    np.testing.assert_allclose(states, expected, atol=1e-5)
    whole = clip_view(rec)
    assert states.shape[1] == whole.shape[1] == 384
    # another window (10 s vs 30 s) and another cut: other states, even where the lengths agree
    n = min(len(states), len(whole))
    assert np.abs(states[:n] - whole[:n]).mean() > 0.05 * np.abs(whole[:n]).mean()
    entries = sorted(p.parent.parent.name for p in (tmp_path / "cache").rglob("*.npz"))
    assert len(entries) == 2 and sum("-live-cut-v" in e for e in entries) == 1, entries
    np.testing.assert_array_equal(whisper_audio_lookup("live")(rec), states)  # from the cache
    with pytest.raises(ValueError, match="audio view"):
        whisper_audio_lookup("framed")


def test_audio_pack_records_its_view_and_train_checks_it(records, tmp_path) -> None:
    from egmf_core.config import ConfigError
    from egmf_core.research.run_config import RunConfig
    from egmf_core.research.train import Trainer

    live = whisper_audio_lookup("live")
    pack = AudioFeaturePack.write(tmp_path / "live.safetensors", {feature_key(r): live(r) for r in records}, "live")
    read = AudioFeaturePack.read(pack)
    assert read.view == "live" and read(records[0]).shape == live(records[0]).shape
    old = AudioFeaturePack.write(tmp_path / "clips.safetensors", {feature_key(records[0]): live(records[0])})
    assert AudioFeaturePack.read(old).view == "clip"

    def config(**data) -> RunConfig:
        cfg = RunConfig.from_yaml(Path(__file__).resolve().parents[1] / "configs" / "ablation_fusion.yaml")
        cfg.data.ravdess_limit = 2
        cfg.train.out_dir = str(tmp_path / "run")
        for k, v in data.items():
            setattr(cfg.data, k, v)
        return cfg

    with pytest.raises(ConfigError, match="data.ravdess_audio: expected one of clip, live"):
        Trainer(config(ravdess_audio="framed"))
    with pytest.raises(ConfigError, match="holds features of live audio but data.ravdess_audio is 'clip'"):
        Trainer(config(audio_pack=str(pack)))


def test_evaluate_on_live_cuts(tmp_path, shipped_model_version) -> None:
    from egmf_core.research import evaluate

    out = tmp_path / "eval.json"
    assert evaluate.main(["--checkpoint", "default", "--dataset", "ravdess", "--split", "dev", "--limit", "4",
                          "--audio", "live", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["audio"] == "live" and result["emotion"]["n"] == 4
    assert result["model_version"] == shipped_model_version
    assert 0 <= result["emotion"]["accuracy"] <= 100


def test_evaluate_live_view_on_text_only_data_opens_no_recognizer(tmp_path, monkeypatch) -> None:
    """MELD has no audio files: `--audio live` is accepted and the (costly) live recognizer is never opened."""
    from egmf_core.research import eval_examples, evaluate

    def refuse(view: str = "clip"):
        raise AssertionError(f"opened the {view} recognizer for a dataset without audio")

    monkeypatch.setattr(eval_examples, "whisper_audio_lookup", refuse)  # where dataset_examples looks it up
    out = tmp_path / "eval.json"
    assert evaluate.main(["--checkpoint", "default", "--dataset", "meld", "--split", "dev", "--limit", "3",
                          "--audio", "live", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["audio"] == "live" and result["emotion"]["n"] == 3
