"""Language-specific LoRA adapters (`lora.languages`) on the shipped checkpoint with real MELD utterances.

One model goes through the whole story once (module fixture): the shipped single-adapter checkpoint, then the same
model with a "zh" adapter copied from "en" and perturbed so that it differs. The tests compare the recorded outputs.
"""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from egmf_core.checkpoint import DEFAULT_CHECKPOINT, CheckpointError, load_checkpoint, load_weights, save_checkpoint
from egmf_core.data import load_dataset
from egmf_core.research.examples import build_examples
from egmf_core.model_io import ModelInput
from egmf_core.predictor import EGMFPredictor

pytestmark = pytest.mark.slow

# "Customer": "My order has not arrived for three days, this is infuriating!"
ZH_SPEAKER, ZH_TEXT = "客户", "我的订单已经三天没到了，太让人生气了！"


def _tensors(path, prefix: str) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys() if k.startswith(prefix)}


def _metadata(path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as fh:
        return fh.metadata()


def _max_prob_diff(a, b) -> float:
    return max(abs(a.emotion_probs[k] - b.emotion_probs[k]) for k in a.emotion_probs)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> SimpleNamespace:
    model = load_checkpoint("default", {"backbone": {"device": "cpu"}})
    model.eval()
    english = [e.input for e in build_examples(list(load_dataset("meld", "test"))[:3], model.prompts)]
    zh = ModelInput(context=(), current=model.prompts.make_turn(ZH_SPEAKER, ZH_TEXT), emotion="anger",
                    sentiment=-1.0, language="zh")
    mixed = [english[0], zh, *english[1:]]  # the Chinese row in the middle: batch order must survive the routing
    r = SimpleNamespace(model=model, english=english, zh=zh, mixed=mixed)
    folder = tmp_path_factory.mktemp("checkpoints")

    # the shipped single-adapter model
    r.languages_before = list(model.languages)
    r.single_file = save_checkpoint(model, folder / "single.safetensors")
    r.en_scores, r.en_gen = model.score(english), model.generate(english)
    with torch.no_grad():
        r.en_loss = model.loss(english)
    r.zh_fallback = model.score([zh])[0]
    r.zh_as_english = model.score([dataclasses.replace(zh, language="en")])[0]

    # + a "zh" adapter: first an exact copy of "en", then perturbed
    model.add_language_adapter("zh", init_from="en")
    en_state, zh_state = model.lora_state("en"), model.lora_state("zh")
    r.copied_exactly = (en_state.keys() == zh_state.keys()
                        and all(torch.equal(v, zh_state[k]) for k, v in en_state.items()))
    r.zh_copied, r.mixed_copied = model.score([zh])[0], model.score(mixed)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.llm.named_parameters():
            if ".lora_B.zh." in name:
                p.add_(torch.randn(p.shape, generator=gen) * p.std())
    r.bi_scores, r.bi_gen = model.score(english), model.generate(english)
    with torch.no_grad():
        r.bi_loss = model.loss(english)
    r.zh_score, r.zh_gen = model.score([zh])[0], model.generate([zh])[0]
    r.mixed_scores, r.mixed_gen = model.score(mixed), model.generate(mixed)
    r.bilingual_file = save_checkpoint(model, folder / "bilingual.safetensors")
    return r


def test_old_single_adapter_checkpoint_loads_and_saves_in_the_same_layout(runs, tmp_path):
    # a file from before language adapters: the shipped tensors with the metadata such files had (no adapter list,
    # no lora.languages in the config)
    meta = _metadata(DEFAULT_CHECKPOINT)
    meta.pop("lora_adapters", None)
    cfg = json.loads(meta["config"])
    cfg["lora"].pop("languages", None)
    meta["config"] = json.dumps(cfg)
    old = tmp_path / "old.safetensors"
    save_file(_tensors(DEFAULT_CHECKPOINT, ""), str(old), metadata=meta)
    model = load_checkpoint(old, {"backbone": {"device": "cpu"}})
    assert model.languages == ["en"] and runs.languages_before == ["en"]
    resaved = save_checkpoint(model, tmp_path / "resaved.safetensors")
    before, after = _tensors(old, "lora."), _tensors(resaved, "lora.")
    assert before and before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert json.loads(_metadata(resaved)["lora_adapters"]) == ["en"]
    assert json.loads(_metadata(runs.single_file)["lora_adapters"]) == ["en"]


def test_english_predictions_are_bit_identical_with_a_second_adapter(runs):
    for single, bi in zip(runs.en_scores, runs.bi_scores):
        assert bi.emotion_probs == single.emotion_probs and bi.sentiment_score == single.sentiment_score
    assert [g.raw_text for g in runs.bi_gen] == [g.raw_text for g in runs.en_gen]
    assert torch.equal(runs.bi_loss, runs.en_loss)


def test_mixed_language_batch_matches_each_language_alone(runs):
    """peft's per-row adapters: the zh adapter never touches the English rows (bit for bit), and every row scores as
    in a batch of its own language, up to the float noise of padding to another batch's longest prompt (measured
    1e-6 to 3.4e-6: what the single-adapter model shows for the same rows batched with a longer English prompt)."""
    en_rows = [runs.mixed_scores[i] for i in (0, 2, 3)]
    assert [m.emotion_probs for m in en_rows] == [runs.mixed_copied[i].emotion_probs for i in (0, 2, 3)]
    assert max(_max_prob_diff(m, s) for m, s in zip(en_rows, runs.en_scores)) <= 1e-5
    assert [m.sentiment_score for m in en_rows] == [s.sentiment_score for s in runs.en_scores]
    assert _max_prob_diff(runs.mixed_scores[1], runs.zh_score) <= 1e-5
    texts = [g.raw_text for g in runs.mixed_gen]
    assert texts == [runs.en_gen[0].raw_text, runs.zh_gen.raw_text, runs.en_gen[1].raw_text, runs.en_gen[2].raw_text]


def test_chinese_goes_through_the_zh_adapter_and_template(runs):
    model, zh = runs.model, runs.zh
    assert model.prepare([zh]).languages == ["zh"]
    prompt = model.prompts.build((), zh.current, language=model.language_of(zh))
    assert "情绪" in model.tokenizer.decode(prompt.before + prompt.after)
    assert runs.copied_exactly  # init_from="en" copies every LoRA tensor
    assert _max_prob_diff(runs.zh_score, runs.zh_copied) > 1e-3  # same input, same template: only the adapter changed
    # before the zh adapter existed, a Chinese utterance used the default adapter and prompt, as if it were English
    assert runs.zh_fallback.emotion_probs == runs.zh_as_english.emotion_probs


def test_unknown_language_falls_back_to_the_default_adapter_with_a_note(runs, caplog):
    x = dataclasses.replace(runs.english[0], language="fr")
    with caplog.at_level("WARNING", logger="egmf_core.model"):
        preds = runs.model.score([x, *runs.english[1:]])
    assert [p.emotion_probs for p in preds] == [p.emotion_probs for p in runs.en_scores]
    assert "no LoRA adapter for language 'fr'" in caplog.text


def test_predictor_passes_the_utterance_language(runs):
    predictor = EGMFPredictor(runs.model, "test")
    pred = predictor.predict(predictor.new_conversation(), ZH_TEXT, ZH_SPEAKER, language="zh")
    # the predictor's path (one utterance, cached prompt start) may round differently from a batch by ~1e-7 on some
    # CPUs (e.g. AVX-512 GEMM kernels chosen by shape); the adapters differ by far more (> 1e-3, above)
    assert _max_prob_diff(pred, runs.zh_score) <= 1e-5
    assert _max_prob_diff(pred, runs.zh_as_english) > 1e-3


def test_checkpoint_round_trip_restores_both_adapters(runs):
    meta = _metadata(runs.bilingual_file)
    assert json.loads(meta["lora_adapters"]) == ["en", "zh"]
    names = _tensors(runs.bilingual_file, "lora.").keys()
    assert any(k.startswith("lora.zh.base_model.") for k in names)  # the zh adapter
    assert any(k.startswith("lora.base_model.") for k in names)  # the default (en) adapter, in the old layout
    loaded = load_checkpoint(runs.bilingual_file, {"backbone": {"device": "cpu"}})
    assert loaded.languages == ["en", "zh"] and loaded.cfg.lora.languages == ["en", "zh"]
    for lang in ("en", "zh"):
        want, got = runs.model.lora_state(lang), loaded.lora_state(lang)
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert [p.emotion_probs for p in loaded.score(runs.mixed)] == [p.emotion_probs for p in runs.mixed_scores]

    # a single-adapter file lacks "zh": an error for a bilingual model, a copy of "en" when initialising training
    with pytest.raises(CheckpointError, match=r"no LoRA weights for \['zh'\]"):
        load_weights(loaded, runs.single_file)
    load_weights(loaded, runs.single_file, initialising=True)
    en, zh = loaded.lora_state("en"), loaded.lora_state("zh")
    assert all(torch.equal(en[k], zh[k]) for k in en)


def test_training_loss_routes_each_row_through_its_adapter(runs):
    model, english, zh = runs.model, runs.english, runs.zh
    with torch.no_grad():
        mixed_loss, zh_loss = model.loss(runs.mixed), model.loss([zh])
    n_en = sum(model.prompts.answer_ids(x.emotion, x.sentiment)[1] for x in english)
    n_zh = model.prompts.answer_ids(zh.emotion, zh.sentiment)[1]
    expected = (n_en * float(runs.bi_loss) + n_zh * float(zh_loss)) / (n_en + n_zh)  # the mean over all answer tokens
    assert float(mixed_loss) == pytest.approx(expected, rel=1e-5)

    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.train()  # dropout on; peft refuses per-row adapters here, so the loss groups rows by adapter
    try:
        model.loss(runs.mixed).backward()
        grads = {n: p.grad for n, p in model.llm.named_parameters() if ".lora_B." in n}
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if ".zh." in n)
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if ".default." in n)
        assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
        assert model.llm.active_adapter == "default"
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
