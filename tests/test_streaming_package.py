"""The package ``streaming`` re-exports its public names lazily (``streaming/__init__.py``): each name in
``streaming.__all__`` must resolve to the module that defines it, so a moved or renamed module shows up here instead
of as a ``ModuleNotFoundError`` in a user's ``from streaming import VADSegmenter``."""

from __future__ import annotations

import importlib

import pytest

import streaming


def test_all_and_the_lazy_map_name_the_same_names() -> None:
    assert len(streaming.__all__) == len(set(streaming.__all__))
    assert set(streaming.__all__) == set(streaming._WHERE)


@pytest.mark.parametrize("name", streaming.__all__)
def test_every_public_name_imports(name: str) -> None:
    value = getattr(streaming, name)
    assert value is getattr(importlib.import_module(streaming._WHERE[name]), name)


def test_segmenter_names_come_from_egmf_core() -> None:
    from streaming import ChannelSegmenter, SegmenterConfig, SpeechSegment, VADSegmenter

    from egmf_core.features import segmenter

    assert (VADSegmenter, ChannelSegmenter, SegmenterConfig, SpeechSegment) == (
        segmenter.VADSegmenter, segmenter.ChannelSegmenter, segmenter.SegmenterConfig, segmenter.SpeechSegment
    )


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        getattr(streaming, "no_such_name")
