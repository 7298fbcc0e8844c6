"""Training and evaluating on an MMSA benchmark end to end, with the real embedded LLM (SmolLM2-135M + LoRA).

The data are the MMSA-format fixtures of `test_data_mmsa` (MOSEI: 74-d audio, 35-d vision, labels in [-3, 3]),
converted as a user converts MMSA's files. The run uses `configs/mosei_example.yaml` itself, with only the folder,
the run length and the output folder changed, so the shipped example is what is tested.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml
from test_data_mmsa import make_mmsa_pickle

from egmf_core import ablate, gate_analysis
from egmf_core.analysis import DatasetSpec, parse_mmsa_folders
from egmf_core.checkpoint import load_checkpoint, read_metadata
from egmf_core.config import ConfigError, EGMFConfig, build_dataclass
from egmf_core.data.mmsa import MmsaConfig, MmsaDataset, convert_mmsa_pickle
from egmf_core.evaluate import main as evaluate_main
from egmf_core.evaluate import mmsa_examples, regression_report
from egmf_core.metrics import sims_regression_report
from egmf_core.model import EGMFModel
from egmf_core.prompt import format_score
from egmf_core.train import RunConfig, Trainer, open_mmsa_splits
from egmf_core.train import main as train_main

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


@pytest.fixture(scope="module")
def mosei_run(mosei_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """`python -m egmf_core.train --config <yaml>`: eight steps on the four training clips (repeated 4x, batches of
    4), and the training clips' loss before (the same seeded initialisation) and after (the last checkpoint)."""
    out_dir = tmp_path_factory.mktemp("run")
    raw = _example_config("mosei_example.yaml", mosei_folder, out_dir, epochs=2, batch_size=4, warmup_steps=1,
                          lr=3e-3, fusion_lr=3e-3, log_every=4)
    raw["data"]["mmsa"]["repeat"] = 4
    config = out_dir / "mosei.yaml"
    config.write_text(yaml.safe_dump(raw))
    fresh = Trainer(RunConfig.from_yaml(config))
    inputs = [e.input for e in fresh.train_set[:4]]
    before = _train_loss(fresh.model, inputs)
    del fresh
    assert train_main(["--config", str(config)]) == 0
    after = _train_loss(load_checkpoint(out_dir / "last.safetensors"), inputs)
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
