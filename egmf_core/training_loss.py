"""The training losses of `EGMFModel`: cross-entropy on the answer tokens, and the auxiliary emotion head's.

Kept apart from `egmf_core.model` (the network and its inference API) so that what training optimises is found by
its file name; `EGMFModel.loss` and `EGMFModel.aux_loss` delegate here (`egmf_core.research.train` calls them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch.nn import functional as F

from .adapters import active_adapter
from .batching import IGNORE
from .fusion import FusionOutput
from .model_io import ModelInput

if TYPE_CHECKING:
    from .model import EGMFModel


def aux_loss(model: "EGMFModel", batch: Sequence[ModelInput], fusion: FusionOutput | None = None) -> torch.Tensor:
    """Cross-entropy of the auxiliary emotion head on f_enhanced (fusion only, no LLM pass needed)."""
    if fusion is None:
        fusion, _ = model.run_fusion(batch)
    target = torch.tensor([model.aux_labels.index(x.emotion) for x in batch], device=model.device)
    return F.cross_entropy(model.fusion.aux_head(fusion.enhanced), target)


def loss(model: "EGMFModel", batch: Sequence[ModelInput], aux_weight: float = 0.0) -> torch.Tensor:
    """Cross-entropy on the answer tokens only (logits are computed only where the answer is), plus optionally
    `aux_weight` x the auxiliary emotion head's cross-entropy on f_enhanced.

    Each row runs through its language's adapter: the rows of one adapter go through the LLM together (peft
    refuses per-row adapters in training mode), and the logits are put back in batch order, so the loss is the
    same mean over all answer tokens of the batch.
    """
    if model.lora_merged:
        raise RuntimeError("this model's LoRA is merged into the LLM for serving; load the checkpoint again to "
                           "train")
    prep = model.prepare(batch, with_answers=True)
    a = prep.labels.shape[1]
    parts, order = [], []
    for language in dict.fromkeys(prep.languages):
        rows = [i for i, lang in enumerate(prep.languages) if lang == language]
        idx = torch.tensor(rows, device=model.device)
        with active_adapter(model.llm, model.adapter_of(language)):
            out = model.llm(
                inputs_embeds=prep.embeds[idx],
                attention_mask=prep.attention_mask[idx],
                position_ids=prep.position_ids[idx],
                logits_to_keep=a + 1,
                use_cache=False,
            )
        parts.append(out.logits[:, :-1].float())  # position j predicts answer token j
        order += rows
    logits = torch.cat(parts)[torch.argsort(torch.tensor(order, device=model.device))]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), prep.labels.reshape(-1), ignore_index=IGNORE)
    if aux_weight:
        loss = loss + aux_weight * aux_loss(model, batch, prep.fusion)
    return loss
