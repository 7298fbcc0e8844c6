"""float32 arrays inside checkpoint metadata (JSON): shape + base64 bytes, never pickle.

The priors (`egmf_core.audio_prior`, `egmf_core.text_prior`) are small linear classifiers stored in the safetensors
file's string metadata beside the calibration, so one file carries everything an answer depends on.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping

import numpy as np

__all__ = ["encode_array", "decode_array"]


def encode_array(a: np.ndarray) -> dict:
    """``{"shape": [...], "float32": base64}`` of ``a`` as float32."""
    a = np.ascontiguousarray(a, np.float32)
    return {"shape": list(a.shape), "float32": base64.b64encode(a.tobytes()).decode("ascii")}


def decode_array(d: Mapping, where: str) -> np.ndarray:
    """The array an :func:`encode_array` entry holds; ``where`` names the entry in errors (e.g. "text_prior.weight")."""
    try:
        a = np.frombuffer(base64.b64decode(d["float32"]), np.float32).reshape(d["shape"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: expected {{shape, float32 (base64)}}, got an unreadable entry") from e
    if not np.isfinite(a).all():
        raise ValueError(f"{where}: contains NaN or inf")
    return a.copy()
