"""Voice-activity segmentation of a 16 kHz stream into utterances with exact stream-time boundaries.

One concern per module:

* :mod:`~egmf_core.features.segmenter.config`: :class:`SegmenterConfig`, the settings of every stage;
* :mod:`~egmf_core.features.segmenter.segments`: what comes out, :class:`SpeechSegment` (one utterance) and
  :class:`SpeechStart` (the speech-start callback's payload);
* :mod:`~egmf_core.features.segmenter.vad`: :class:`VADSegmenter`, one channel's webrtcvad decisions turned into
  utterances (onset, pre-roll, hangover, minimum and maximum length, tentative end);
* :mod:`~egmf_core.features.segmenter.channels`: :class:`ChannelSegmenter`, one :class:`VADSegmenter` per channel
  with the segments released in start-time order.

Importers use this package (``from egmf_core.features.segmenter import VADSegmenter``): the streaming pipeline, the
service, training's live cuts and the benchmarks share it.
"""

from egmf_core.features.segmenter.channels import ChannelSegmenter
from egmf_core.features.segmenter.config import SegmenterConfig
from egmf_core.features.segmenter.segments import SpeechSegment, SpeechStart
from egmf_core.features.segmenter.vad import VADSegmenter

__all__ = ["SegmenterConfig", "SpeechSegment", "SpeechStart", "VADSegmenter", "ChannelSegmenter"]
