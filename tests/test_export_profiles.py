"""TensorRT optimization-profile logic and engine-building calls (without TensorRT), manifest helpers."""

from __future__ import annotations

import sys
import types

import pytest

from egmf_core.config import EGMFConfig, FusionConfig
from export.manifest import file_table, sha256_file, verify_files
from export.tensorrt_build import (
    ProfileConfig,
    ProfileError,
    TensorRTUnavailable,
    audio_frames,
    build_engine,
    compute_profiles,
    ort_trt_provider_options,
    profiles_from_dict,
    profiles_to_dict,
    tensorrt_status,
    visual_frames,
)

INPUTS = ("text_embeds", "text_valid", "audio", "audio_valid", "visual", "visual_valid")


def test_frame_counts_follow_the_config_rates() -> None:
    f = FusionConfig()  # audio 50 Hz, stride 2; visual 10 Hz
    assert audio_frames(f, 8.0) == 400
    assert audio_frames(f, 5.0) == 250
    assert audio_frames(f, 0.05) == 4  # 2.5 frames -> 3 -> rounded up to a multiple of the stride
    assert audio_frames(f, 0.001) == 2  # never below one stride
    assert audio_frames(f, 30.0) == 1500  # Whisper's whole window
    assert visual_frames(f, 8.0) == 80 and visual_frames(f, 0.04) == 1 and visual_frames(f, 0.25) == 3
    odd = FusionConfig(audio_stride=3, audio_rate=50.0)
    assert all(audio_frames(odd, s) % 3 == 0 for s in (0.1, 1.0, 2.7, 30.0))


def test_default_profile_shapes() -> None:
    cfg = EGMFConfig()
    p = compute_profiles(cfg.fusion, 576)
    assert set(p) == set(INPUTS)
    assert p["audio"].min == (1, 2, 384) and p["audio"].opt == (1, 250, 384) and p["audio"].max == (8, 1500, 384)
    assert p["visual"].min == (1, 1, 58) and p["visual"].opt == (1, 50, 58) and p["visual"].max == (8, 300, 58)
    assert p["text_embeds"].min == (1, 1, 576) and p["text_embeds"].max == (8, cfg.fusion.max_text_tokens, 576)
    assert p["text_embeds"].opt == (1, 18, 576)  # 3.5 tokens/s x 5 s
    for feat, mask in (("text_embeds", "text_valid"), ("audio", "audio_valid"), ("visual", "visual_valid")):
        for which in ("min", "opt", "max"):
            assert getattr(p[feat], which)[:2] == getattr(p[mask], which)  # a mask shares its feature's axes
    for r in p.values():
        assert all(lo <= o <= hi for lo, o, hi in zip(r.min, r.opt, r.max))


def test_custom_profile_and_text_caps() -> None:
    f = FusionConfig(max_text_tokens=32)
    p = compute_profiles(f, 640, ProfileConfig(min_batch=2, opt_batch=4, max_batch=16, min_seconds=1.0,
                                               opt_seconds=20.0, max_seconds=25.0))
    assert p["text_embeds"].opt == (4, 32, 640)  # 70 tokens capped at max_text_tokens
    assert p["audio"].min == (2, 50, 384) and p["audio"].max == (16, 1250, 384)
    p2 = compute_profiles(f, 640, ProfileConfig(opt_text_tokens=5))
    assert p2["text_valid"].opt == (1, 5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_batch": 0}, "batch bounds"),
        ({"opt_batch": 9, "max_batch": 8}, "batch bounds"),
        ({"min_seconds": 0.0}, "utterance seconds"),
        ({"opt_seconds": 40.0, "max_seconds": 30.0}, "utterance seconds"),
        ({"max_seconds": 31.0, "opt_seconds": 5.0}, "Whisper"),
        ({"min_text_tokens": 0}, "min_text_tokens"),
    ],
)
def test_inconsistent_profiles_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        compute_profiles(FusionConfig(), 576, ProfileConfig(**kwargs))


def test_profiles_round_trip_and_ort_options(tmp_path) -> None:
    p = compute_profiles(FusionConfig(), 576)
    assert profiles_from_dict(profiles_to_dict(p)) == p
    opts = ort_trt_provider_options(p, fp16=True, cache_dir=tmp_path)
    assert opts["trt_fp16_enable"] == "True" and opts["trt_engine_cache_enable"] == "True"
    assert opts["trt_engine_cache_path"] == str(tmp_path)
    mins = dict(item.split(":") for item in opts["trt_profile_min_shapes"].split(","))
    maxs = dict(item.split(":") for item in opts["trt_profile_max_shapes"].split(","))
    assert mins["audio"] == "1x2x384" and maxs["audio"] == "8x1500x384" and maxs["visual_valid"] == "8x300"
    assert set(mins) == set(INPUTS)
    assert "trt_engine_cache_path" not in ort_trt_provider_options(p, fp16=False)


