"""Fixtures shared by several test modules."""

from __future__ import annotations

import hashlib

import pytest

from egmf_core.checkpoint import DEFAULT_CHECKPOINT


@pytest.fixture(scope="session")
def shipped_model_version() -> str:
    """The shipped checkpoint's identity as reports and events must name it, computed here from the file itself."""
    digest = hashlib.sha256(DEFAULT_CHECKPOINT.read_bytes()).hexdigest()[:12]
    return f"egmf-smollm2-135m-instruct-default-{digest}"
