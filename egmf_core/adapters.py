"""Per-language LoRA adapters (`lora.languages`) on the peft-wrapped LLM.

One adapter per utterance language, each prompted in its language's template; the first language's adapter is the
one `get_peft_model` creates (`DEFAULT_ADAPTER`). Inference runs a mixed-language batch in one pass with peft's
per-row `adapter_names`; a batch whose rows all use the default adapter runs exactly the single-adapter code.
Training passes group the rows by adapter instead (peft refuses `adapter_names` in training mode) and switch the
active adapter around each group (`active_adapter`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model_state_dict, set_peft_model_state_dict

from .config import LoRAConfig

DEFAULT_ADAPTER = "default"  # peft's name for the adapter get_peft_model creates: the default language's


def lora_config(c: LoRAConfig) -> LoraConfig:
    """peft's configuration of one adapter (every language's adapter has the same shape)."""
    return LoraConfig(
        r=c.r,
        lora_alpha=c.alpha,
        lora_dropout=c.dropout,
        target_modules=list(c.target_modules),
        layers_to_transform=c.layers,
        bias="none",
        task_type="CAUSAL_LM",
    )


def adapter_name(languages: Sequence[str], language: str) -> str:
    """peft's name of `language`'s adapter among the model's `languages` (default first)."""
    if language not in languages:
        raise ValueError(f"no LoRA adapter for language {language!r}; adapters: {list(languages)}")
    return DEFAULT_ADAPTER if language == languages[0] else language


def add_adapter(llm: PeftModel, name: str, c: LoRAConfig) -> None:
    """Add a trainable adapter `name` (peft adds it frozen; like the default adapter, it is trained)."""
    llm.add_adapter(name, lora_config(c))
    llm.set_requires_grad(name, True)


def adapter_state(llm: PeftModel, name: str) -> dict[str, torch.Tensor]:
    """Adapter `name`'s LoRA weights under peft's adapter-independent keys (the checkpoint layout)."""
    return get_peft_model_state_dict(llm, adapter_name=name)


def load_adapter_state(llm: PeftModel, name: str, state: dict[str, torch.Tensor], device: torch.device,
                       language: str) -> None:
    """Load adapter `name`'s (`language`'s) LoRA weights, keys as `adapter_state` gives them; every weight must be
    there."""
    expected = adapter_state(llm, name).keys()
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        raise ValueError(
            f"LoRA weights of language {language!r} do not match the model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    set_peft_model_state_dict(llm, {k: v.to(device) for k, v in state.items()}, adapter_name=name)


def per_row_adapters(names: Sequence[str]) -> dict:
    """peft's per-row adapters for an inference pass; none when every row uses the default adapter, so that such a
    batch runs exactly the single-adapter code (bit-identical outputs)."""
    return {} if set(names) == {DEFAULT_ADAPTER} else {"adapter_names": list(names)}


@contextmanager
def active_adapter(llm: PeftModel, name: str) -> Iterator[None]:
    """Run the enclosed passes with adapter `name` active (training passes: peft refuses per-row `adapter_names` in
    training mode). peft's set_adapter also changes which adapters require gradients, which is the trainer's choice
    (e.g. a frozen LoRA), so those flags are kept as they were."""
    if name == DEFAULT_ADAPTER:  # the default adapter is active outside this context
        yield
        return
    _set_active(llm, name)
    try:
        yield
    finally:
        _set_active(llm, DEFAULT_ADAPTER)


def _set_active(llm: PeftModel, name: str) -> None:
    flags = [(p, p.requires_grad) for p in llm.parameters()]
    llm.set_adapter(name)
    for p, flag in flags:
        p.requires_grad_(flag)
