"""The LoRA-merged LLM: merge a copy, save a standard Hugging Face folder, reload it and check its logits.

Merging folds each LoRA update (B @ A * alpha / r) into the frozen weight it adapts, so serving runs a plain
causal LM with no adapter indirection and any HF-compatible runtime can load it. The check feeds the SAME input
embeddings (real prompts with pseudo tokens from the fusion stack, built by `EGMFModel.prepare`) to the unmerged
LoRA model and to the reloaded merged model, and compares logits at every attended position with a tolerance
relative to the logits' scale (merge -> save -> reload changes float rounding only: ~1e-4 absolute on logits of
magnitude ~30 for SmolLM2 in fp32). It also reports how far the LoRA moves the logits away from the base model, so
a parity pass on an adapter that does nothing is visible as such.
"""

from __future__ import annotations

import copy
import gc
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LogitTolerance:
    rtol: float = 1e-4  # of max |logit|
    prob_atol: float = 1e-3  # on the emotion-label probabilities the scorer reads


def save_merged(model: Any, folder: str | Path) -> dict[str, Any]:
    """Merge LoRA into a deep copy of `model.llm` and save it (safetensors + tokenizer) to `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lora = model.cfg.lora.enabled
    if lora:
        work = copy.deepcopy(model.llm)
        delta = _lora_delta_norm(work)
        merged = work.merge_and_unload()
    else:
        merged, delta = model.llm, 0.0
    merged.save_pretrained(str(folder), safe_serialization=True)
    model.tokenizer.save_pretrained(str(folder))
    info = {"lora_merged": lora, "lora_delta_fro_norm": delta,
            "dtype": str(next(merged.parameters()).dtype).replace("torch.", ""),
            "parameters": int(sum(p.numel() for p in merged.parameters())),
            "architecture": type(merged).__name__}
    del merged
    gc.collect()
    return info


def _lora_delta_norm(peft_model: Any) -> float:
    """Frobenius norm of all LoRA weight updates (0 = untrained adapter: the merge is then trivially exact)."""
    total = 0.0
    for module in peft_model.modules():
        if hasattr(module, "get_delta_weight") and getattr(module, "lora_A", None):
            for name in module.lora_A:
                total += float(module.get_delta_weight(name).float().pow(2).sum())
    return total ** 0.5


def check_merged(model: Any, folder: str | Path, batch: Sequence[Any],
                 tol: LogitTolerance = LogitTolerance()) -> dict[str, Any]:
    """Reload `folder` with AutoModelForCausalLM and compare its logits with the unmerged model's on `batch`."""
    from transformers import AutoModelForCausalLM

    dtype = next(model.llm.parameters()).dtype
    merged = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).to(model.device).eval()
    with torch.no_grad():
        prep = model.prepare(batch)
        kw = dict(inputs_embeds=prep.embeds, attention_mask=prep.attention_mask, position_ids=prep.position_ids,
                  use_cache=False)
        ref = model.llm(**kw).logits.float()
        got = merged(**kw).logits.float()
        lora_effect = 0.0
        if model.cfg.lora.enabled and hasattr(model.llm, "disable_adapter"):
            # How far the adapter moves the logits (first prompt only: one more forward pass is enough to show it).
            one = {k: v[:1] if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
            with model.llm.disable_adapter():
                base = model.llm(**one).logits.float()
            keep = prep.attention_mask[:1].bool()
            lora_effect = float((ref[:1][keep] - base[keep]).abs().max())
    valid = prep.attention_mask.bool()
    ref_v, got_v = ref[valid], got[valid]
    max_abs = float((ref_v - got_v).abs().max())
    scale = float(ref_v.abs().max())
    first = torch.tensor([ids[0] for ids in model.prompts.label_ids.values()], device=ref.device)
    p_ref = torch.softmax(ref[:, -1, first], dim=-1)
    p_got = torch.softmax(got[:, -1, first], dim=-1)
    prob_abs = float((p_ref - p_got).abs().max())
    same_labels = bool(torch.equal(p_ref.argmax(-1), p_got.argmax(-1)))
    same_next = bool(torch.equal(ref[:, -1].argmax(-1), got[:, -1].argmax(-1)))
    labels = list(model.prompts.label_ids)
    report = {
        "prompts": len(batch),
        "positions_compared": int(valid.sum()),
        "max_abs": max_abs,
        "logit_scale": scale,
        "rel_to_scale": max_abs / scale if scale else 0.0,
        "label_prob_max_abs": prob_abs,
        "same_label_argmax": same_labels,
        "same_next_token": same_next,
        "lora_effect_max_abs": lora_effect,
        "labels_unmerged": [labels[i] for i in p_ref.argmax(-1).tolist()],
        "tolerance": asdict(tol),
    }
    failures = []
    if not max_abs <= tol.rtol * scale:
        failures.append(f"logits max abs error {max_abs:.3g} > {tol.rtol:g} x scale {scale:.3g}")
    if not prob_abs <= tol.prob_atol:
        failures.append(f"label probabilities differ by {prob_abs:.3g} > {tol.prob_atol:g}")
    if not same_labels:
        failures.append("the most likely emotion label differs between the merged and the unmerged model")
    report["passed"] = not failures
    report["failures"] = failures
    del merged
    gc.collect()
    return report
