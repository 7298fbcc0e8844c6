"""Checkpoint format: one safetensors file with the trained weights (fusion stack + LoRA) and, in its metadata,
the full config and label sets.

Tensors: `fusion.<key>` for the fusion stack, `lora.<key>` for the default language's LoRA adapter and
`lora.<language>.<key>` for each further language adapter (`lora.languages`), keys as peft's
`get_peft_model_state_dict` gives them; metadata `lora_adapters` lists the adapters' languages, default first.
A file with one adapter (as all files from before language adapters) loads it as the default adapter.

safetensors holds tensors only, so loading can never execute code (unlike pickled .pt/.bin files). The base LLM is
not stored: it is rebuilt from `config.backbone` (a registry package or a user path).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .audio_prior import METADATA_KEY as AUDIO_PRIOR_KEY
from .audio_prior import AudioPrior
from .text_prior import METADATA_KEY as TEXT_PRIOR_KEY
from .text_prior import SentenceEncoder, TextPrior
from .calibration import METADATA_KEY as CALIBRATION_KEY
from .calibration import Calibration
from .config import EGMFConfig
from .model import EGMFModel

log = logging.getLogger(__name__)
FORMAT_VERSION = "1"
DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoints" / "default.safetensors"


class CheckpointError(ValueError):
    """The checkpoint file is missing, not an EGMF checkpoint, or does not match the model."""


def resolve(path: str | Path) -> Path:
    p = DEFAULT_CHECKPOINT if str(path) == "default" else Path(path)
    if not p.is_file():
        hint = (" (the default checkpoint ships with the package; train one with `python -m egmf_core.research.train`)"
                if str(path) == "default" else "")
        raise CheckpointError(f"checkpoint not found: {p}{hint}")
    return p


def checkpoint_version(path: str | Path, backbone: str) -> str:
    """The model's identity in events and reports: backbone, file name and the first 12 hex digits of the file's
    sha256, so that "default" in a report still says which weights it was once the shipped file changes."""
    p = resolve(path)
    return f"egmf-{backbone}-{p.stem}-{hashlib.sha256(p.read_bytes()).hexdigest()[:12]}"


def save_checkpoint(model: EGMFModel, path: str | Path, extra: dict | None = None) -> Path:
    tensors = {f"fusion.{k}": v.detach().cpu().contiguous() for k, v in model.fusion.state_dict().items()}
    meta = {
        "format": "egmf",
        "format_version": FORMAT_VERSION,
        "config": json.dumps(model.cfg.to_dict()),
        "emotions": json.dumps(model.cfg.task.emotions),
        "sentiments": json.dumps(model.cfg.task.sentiments),
        "extra": json.dumps(extra or {}),
        CALIBRATION_KEY: model.calibration.to_json(),
    }
    if model.audio_prior is not None:
        meta[AUDIO_PRIOR_KEY] = model.audio_prior.to_json()
    if model.text_prior is not None:
        meta[TEXT_PRIOR_KEY] = model.text_prior.to_json()
    if model.cfg.lora.enabled:
        for i, language in enumerate(model.languages):
            prefix = "lora." if i == 0 else f"lora.{language}."
            tensors.update({prefix + k: v.detach().cpu().contiguous() for k, v in model.lora_state(language).items()})
        meta["lora_adapters"] = json.dumps(model.languages)
    return write_file(tensors, meta, path)


def read_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor and the metadata of a checkpoint file, for tools that rewrite part of it."""
    with safe_open(str(resolve(path)), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})


