"""`python -m egmf_core.research.ablate_retrained`: each variant is really trained without its part, scored on the test
split, tabulated; variants that cannot differ are not trained; a second run reuses the finished ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from egmf_core.research import ablate, ablate_retrained
from egmf_core.research.retrained_plan import differs_only_in_modalities, same_as, variant_config
from egmf_core.research.run_config import RunConfig

REPO = Path(__file__).resolve().parents[1]
VARIANT = {v.name: v for v in ablate.VARIANTS}
TRAINED = ("full", "no_audio", "no_text", "no_e1", "uniform_gating")
SKIPPED = ("no_video", "no_audio_video", "no_lora")


def _small_recipe(tmp: Path) -> Path:
    """The shipped fusion-only recipe on 8 RAVDESS clips per split, 2 epochs of 4: a real run in seconds."""
    raw = yaml.safe_load((REPO / "configs" / "ablation_fusion.yaml").read_text())
    raw["data"]["ravdess_limit"] = 8
    raw["train"].update(epochs=2, batch_size=4, warmup_steps=1)
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("ablate_retrained")
    args = ["--config", str(_small_recipe(tmp)), "--variants", *TRAINED[1:], *SKIPPED, "--limit", "8",
            "--runs-dir", str(tmp / "runs"), "--out", str(tmp / "ablations_retrained.md")]
    assert ablate_retrained.main(args) == 0
    return {"args": args, "tmp": tmp, "md": (tmp / "ablations_retrained.md").read_text(),
            "json": json.loads((tmp / "ablations_retrained.json").read_text())}


def _rows(result: dict) -> dict[str, dict]:
    return {row["variant"]: row for row in result["variants"]}


@pytest.mark.slow
def test_each_variant_is_trained_without_its_part(sweep):
    rows = _rows(sweep["json"])
    assert [r["variant"] for r in sweep["json"]["variants"]] == ["full", *TRAINED[1:], *SKIPPED]  # the order given
    assert sweep["json"]["fusion_only"] is True
    for name in TRAINED:
        (run,) = rows[name]["runs"]
        ckpt = sweep["tmp"] / "runs" / name / "seed0" / "best.safetensors"
        with safe_open(str(ckpt), framework="pt") as fh:
            ablation = json.loads(fh.metadata()["config"])["ablation"]
        assert ablation == run["config"]["model"]["ablation"]
        assert run["modalities_present"] == ["audio", "text"]  # RAVDESS: no video
        test = run["test"]["ravdess"]
        assert test["n"] == 8
        assert 0 <= test["scores"]["emotion_accuracy"] <= 100
    assert rows["no_audio"]["runs"][0]["config"]["model"]["ablation"]["use_audio"] is False
    assert rows["no_text"]["runs"][0]["config"]["model"]["ablation"]["use_text"] is False
    assert rows["no_e1"]["runs"][0]["config"]["model"]["ablation"]["experts"] == [False, True, True]
    # the switches act in the trained model: E1's gate weight is exactly 0, uniform gating is exactly 1/3 each
    assert rows["no_e1"]["test"]["ravdess"]["alpha_mean"][0] == 0.0
    assert rows["uniform_gating"]["test"]["ravdess"]["alpha_mean"] == pytest.approx([1 / 3] * 3, abs=1e-6)


@pytest.mark.slow
def test_variants_that_cannot_differ_are_not_trained(sweep):
    rows = _rows(sweep["json"])
    assert rows["no_video"]["skipped"] == "no example has the removed modality: same run as full model"
    assert rows["no_audio_video"]["skipped"] == "no example has the removed modality: same run as w/o audio"
    assert "trains no LoRA" in rows["no_lora"]["skipped"]
    assert not (sweep["tmp"] / "runs" / "no_video").exists()
    md = sweep["md"]
    assert "Retrained ablations of the fusion stack" in md
    for name in TRAINED + SKIPPED:
        assert md.count(f"| {VARIANT[name].label} |") == 1, name
    assert "not trained: no example has the removed modality" in md


@pytest.mark.slow
def test_a_second_sweep_reuses_finished_runs(sweep, capsys):
    out = sweep["tmp"] / "again.md"
    args = [a if a != str(sweep["tmp"] / "ablations_retrained.md") else str(out) for a in sweep["args"]]
    assert ablate_retrained.main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("reusing") == len(TRAINED) and "training " not in printed
    again = json.loads(out.with_suffix(".json").read_text())
    assert [r.get("test") for r in again["variants"]] == [r.get("test") for r in sweep["json"]["variants"]]


@pytest.mark.slow
def test_the_result_so_far_is_handed_on_after_every_variant(sweep):
    """What the CLI rewrites its report from, so that a sweep stopped by a time limit leaves the variants it
    finished."""
    base = RunConfig.from_yaml(sweep["args"][1])
    variants = [VARIANT[n] for n in ("full", "no_e1", "no_video")]
    snapshots: list[dict] = []
    final = ablate_retrained.run_sweep(base, variants, [0], sweep["tmp"] / "runs", limit=8,
                                       on_variant=lambda r: snapshots.append(json.loads(json.dumps(r))))
    assert [[row["variant"] for row in snap["variants"]] for snap in snapshots] == [
        ["full"], ["full", "no_e1"], ["full", "no_e1", "no_video"]]
    assert snapshots[-1]["variants"] == json.loads(json.dumps(final))["variants"]
    assert _rows(final)["no_e1"]["test"] == _rows(sweep["json"])["no_e1"]["test"]  # reused, not retrained


@pytest.mark.slow
def test_runs_recorded_in_an_earlier_report_are_reused(sweep, capsys):
    """A new runs folder (the old one is gone) and --reuse the first report: nothing is trained again, the table is
    the same and says where its runs came from; a different recipe (more epochs) reuses nothing."""
    out = sweep["tmp"] / "reused.md"
    report = sweep["tmp"] / "ablations_retrained.json"
    args = [str(sweep["tmp"] / "runs_new") if a == str(sweep["tmp"] / "runs") else a for a in sweep["args"]]
    args = [str(out) if a == str(sweep["tmp"] / "ablations_retrained.md") else a for a in args]
    assert ablate_retrained.main([*args, "--variants", "no_e1", "--reuse", str(report)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("reusing the run recorded in") == 2 and "training " not in printed
    again = _rows(json.loads(out.with_suffix(".json").read_text()))
    first = _rows(sweep["json"])
    assert [again[v]["test"] for v in ("full", "no_e1")] == [first[v]["test"] for v in ("full", "no_e1")]
    assert again["no_e1"]["runs"][0]["reused_from"] == str(report)
    assert f"2 of 2 runs reused as recorded in {report}" in out.read_text()
    older = json.loads(report.read_text())  # a report from before data.ravdess_audio existed (its default: clip)
    for row in older["variants"]:
        for run in row.get("runs", []):
            del run["config"]["data"]["ravdess_audio"]
    older_path = sweep["tmp"] / "older_report.json"
    older_path.write_text(json.dumps(older))
    assert ablate_retrained.main([*args, "--variants", "no_e1", "--reuse", str(older_path)]) == 0
    assert capsys.readouterr().out.count("reusing the run recorded in") == 2
    assert ablate_retrained.main([*args, "--variants", "no_e1", "--reuse", str(report), "--epochs", "1"]) == 0
    printed = capsys.readouterr().out
    trained = [line for line in printed.splitlines() if line.startswith("training ") and " seed 0 -> " in line]
    assert "reusing the run" not in printed and len(trained) == 2  # another recipe: trained anew
    with pytest.raises(SystemExit):  # --reuse needs a report
        ablate_retrained.main([*args, "--reuse"])
    bad = sweep["tmp"] / "not_a_report.json"
    bad.write_text("{}")
    assert ablate_retrained.main([*args, "--reuse", str(bad)]) == 2
    assert "not a report of python -m egmf_core.research.ablate_retrained" in capsys.readouterr().err


@pytest.mark.slow
def test_answer_loss_recipe_trains_lora_and_scores_by_the_llms_answers(tmp_path):
    """The paper's setting (train.lm_weight > 0): LoRA + fusion trained on the answer loss, each variant scored by the
    LLM's generated-label scoring (evaluate's code); "w/o LoRA" is trained here (it is n/a in the fusion-only recipe)
    and has no LoRA weights. One step per run on 4 clips: the path, not the numbers."""
    raw = yaml.safe_load(_small_recipe(tmp_path).read_text())
    raw["data"]["ravdess_limit"] = 4
    raw["train"].update(epochs=1, batch_size=4, lm_weight=1.0, train_lora=True)
    recipe = tmp_path / "answers.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    out = tmp_path / "answers.md"
    assert ablate_retrained.main(["--config", str(recipe), "--variants", "no_lora", "--limit", "4",
                                  "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["fusion_only"] is False and "scored by the LLM's answers" in result["kind"]
    rows = _rows(result)
    for name, lora in (("full", True), ("no_lora", False)):
        (run,) = rows[name]["runs"]
        assert run["config"]["model"]["lora"]["enabled"] is lora
        with safe_open(str(tmp_path / "runs" / name / "seed0" / "best.safetensors"), framework="pt") as fh:
            assert any(k.startswith("lora.") for k in fh.keys()) is lora
        assert run["test"]["ravdess"]["n"] == 4
        assert 0 <= run["test"]["ravdess"]["scores"]["emotion_accuracy"] <= 100
    md = out.read_text()
    assert md.startswith("# Retrained ablations\n\n**Retrained ablations.** Every row is trained from scratch")
    assert md.count(f"| {VARIANT['no_lora'].label} |") == 1 and "not trained" not in md


def test_ravdess_is_scored_on_the_audio_views_asked_for():
    """The recipe's own view by default (whole clips, or live cuts with data.ravdess_audio: live); --test-audio adds
    the other; each view is its own table section and JSON key, so runs scored on another view are never reused."""
    import argparse

    from egmf_core.research.retrained_plan import test_datasets
    from egmf_core.research.analysis import DatasetSpec

    clips = RunConfig.from_yaml(REPO / "configs" / "ablation_fusion.yaml")
    live = RunConfig.from_yaml(REPO / "configs" / "ablation_fusion_live.yaml")
    assert live.data.ravdess_audio == "live"
    assert [d.key for d in test_datasets(clips)] == ["ravdess"]
    assert [d.key for d in test_datasets(live)] == ["ravdess@live"]
    assert [d.key for d in test_datasets(clips, ["clip", "live"])] == ["ravdess", "ravdess@live"]
    assert DatasetSpec.parse("ravdess@live") == DatasetSpec("ravdess", None, "live")
    with pytest.raises(argparse.ArgumentTypeError, match="the audio is one of clip, live"):
        DatasetSpec.parse("ravdess@framed")


def test_variant_configs():
    base = RunConfig.from_yaml(REPO / "configs" / "ablation_fusion.yaml")
    runs = Path("runs/x")
    cfg = variant_config(base, VARIANT["no_e2"], 3, runs)
    assert cfg.model.ablation.experts == [True, False, True] and cfg.train.seed == 3
    assert cfg.train.out_dir == str(runs / "no_e2" / "seed3")
    assert base.model.ablation.experts == [True, True, True]  # the base recipe is not modified
    assert "trains no LoRA" in variant_config(base, VARIANT["no_lora"], 0, runs)
    answers = RunConfig.from_yaml(REPO / "configs" / "default.yaml")
    no_lora = variant_config(answers, VARIANT["no_lora"], 0, runs)
    assert no_lora.model.lora.enabled is False and no_lora.train.train_lora is False

    no_video = variant_config(base, VARIANT["no_video"], 0, runs).model
    no_av = variant_config(base, VARIANT["no_audio_video"], 0, runs).model
    no_e1 = variant_config(base, VARIANT["no_e1"], 0, runs).model
    assert differs_only_in_modalities(no_av, base.model) and not differs_only_in_modalities(no_e1, base.model)
    trained = {frozenset(): "full model", frozenset({"audio"}): "w/o audio"}
    assert same_as(no_video, base.model, {"audio", "text"}, trained) == "full model"
    assert same_as(no_video, base.model, {"audio", "video", "text"}, trained) is None  # video present: a real run
    assert same_as(no_av, base.model, {"audio", "text"}, trained) == "w/o audio"
    assert same_as(no_e1, base.model, {"audio", "text"}, trained) is None
