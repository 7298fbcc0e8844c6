"""`python -m egmf_core.research.ablate`: every variant is scored and tabulated, and each ablation does exactly what it
says."""

from __future__ import annotations

import json
import math

import pytest

from egmf_core.research import ablate, evaluate
from egmf_core.research.analysis import DatasetSpec, parse_limits
from egmf_core.config import EGMFConfig

LIMITS = {"meld": 4, "ravdess": 4}  # one batch each: ten variants stay within a couple of minutes on 2 cores
VARIANT = {v.name: v for v in ablate.VARIANTS}


@pytest.fixture(scope="module")
def ablation(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ablate") / "ablations.md"
    limits = [a for name, n in LIMITS.items() for a in ("--limit", f"{name}={n}")]
    assert ablate.main(["--checkpoint", "default", "--datasets", "meld", "ravdess", *limits, "--out", str(out)]) == 0
    return {"md": out.read_text(), "json": json.loads(out.with_suffix(".json").read_text())}


def _rows(ablation: dict) -> dict[str, dict]:
    (block,) = ablation["json"]["checkpoints"]
    return {row["variant"]: row for row in block["variants"]}


@pytest.mark.slow
def test_every_variant_is_scored_and_tabulated(ablation, shipped_model_version):
    assert ablation["json"]["checkpoints"][0]["model_version"] == shipped_model_version
    assert f"Model: `{shipped_model_version}`." in ablation["md"]
    rows = _rows(ablation)
    assert list(rows) == list(ablate.VARIANT_NAMES)
    for row in rows.values():
        assert set(row["datasets"]) == {"meld", "ravdess"}
        for res in row["datasets"].values():
            assert set(res["delta_vs_full"]) == set(res["scores"])
    assert all(d == 0 for res in rows["full"]["datasets"].values() for d in res["delta_vs_full"].values())
    assert ablation["json"]["datasets"]["meld"]["n"] == LIMITS["meld"]
    assert ablation["json"]["datasets"]["ravdess"]["n"] == LIMITS["ravdess"]
    md = ablation["md"]
    assert "Test-time ablations of one trained checkpoint, not retrained variants" in md
    assert "`ablation:` section" in md and "egmf_core.research.ablate_retrained" in md  # how to get retrained variants
    for v in ablate.VARIANTS:
        assert md.count(f"| {v.label} |") == 2, v.label  # one row in each dataset's table
    assert "8-class acc" in md and "sentiment wF1" in md


@pytest.mark.slow
def test_full_variant_equals_evaluate(ablation, tmp_path):
    full = _rows(ablation)["full"]["datasets"]
    for dataset, limit in LIMITS.items():
        out = tmp_path / f"{dataset}.json"
        assert evaluate.main(["--checkpoint", "default", "--dataset", dataset, "--limit", str(limit), "--out",
                              str(out)]) == 0
        expected = json.loads(out.read_text())
        got = full[dataset]["report"]
        assert set(got) == set(expected) - {"checkpoint", "model_version", "dataset", "split", "label_set", "audio",
                                            "limit", "seconds"}
        for key, value in got.items():  # compared as JSON text: NaN (a constant prediction's correlation) equals NaN
            assert json.dumps(value, sort_keys=True) == json.dumps(expected[key], sort_keys=True), key


@pytest.mark.slow
def test_removing_an_absent_modality_changes_nothing(ablation):
    rows = _rows(ablation)
    info = ablation["json"]["datasets"]
    assert info["ravdess"]["modalities_present"] == {"audio": 4, "video": 0, "text": 4}
    assert info["meld"]["modalities_present"]["audio"] == 0

    def same(a: str, b: str, dataset: str) -> bool:
        ra, rb = rows[a]["datasets"][dataset], rows[b]["datasets"][dataset]
        return ra["predictions"] == rb["predictions"] and ra["report"]["gate"] == rb["report"]["gate"]

    assert same("no_audio", "no_audio_video", "ravdess")  # RAVDESS has no video
    assert same("no_video", "full", "ravdess")
    assert same("no_audio", "full", "meld")  # MELD has no audio here
    assert rows["no_audio"]["datasets"]["ravdess"]["report"]["modalities"]["audio"] == 0
    assert rows["full"]["datasets"]["ravdess"]["report"]["modalities"]["audio"] == 4
    assert all(rows["no_text"]["datasets"][d]["report"]["modalities"]["text"] == 0 for d in LIMITS)


@pytest.mark.slow
def test_gate_ablations_are_exact(ablation):
    rows = _rows(ablation)
    for row in rows.values():
        for res in row["datasets"].values():
            assert res["alpha_row_sum_max_error"] < 1e-6
    for res in rows["uniform_gating"]["datasets"].values():
        assert all(a == pytest.approx(1 / 3, abs=1e-7) for a in res["alpha_min"] + res["alpha_max"])
        assert res["scores"]["alpha_entropy"] == pytest.approx(math.log(3), abs=1e-6)
    for i, name in enumerate(("no_e1", "no_e2", "no_e3")):
        for res in rows[name]["datasets"].values():
            assert res["alpha_max"][i] == 0.0
            assert all(res["alpha_min"][j] > 0 for j in range(3) if j != i)
            assert res["scores"]["alpha_entropy"] <= math.log(2) + 1e-6


def test_variant_overrides_respect_the_checkpoints_own_config():
    cfg = EGMFConfig.from_dict({"ablation": {"experts": [False, True, True]}, "lora": {"enabled": False}})
    assert ablate.not_applicable(cfg, VARIANT["full"].overrides(cfg)) is None
    assert ablate.not_applicable(cfg, VARIANT["no_e1"].overrides(cfg)) == "already off in this checkpoint"
    assert ablate.not_applicable(cfg, VARIANT["no_lora"].overrides(cfg)) == "already off in this checkpoint"
    assert VARIANT["no_e2"].overrides(cfg) == {"ablation": {"experts": [False, False, True]}}  # E1 stays off
    assert ablate.not_applicable(cfg, VARIANT["no_e2"].overrides(cfg)) is None
    single = EGMFConfig.from_dict({"ablation": {"experts": [True, False, False]}})
    assert ablate.not_applicable(single, VARIANT["no_e1"].overrides(single)).startswith("not a valid model")


def test_limits_per_dataset_and_clear_errors(capsys):
    specs = [DatasetSpec("meld"), DatasetSpec("ravdess")]
    assert parse_limits([], specs) == {"meld": None, "ravdess": None}
    assert parse_limits(["200", "ravdess=120"], specs) == {"meld": 200, "ravdess": 120}
    assert ablate.main(["--limit", "iemocap=5"]) == 2
    assert "not one of the datasets scored" in capsys.readouterr().err
    assert ablate.main(["--limit", "0"]) == 2
    with pytest.raises(SystemExit):
        ablate.main(["--datasets", "nosuchset"])
    assert DatasetSpec.parse("iemocap:iemocap6") == DatasetSpec("iemocap", "iemocap6")


def test_video_clips_are_scored_with_face_features(tmp_path):
    """MEAD's real clips carry face features into evaluation, so "w/o video" is a real ablation there: the gate
    moves when the faces are removed (the shipped checkpoint never saw labelled video, so only the wiring is
    checked, not accuracy)."""
    from egmf_core.research.ablate import main as ablate_main

    out = tmp_path / "mead.md"
    assert ablate_main(["--checkpoint", "default", "--datasets", "mead", "--variants", "full", "no_video",
                        "--out", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["datasets"]["mead"]["modalities_present"] == {"audio": 4, "video": 6, "text": 0}
    alpha = {v["variant"]: v["datasets"]["mead"]["alpha_mean"] for v in data["checkpoints"][0]["variants"]}
    assert max(abs(a - b) for a, b in zip(alpha["full"], alpha["no_video"])) > 1e-3