def write_file(tensors: dict[str, torch.Tensor], meta: dict[str, str], path: str | Path) -> Path:
    """Write a checkpoint file atomically (a temporary file renamed into place: a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def read_metadata(path: str | Path) -> tuple[EGMFConfig, dict]:
    p = resolve(path)
    with safe_open(str(p), framework="pt") as fh:
        meta = fh.metadata() or {}
    if meta.get("format") != "egmf":
        raise CheckpointError(f"{p} is not an EGMF checkpoint (no 'format: egmf' metadata)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{p}: checkpoint format {meta.get('format_version')} is not supported (expected "
                              f"{FORMAT_VERSION})")
    return EGMFConfig.from_dict(json.loads(meta["config"])), json.loads(meta.get("extra", "{}"))


def load_checkpoint(path: str | Path, overrides: dict | None = None) -> EGMFModel:
    """Rebuild the model from the checkpoint's config and load its weights.

    The device is a property of the machine, not of the checkpoint: unless `overrides` names one
    (`{"backbone": {"device": ...}}`), the model goes to CUDA when available, else the CPU.
    """
    cfg, _ = read_metadata(path)
    merged = cfg.to_dict()
    merged["backbone"]["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    for section, values in (overrides or {}).items():
        merged[section].update(values)
    cfg = EGMFConfig.from_dict(merged)
    model = EGMFModel.build(cfg)
    load_weights(model, path)
    model.calibration = read_calibration(path)
    model.audio_prior = read_audio_prior(path)
    model.text_prior = read_text_prior(path)
    if model.text_prior is not None:
        model.sentence_encoder = SentenceEncoder()
    model.eval()
    return model


def _metadata_entry(path: str | Path, key: str) -> str | None:
    """One string entry of the file's safetensors metadata (None when absent)."""
    with safe_open(str(resolve(path)), framework="pt") as fh:
        return (fh.metadata() or {}).get(key)


def read_calibration(path: str | Path) -> Calibration:
    """The file's confidence calibration (`egmf_core.calibration`); uncalibrated for files without one."""
    return Calibration.from_json(_metadata_entry(path, CALIBRATION_KEY))


def read_text_prior(path: str | Path) -> TextPrior | None:
    """The file's text prior (`egmf_core.text_prior`); None for files without one (text-led rows: the LLM alone)."""
    return TextPrior.from_json(_metadata_entry(path, TEXT_PRIOR_KEY))


def read_audio_prior(path: str | Path) -> AudioPrior | None:
    """The file's voice prior (`egmf_core.audio_prior`); None for files without one (the LLM answers alone)."""
    return AudioPrior.from_json(_metadata_entry(path, AUDIO_PRIOR_KEY))


# Blocks whose output starts at exactly zero: a staged run may add them to a checkpoint trained without them.
_ZERO_INIT_BLOCKS = ("audio_stats.",)


def load_weights(model: EGMFModel, path: str | Path, initialising: bool = False) -> None:
    """Load fusion + LoRA weights. `initialising` (staged training's init_from) tolerates absent zero-init blocks, and
    language adapters the file lacks start as a copy of its default adapter (the only trained starting point)."""
    p = resolve(path)
    fusion: dict[str, torch.Tensor] = {}
    lora: dict[str, dict[str, torch.Tensor]] = {}  # adapter language -> its weights
    with safe_open(str(p), framework="pt", device="cpu") as fh:
        stored = json.loads((fh.metadata() or {}).get("lora_adapters", "[]"))
        if len(stored) < 2:  # one adapter (or a file from before language adapters): the default, whatever its language
            stored = model.languages[:1]
        for key in fh.keys():
            group, name = key.split(".", 1)
            if group == "fusion":
                fusion[name] = fh.get_tensor(key)
                continue
            head, rest = name.split(".", 1)
            language, name = (head, rest) if head in stored[1:] else (stored[0], name)
            lora.setdefault(language, {})[name] = fh.get_tensor(key)
    missing, unexpected = model.fusion.load_state_dict(fusion, strict=False)
    missing = [k for k in missing if not k.startswith("aux_head.")]  # training-only head, absent in older files
    if initialising:
        missing = [k for k in missing if not k.startswith(_ZERO_INIT_BLOCKS)]
    if missing or unexpected:
        raise CheckpointError(f"{p}: fusion weights do not match the config (missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]})")
    if model.cfg.lora.enabled:
        if not lora:
            raise CheckpointError(f"{p}: the config enables LoRA but the checkpoint holds no LoRA weights")
        unknown = [lang for lang in lora if lang not in model.languages]
        if unknown:
            raise CheckpointError(f"{p}: holds LoRA adapters for {unknown}; lora.languages is {model.languages}")
        absent = [lang for lang in model.languages if lang not in lora]
        if absent and not initialising:
            raise CheckpointError(f"{p}: no LoRA weights for {absent} of lora.languages {model.languages}")
        for language in model.languages:
            try:
                model.load_lora_state(language, lora.get(language, lora[stored[0]]))
            except ValueError as e:
                raise CheckpointError(f"{p}: {e}") from None
        if absent:
            log.info("language adapters %s initialised from the checkpoint's %r adapter", absent, stored[0])
    tensors = len(fusion) + sum(len(state) for state in lora.values())
    log.info("checkpoint loaded", extra={"path": str(p), "tensors": tensors})