def test_tensorrt_absence_is_reported(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    usable, reason = tensorrt_status()
    assert not usable and "TensorRT is not installed" in reason and "tensorrt-cu13" in reason
    with pytest.raises(TensorRTUnavailable, match="not installed"):
        build_engine("fusion.onnx", "fusion.plan", compute_profiles(FusionConfig(), 576))


class _FakeTRT:
    """Stand-in for the tensorrt module that records what the builder is asked to do."""

    __version__ = "10.9.0"

    def __init__(self, input_names, parse_ok=True, build_ok=True):
        fake = self
        self.calls: dict = {"profiles": {}, "flags": [], "pool": None}

        class Logger:
            WARNING = 2

            def __init__(self, level):
                pass

        class Input:
            def __init__(self, name):
                self.name = name

        class Network:
            num_inputs = len(input_names)

            def get_input(self, i):
                return Input(input_names[i])

        class Parser:
            num_errors = 0 if parse_ok else 1

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                fake.calls["parsed"] = path
                return parse_ok

            def get_error(self, i):
                return "unsupported op Foo"

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                fake.calls["profiles"][name] = (lo, opt, hi)

        class Config:
            def set_memory_pool_limit(self, pool, size):
                fake.calls["pool"] = (pool, size)

            def set_flag(self, flag):
                fake.calls["flags"].append(flag)

            def add_optimization_profile(self, profile):
                fake.calls["profile_added"] = True

        class Builder:
            platform_has_fast_fp16 = True

            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.calls["network_flags"] = flags
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return b"PLAN" if build_ok else None

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, Parser
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
        self.BuilderFlag = types.SimpleNamespace(FP16="fp16")


def test_build_engine_sets_profiles_and_fp16(tmp_path) -> None:
    profiles = compute_profiles(FusionConfig(), 576)
    trt = _FakeTRT(list(INPUTS))
    result = build_engine(tmp_path / "fusion.onnx", tmp_path / "fusion.plan", profiles, fp16=True, workspace_gib=1,
                          trt=trt)
    assert (tmp_path / "fusion.plan").read_bytes() == b"PLAN" and result.bytes == 4 and result.fp16
    assert trt.calls["flags"] == ["fp16"] and trt.calls["pool"] == ("workspace", 1 << 30)
    assert trt.calls["network_flags"] == 0  # explicit batch is implicit from TensorRT 10
    assert trt.calls["profiles"]["audio"] == (profiles["audio"].min, profiles["audio"].opt, profiles["audio"].max)
    assert set(trt.calls["profiles"]) == set(INPUTS) and trt.calls["profile_added"]
    trt32 = _FakeTRT(list(INPUTS))
    build_engine(tmp_path / "fusion.onnx", tmp_path / "fp32.plan", profiles, fp16=False, trt=trt32)
    assert trt32.calls["flags"] == []


def test_build_engine_reports_parser_and_builder_failures(tmp_path) -> None:
    profiles = compute_profiles(FusionConfig(), 576)
    with pytest.raises(RuntimeError, match="could not parse.*unsupported op Foo"):
        build_engine(tmp_path / "f.onnx", tmp_path / "f.plan", profiles, trt=_FakeTRT(list(INPUTS), parse_ok=False))
    with pytest.raises(RuntimeError, match="failed to build"):
        build_engine(tmp_path / "f.onnx", tmp_path / "f.plan", profiles, trt=_FakeTRT(list(INPUTS), build_ok=False))
    with pytest.raises(RuntimeError, match="no optimization profile.*extra"):
        build_engine(tmp_path / "f.onnx", tmp_path / "f.plan", profiles, trt=_FakeTRT(list(INPUTS) + ["extra"]))


def test_manifest_file_table_and_verification(tmp_path) -> None:
    (tmp_path / "llm").mkdir()
    (tmp_path / "fusion.onnx").write_bytes(b"graph")
    (tmp_path / "llm" / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "manifest.json").write_text("{}")
    table = file_table(tmp_path)
    assert list(table) == ["fusion.onnx", "llm/model.safetensors"]
    assert table["fusion.onnx"] == {"sha256": sha256_file(tmp_path / "fusion.onnx"), "bytes": 5}
    assert verify_files(tmp_path, {"files": table}) == []
    (tmp_path / "fusion.onnx").write_bytes(b"graph2")
    assert verify_files(tmp_path, {"files": table}) == ["fusion.onnx"]
