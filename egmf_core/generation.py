"""Greedy generation, the paper's inference path: the LLM writes its answer and the text is parsed.

Kept apart from `egmf_core.model` (the network and its preparation) as whisper keeps decoding apart from its model:
`EGMFModel.generate` delegates here. The fast path, constrained scoring, is `EGMFModel.score`; when greedy generation
produces a valid answer the two paths agree exactly. The priors (voice, text) guide the first answer token on both
paths (`FirstTokenBias` here, the label logits there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from .decoding import make_prediction
from .model_io import ModelInput, Prediction

if TYPE_CHECKING:
    from .model import EGMFModel


def prior_first_token_biases(model: "EGMFModel", batch: Sequence[ModelInput]
                             ) -> tuple[dict[int, dict[int, float]], list[bool]]:
    """Per row a prior guides (`EGMFModel.label_priors`): its bias on each label's first answer token, token id ->
    bias; and per row whether that prior is the voice prior."""
    out: dict[int, dict[int, float]] = {}
    priors = model.label_priors(batch)
    for i, x in enumerate(batch):
        labels = model.prompts.label_sets[x.label_set]
        bias = priors[i][0]
        if bias is not None:  # shifted to >= 0: labels only ever rise against other tokens; same order among them
            out[i] = {model.prompts.label_ids[lab][0]: float(b - bias.min()) for lab, b in zip(labels, bias)}
    return out, [voiced for _, voiced in priors]


@torch.no_grad()
def generate(model: "EGMFModel", batch: Sequence[ModelInput], max_new_tokens: int = 12) -> list[Prediction]:
    """Plain greedy generation of each row's answer, parsed into a `Prediction` (label probabilities one-hot)."""
    batch = model.without_unfamiliar_voices(batch)
    prep = model.prepare(batch)
    extra = {}
    biases, voiced = prior_first_token_biases(model, batch)
    if biases:  # the priors guide the first answer token here too, so both paths give the same answer
        from transformers import LogitsProcessorList

        extra["logits_processor"] = LogitsProcessorList([FirstTokenBias(biases)])
    out = model.llm.generate(
        inputs_embeds=prep.embeds,
        attention_mask=prep.attention_mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=model.tokenizer.pad_token_id,
        eos_token_id=model.prompts.eos_id,
        **extra,
        **model.adapter_kwargs(prep),
    )
    preds = []
    for i in range(len(batch)):
        text = model.tokenizer.decode(out[i], skip_special_tokens=True)
        label, value = model.prompts.parse_answer(text, batch[i].label_set)
        probs = {lab: float(lab == label) for lab in model.prompts.label_sets[batch[i].label_set]}
        preds.append(make_prediction(model.prompts, prep, i, batch[i].label_set, label, probs, value, raw_text=text))
        preds[-1].voice_prior = voiced[i]
    return preds


class FirstTokenBias:
    """A `transformers` logits processor adding fixed per-row biases to chosen tokens at the first generated step only
    (a prior on the labels' first answer tokens, as `EGMFModel.score` adds it)."""

    def __init__(self, biases: dict[int, dict[int, float]]):
        self.biases = biases
        self.start: int | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.start is None:
            self.start = input_ids.shape[1]
        if input_ids.shape[1] != self.start:
            return scores
        scores = scores.clone()
        for row, bias in self.biases.items():
            ids = torch.tensor(list(bias), device=scores.device)
            scores[row, ids] += torch.tensor(list(bias.values()), device=scores.device, dtype=scores.dtype)
        return scores
