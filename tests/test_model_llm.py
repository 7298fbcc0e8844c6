"""EGMF with the real embedded LLM (SmolLM2-135M + LoRA) on real MELD / RAVDESS inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from egmf_core.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from egmf_core.config import EGMFConfig
from egmf_core.data import load_dataset
from egmf_core.research.feature_lookup import whisper_audio_lookup
from egmf_core.research.examples import build_examples
from egmf_core.model import EGMFModel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model() -> EGMFModel:
    torch.manual_seed(0)
    return EGMFModel.build(EGMFConfig())


@pytest.fixture(scope="module")
def meld_batch(model):
    """Six real MELD training utterances with their past-only dialogue context (mixed emotions/sentiments)."""
    records = list(load_dataset("meld", "train"))[:40]
    examples = build_examples(records, model.prompts)
    picked, seen = [], set()
    for e in examples:
        if e.input.emotion not in seen or len(picked) < 6:
            picked.append(e.input)
            seen.add(e.input.emotion)
        if len(picked) == 6:
            break
    return picked


@pytest.fixture(scope="module")
def ravdess_input(model):
    recs = list(load_dataset("ravdess", "train"))[:1]
    return build_examples(recs, model.prompts, audio=whisper_audio_lookup(), label_set="ravdess")[0].input


def test_lora_rank_alpha_and_only_lora_and_fusion_train(model):
    cfg = model.cfg.lora
    lora_a = [m for n, m in model.llm.named_modules() if n.endswith("lora_A.default")]
    assert lora_a and all(m.weight.shape[0] == cfg.r for m in lora_a)
    scalings = {m.scaling["default"] for _, m in model.llm.named_modules()
                if isinstance(getattr(m, "scaling", None), dict)}
    assert scalings == {cfg.alpha / cfg.r}
    targets = {n.split(".")[-1] for n, m in model.llm.named_modules() if hasattr(m, "lora_A")}
    assert targets == set(cfg.target_modules)
    trainable = [n for n, _ in model.trainable_parameters()]
    assert trainable and all(n.startswith("fusion.") or ".lora_" in n for n in trainable)
    assert any(n.startswith("fusion.") for n in trainable) and any(".lora_" in n for n in trainable)


def test_no_lora_ablation_freezes_the_llm():
    m = EGMFModel.build(EGMFConfig.from_dict({"lora": {"enabled": False}}))
    assert all(n.startswith("fusion.") for n, _ in m.trainable_parameters())


def test_prompt_layout_prefix_pseudo_suffix_task(model, meld_batch):
    x = meld_batch[-1]
    prep = model.prepare([x])
    p = model.prompts.build(x.context, x.current)
    k = model.cfg.fusion.pseudo_tokens
    assert prep.embeds.shape[1] == len(p.before) + k + len(p.after)
    # the pseudo tokens sit right after the prefix, exactly as the fusion stack produced them
    assert torch.equal(prep.embeds[0, len(p.before) : len(p.before) + k], prep.fusion.pseudo_tokens[0])
    text = model.tokenizer.decode(p.after)
    assert x.current.text.split()[0] in text and "anger, disgust, fear, joy, neutral, sadness, surprise" in text
    for turn in x.context:
        assert turn.speaker in text


def test_pseudo_tokens_receive_gradients_and_a_step_lowers_the_loss(model, meld_batch, ravdess_input):
    batch = meld_batch + [ravdess_input]
    model.eval()  # no dropout: the two losses are comparable
    params = [p for _, p in model.trainable_parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3)
    loss0 = model.loss(batch)
    opt.zero_grad()
    loss0.backward()
    assert model.fusion.to_pseudo.weight.grad is not None and model.fusion.to_pseudo.weight.grad.abs().sum() > 0
    assert model.fusion.av_encoder.audio_in[1].weight.grad.abs().sum() > 0  # the RAVDESS clip's audio branch learns
    opt.step()
    with torch.no_grad():
        loss1 = model.loss(batch)
    assert loss1.item() < loss0.item()


def test_both_inference_paths_return_complete_predictions(model, meld_batch, ravdess_input):
    model.eval()
    scored = model.score(meld_batch[:2] + [ravdess_input])
    for p in scored[:2]:
        assert set(p.emotion_probs) == set(model.cfg.task.emotions)
        assert abs(sum(p.emotion_probs.values()) - 1) < 1e-5
        assert p.emotion == max(p.emotion_probs, key=p.emotion_probs.get)
        assert -1.0 <= p.sentiment_score <= 1.0 and p.sentiment_label in model.cfg.task.sentiments
        assert p.modalities == {"audio": False, "video": False, "text": True}
    assert set(scored[2].emotion_probs) == set(model.prompts.label_sets["ravdess"])
    assert scored[2].modalities["audio"]
    generated = model.generate(meld_batch[:2])
    assert all(isinstance(g.raw_text, str) for g in generated)


def test_checkpoint_round_trip_gives_identical_outputs(model, meld_batch, ravdess_input, tmp_path):
    model.eval()
    with torch.no_grad():  # make LoRA B non-zero so the round trip is not trivially exact
        for n, p in model.llm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    path = save_checkpoint(model, tmp_path / "ckpt.safetensors", extra={"note": "test"})
    cfg, extra = read_metadata(path)
    assert cfg == model.cfg and extra == {"note": "test"}
    loaded = load_checkpoint(path)
    batch = meld_batch[:3] + [ravdess_input]
    a, b = model.score(batch), loaded.score(batch)
    for pa, pb in zip(a, b):
        assert pa.emotion == pb.emotion and pa.sentiment_score == pb.sentiment_score
        assert np.allclose(list(pa.emotion_probs.values()), list(pb.emotion_probs.values()), atol=1e-6)
        assert np.allclose(pa.alpha, pb.alpha, atol=1e-6)


def test_a_rows_audio_mask_does_not_depend_on_the_rows_batched_with_it(model, ravdess_input):
    """A frame left over from the encoder's stride is padding for the downsampled encoder; it must not count in the
    audio statistics in a batch with longer audio either, or a row's answer depends on its batch (the service
    batches its streams' utterances): each row is cut to its own whole number of strides."""
    from dataclasses import replace

    from egmf_core.batching import pad_media

    f = model.cfg.fusion
    odd = replace(ravdess_input, audio=ravdess_input.audio[: len(ravdess_input.audio) // 2 * 2 - 1])
    longer = replace(ravdess_input, audio=np.concatenate([ravdess_input.audio, ravdess_input.audio[:11]]))
    audio_alone, valid_alone = pad_media([odd], f)[:2]
    audio_batched, valid_batched = pad_media([odd, longer], f)[:2]
    n = valid_alone.shape[1]
    assert n == len(odd.audio) - 1 and valid_alone[0].all()
    assert (valid_batched[0, :n] == valid_alone[0]).all() and not valid_batched[0, n:].any()
    assert np.array_equal(audio_batched[0, :n], audio_alone[0])
    assert valid_batched[1].sum() == len(longer.audio) - len(longer.audio) % f.audio_stride


def test_bad_media_input_is_a_clear_error(model, meld_batch):
    from dataclasses import replace

    bad = replace(meld_batch[0], audio=np.zeros((10, 100), np.float32))
    with pytest.raises(ValueError, match=r"audio features: expected an array of shape \(frames, 384\)"):
        model.score([bad])
    with pytest.raises(ValueError, match="label_set 'nope' is unknown"):
        model.score([replace(meld_batch[0], label_set="nope")])


def test_answer_tree_feeds_only_decisions(model):
    """Below "dis" the pass feeds the rest of the label, both signs, "+0"/"-0" and their "." (9 tokens); "+1.0",
    "-1.0" and every fraction digit's end-of-answer follow without the model."""
    first = model.prompts.label_ids["disgust"][0]
    tree = model._answer_trees["default"][first]
    ids = model.prompts.label_ids["disgust"] + model.prompts.score_ids[0.4]
    assert len(tree.tokens) == 9 and tree.tokens[0] == first and set(ids[:-1]) <= set(tree.tokens)
    assert tree.depths[0] == 1 and max(tree.depths) == len(ids) - 1
    assert tree.ancestors.sum(-1).tolist() == tree.depths  # every node sees itself and each ancestor once


def test_answer_walk_reports_its_closest_decision(model):
    """`walk` returns, with the answer, the smallest logit gap between the option taken and the runner-up over its
    branching steps: what int8's check compares with its margin (`EGMFPredictor.score`). Every decision is given a
    gap of 5 but one planted near tie of 0.2, which must be the margin, without changing the answer."""
    tree = model._answer_trees["default"][model.prompts.label_ids["disgust"][0]]
    logits = torch.full((len(tree.tokens), len(model.tokenizer)), -torch.inf)
    for row in range(len(tree.tokens)):  # every option ranked by token id, 5 apart
        logits[row, tree.choices] = 5.0 * torch.arange(len(tree.choices), dtype=torch.float32)
    answer, margin = tree.walk(logits)
    assert answer[0] == "disgust" and margin == pytest.approx(5.0)
    node = tree.root  # the path's first branching node
    while len([k for k in node if k is not None]) == 1:
        node = node[next(k for k in node if k is not None)]
    options = sorted(k for k in node if k is not None)
    logits[tree.index[id(node)], options[-2]] = float(logits[tree.index[id(node)], options[-1]]) - 0.2
    assert tree.walk(logits) == (answer, pytest.approx(0.2, abs=1e-4))


def test_answer_tree_pass_equals_step_by_step_decoding(model, meld_batch):
    """The one-pass tree logits at every fed node equal those of decoding its path token by token on the prompt's
    KV cache, for rows of different (left-padded) lengths in one batch."""
    import copy

    model.eval()
    batch = meld_batch[:3]
    with torch.no_grad():
        for n, p in model.llm.named_parameters():  # a non-trivial adapter
            if "lora_B" in n:
                p.normal_(0, 0.02)
        prep = model.prepare(batch)
        assert len(set(prep.attention_mask.sum(-1).tolist())) > 1  # the rows really are padded differently
        out = model.llm(inputs_embeds=prep.embeds, attention_mask=prep.attention_mask,
                        position_ids=prep.position_ids, logits_to_keep=1, use_cache=True)
        trees = [model._answer_trees["default"][model.prompts.label_ids[lab][0]]
                 for lab in ("disgust", "neutral", "surprise")]
        tree_logits = model._answer_pass(trees, prep.attention_mask, prep.position_ids[:, -1:], prep.embeds.dtype,
                                         copy.deepcopy(out.cache), {})
        for i, tree in enumerate(trees):
            paths = {0: [tree.tokens[0]]}
            for q in range(1, len(tree.tokens)):
                parent = max(k for k in range(q) if tree.ancestors[q, k] and tree.depths[k] == tree.depths[q] - 1)
                paths[q] = paths[parent] + [tree.tokens[q]]
            for q in (0, len(tree.tokens) - 1):  # the first token and the deepest-last node (a "." after a sign)
                ids = torch.tensor([paths[q]])
                cache = copy.deepcopy(out.cache)
                mask = torch.cat([prep.attention_mask[i:i + 1], torch.ones_like(ids)], dim=1)
                cache.batch_select_indices(torch.tensor([i]))
                step = model.llm(inputs_embeds=model._embed(ids), attention_mask=mask,
                                 position_ids=prep.position_ids[i:i + 1, -1:] + torch.arange(1, len(paths[q]) + 1),
                                 cache=cache, use_cache=True, logits_to_keep=1)
                # the pass computes the logits its nodes choose among (-inf elsewhere): those equal decoding's
                want = step.logits[0, -1].float()
                assert torch.allclose(tree_logits[i, q, tree.choices], want[tree.choices], atol=1e-3), (i, q)
                others = torch.ones_like(want, dtype=torch.bool)
                others[[t for tr in trees for t in tr.choices]] = False
                assert torch.isneginf(tree_logits[i, q, others]).all()


@pytest.mark.parametrize("rows", [1, 4])
def test_folded_answer_trees_change_time_not_answers(model, meld_batch, rows, monkeypatch):
    """The prompt pass carrying answer trees gives the answers and probabilities of the separate answer pass, whether
    a row's answer was folded (no answer pass) or not (an answer pass over the rows that missed only), for one row
    and for left-padded rows in one batch."""
    model.eval()
    with torch.no_grad():
        for n, p in model.llm.named_parameters():  # a non-trivial adapter
            if "lora_B" in n:
                p.normal_(0, 0.02)
    batch = meld_batch[:rows]
    trees = model._answer_trees["default"]

    def tree(label):
        return trees[model.prompts.label_ids[label][0]]

    def run(k):
        model.folded_answers = k
        model._kv.clear()
        return model.score(batch)

    try:
        runs = {0: run(0), 7: run(7)}  # none folded; every label folded
        answers = [p.emotion for p in runs[0]]
        other = {lab: next(o for o in model.prompts.label_sets["default"] if o != lab) for lab in answers}
        # rows 0, 2: the answer's tree is folded; rows 1, 3: another label's only (a miss: the answer pass)
        monkeypatch.setattr(model, "_folded_trees", lambda b, prep, priors: [
            [tree(lab if i % 2 == 0 else other[lab])] for i, lab in enumerate(answers)])
        runs["mixed"] = run(1)
    finally:
        model.folded_answers = 3
    assert all(p.prompt_tokens["folded"] == 0 and p.prompt_tokens["answer_pass"] > 0 for p in runs[0])
    assert all(p.prompt_tokens["folded"] > 50 and p.prompt_tokens["answer_pass"] == 0 for p in runs[7])
    assert [p.prompt_tokens["answer_pass"] > 0 for p in runs["mixed"]] == [i % 2 == 1 for i in range(rows)]
    for k in (7, "mixed"):
        for a, b in zip(runs[0], runs[k]):
            assert (a.emotion, a.sentiment_score) == (b.emotion, b.sentiment_score), k
            for lab, prob in a.emotion_probs.items():
                assert abs(prob - b.emotion_probs[lab]) < 1e-4, (k, lab)


def test_folded_answer_trees_follow_the_prior(model, meld_batch, monkeypatch):
    """The trees the prompt pass carries are ranked by the aux head and the row's prior together: a label the head
    ranks last, made the answer by a strong prior, is folded (no second pass)."""
    model.eval()
    batch = meld_batch[:4]
    labels = model.prompts.label_sets["default"]
    columns, _ = model._label_trees["default"]
    with torch.no_grad():
        fusion, _ = model.run_fusion(batch)
        head = model.fusion.aux_head
        last = head(fusion.enhanced.to(head.weight.dtype)).float()[:, columns].argmin(1).tolist()

    def priors(rows):
        out = []
        for i in range(len(rows)):
            bias = np.zeros(len(labels))
            bias[last[i]] = 50.0
            out.append((bias, False))
        return out

    monkeypatch.setattr(model, "label_priors", priors)
    model._kv.clear()
    preds = model.score(batch)
    assert [p.emotion for p in preds] == [labels[j] for j in last]
    assert all(p.prompt_tokens["folded"] > 0 and p.prompt_tokens["answer_pass"] == 0 for p in preds)
