"""EGMFUtteranceAnalyzer: the composition of the real Whisper frontend (one encoder pass -> transcript + audio
features), the face features and the predictor.

* ``test_whisper_frontend_in_the_stream``: the REAL recognizer on a two-speaker espeak-ng call, with a recording
  stand-in in place of the EGMF predictor (it returns a fixed, uniform answer and is labelled as such). It checks
  what the analyzer hands to the predictor (text, speaker, (T, 384) features, language, one shared conversation)
  and reports the word error rate of the transcripts against the script.
* ``test_end_to_end_with_the_real_predictor``: everything real (the shipped checkpoint).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from test_streaming_support import (
    SR,
    TALKING_HEADS,
    espeak_conversation,
    join_with_silence,
    needs_espeak,
    needs_ravdess,
    needs_talking_heads,
    ravdess_clips,
    with_inner_pause,
)

from egmf_core.research.metrics import word_error_rate
from egmf_core.model_io import Prediction
from streaming.analyzer import EGMFAnalyzerConfig, EGMFUtteranceAnalyzer
from streaming.events import EMOTION_LABELS, UtteranceEvent
from streaming.pipeline import SpeculativeAnalyzer, StreamAnalyzer, StreamConfig
from streaming.sources import AudioChunk, AVFileSource

pytestmark = pytest.mark.slow


@dataclass
class RecordingPredictor:
    """NOT the EGMF model: answers uniformly ("neutral", equal probabilities) and records every predict_uncommitted()
    call, so the test can check the inputs the analyzer prepared. Conversations are plain lists of turns."""

    version: str = "recording-stand-in"
    calls: list[dict[str, Any]] = field(default_factory=list)

    def new_conversation(self) -> list:
        return []

    def predict_uncommitted(self, conv, *, text, speaker, audio_features=None, visual_features=None,
                            visual_valid=None, language="en"):
        self.calls.append(dict(conv=conv, text=text, speaker=speaker, audio_features=audio_features,
                               visual_features=visual_features, visual_valid=visual_valid, language=language))
        pred = Prediction("neutral", {lab: 1 / 7 for lab in EMOTION_LABELS}, 0.0, "neutral", [1 / 3] * 3,
                          {"audio": audio_features is not None, "video": visual_features is not None,
                           "text": bool(text)})
        return pred, ((speaker, text), len(conv))

    def commit(self, conv, pending) -> bool:
        turn, n = pending
        if len(conv) != n:
            return False
        conv.append(turn)
        return True


@pytest.fixture(scope="module")
def frontend():
    audio = pytest.importorskip("egmf_core.features.audio")
    try:
        return audio.WhisperFrontend()
    except (RuntimeError, OSError) as e:
        pytest.skip(f"speech model unavailable: {e}")


@needs_espeak
def test_whisper_frontend_in_the_stream(tmp_path, frontend):
    path, turns = espeak_conversation(tmp_path)
    pred = RecordingPredictor()
    an = EGMFUtteranceAnalyzer(predictor=pred, frontend=frontend)
    sa = StreamAnalyzer(an, StreamConfig(stereo_speakers=True, emit_speech_started=False))
    events = list(sa.run(AVFileSource(path, stereo=True)))
    utts = [e for e in events if isinstance(e, UtteranceEvent)]
    assert len(utts) == len(turns)
    assert all(u.model_version == "recording-stand-in" and u.language == "en" for u in utts)
    wers = [word_error_rate(t.text, u.text) for t, u in zip(turns, utts)]
    total_wer = sum(w * len(t.text.split()) for w, t in zip(wers, turns)) / sum(len(t.text.split()) for t in turns)
    print(f"\nWER of the transcripts against the script: {total_wer:.1%} "
          f"(per turn: {', '.join(f'{w:.0%}' for w in wers)})")
    for t, u in zip(turns, utts):
        print(f"  {u.speaker}: {u.text!r}  (script: {t.text!r})")
    assert total_wer <= 0.15
    # the inputs the predictor got: one conversation for the stream, both speakers, (T, 384) features, no video for a
    # wav
    assert len({id(c["conv"]) for c in pred.calls}) == 1
    assert [c["speaker"] for c in pred.calls] == [u.speaker for u in utts]
    for c, u in zip(pred.calls, utts, strict=True):
        feats = c["audio_features"]
        assert feats.dtype == np.float32 and feats.ndim == 2 and feats.shape[1] == 384
        assert c["visual_features"] is None and c["visual_valid"] is None
        assert c["text"] == u.text and c["language"] == "en"
    # the features cover the speech framed by a second of room tone on each side
    # (egmf_core.features.live_cut.utterance_audio)
    frame = an.config.frame_s
    durations = [len(c["audio_features"]) / 50.0 for c in pred.calls]
    for d, u in zip(durations, utts):
        assert u.end - u.start + 2 * frame - 0.01 <= d <= u.end - u.start + 2 * frame + 0.1
    print(f"  latency per utterance (ASR, file read at full speed): "
          f"{', '.join(f'{u.latency_ms:.0f}' for u in utts)} ms")


@needs_talking_heads
def test_face_features_reach_the_predictor(frontend):
    pytest.importorskip("mediapipe")
    pred = RecordingPredictor()
    an = EGMFUtteranceAnalyzer(predictor=pred, frontend=frontend)
    if an.face.get() is None:
        pytest.skip("face model unavailable")
    events = list(StreamAnalyzer(an, StreamConfig(emit_speech_started=False))
                  .run(AVFileSource(TALKING_HEADS / "1.mp4")))
    utts = [e for e in events if isinstance(e, UtteranceEvent)]
    assert utts and all(u.modalities.video for u in utts)
    for c in pred.calls:
        vf, valid = c["visual_features"], c["visual_valid"]
        assert vf.shape[1] == 58 and vf.shape[0] == valid.shape[0] and valid.dtype == bool and valid.any()
    print(f"\n{TALKING_HEADS.name}/1.mp4: {[u.text for u in utts]}")


def test_analyzer_without_video_never_loads_the_face_model(frontend):
    an = EGMFUtteranceAnalyzer(EGMFAnalyzerConfig(use_video=False), predictor=RecordingPredictor(), frontend=frontend)
    assert an.face.get() is None


@pytest.fixture(scope="module")
def real_analyzer():
    """The shipped checkpoint behind the real recognizer, both loaded by the analyzer as the CLI does: nothing stood
    in, and the recognizer normalizes loudness as the checkpoint was trained."""
    return EGMFUtteranceAnalyzer(EGMFAnalyzerConfig(checkpoint="default"))


def test_a_recognizer_that_normalizes_otherwise_is_refused(real_analyzer, frontend):
    """The checkpoint's loudness target reaches the recognizer the analyzer builds; one built otherwise is refused
    rather than feeding the model audio at a level it never learned."""
    from streaming.analyzer import ModelUnavailableError

    target = real_analyzer.predictor.audio_loudness_lufs
    assert target is not None and real_analyzer.frontend.config.loudness_lufs == target
    assert frontend.config.loudness_lufs is None
    with pytest.raises(ModelUnavailableError, match="normalizes audio to None LUFS"):
        EGMFUtteranceAnalyzer(EGMFAnalyzerConfig(), predictor=real_analyzer.predictor, frontend=frontend)


def test_what_the_analyzer_loaded_is_frozen_for_the_garbage_collector(real_analyzer):
    """The warm-ups freeze what was loaded (`egmf_core.serving.freeze_loaded_heap`): a full collection then scans
    what was made since, not the models' ~400k objects. Unfrozen, each full pass took ~230 ms on a 2-core EPYC and
    stalled the third utterance of every stream in the latency benchmark."""
    import gc

    frozen = gc.get_freeze_count()
    assert frozen > 100_000
    assert len(gc.get_objects()) < frozen / 4  # what the collector still scans


@needs_espeak
def test_end_to_end_with_the_real_predictor(tmp_path, real_analyzer):
    from egmf_core.predictor import EGMFPredictor

    an = real_analyzer
    assert isinstance(an.predictor, EGMFPredictor) and isinstance(an, SpeculativeAnalyzer)
    path, turns = espeak_conversation(tmp_path)
    events = list(StreamAnalyzer(an, StreamConfig(stereo_speakers=True)).run(AVFileSource(path, stereo=True)))
    utts = [e for e in events if isinstance(e, UtteranceEvent)]
    assert len(utts) == len(turns)
    for u in utts:
        # espeak-ng voices are unlike the voices the audio was learned from: answered from the words, and the event
        # says the audio was not used (egmf_core.audio_prior.AudioPrior.familiar; tests/test_audio_prior.py)
        assert u.modalities.text and not u.modalities.audio and not u.modalities.video
        assert math.isclose(sum(u.emotion.probs.values()), 1.0, abs_tol=1e-3)
        assert len(u.gate_alpha) == 3 and u.model_version


@needs_ravdess
def test_speculative_end_of_utterance_gives_the_same_events(real_analyzer):
    """Three utterances (the second with a 250 ms pause inside, a tentative end that speech withdraws) pushed in
    30 ms blocks, once analyzed after each end and once speculatively during the hangover: the same events, each
    speculative result used once, the withdrawn one discarded, and the conversation the same afterwards."""
    clips = ravdess_clips(3)
    x = np.concatenate([join_with_silence([clips[0]])[0], with_inner_pause(clips[1]), join_with_silence([clips[2]])[0]])

    def run(speculative: bool):
        sa = StreamAnalyzer(real_analyzer, StreamConfig(emit_speech_started=False, speculative=speculative))
        events = []
        for i in range(0, len(x), 480):
            events += sa.process(AudioChunk(i / SR, x[i:i + 480]))
        events += sa.finish()
        utts = [e for e in events if isinstance(e, UtteranceEvent)]
        print(f"speculative={speculative}: {sa.speculation}")
        return utts, sa.speculation, [t.text for t in sa.conversation.window.turns]

    plain, counts_plain, context_plain = run(False)
    spec, counts, context = run(True)
    assert len(plain) == 3 and counts_plain == {"started": 0, "used": 0, "discarded": 0}
    assert counts["used"] == 3 and counts["discarded"] >= 1
    assert counts["started"] == counts["used"] + counts["discarded"]
    assert context == context_plain
    # The two runs' prompt passes split differently between a kept context cache and the pass itself: fp32 gives
    # the same numbers within float rounding; bf16 projections (the CLI's default on CPUs where native bf16 is faster) round
    # each projection's output to 8 bits of mantissa, so probabilities may move by a few thousandths.
    tol = 1e-6 if real_analyzer.predictor.llm_precision == "fp32" else 0.01
    for a, b in zip(plain, spec, strict=True):
        assert (a.utterance_id, a.start, a.end, a.text, a.emotion.label, a.sentiment.label) == \
            (b.utterance_id, b.start, b.end, b.text, b.emotion.label, b.sentiment.label)
        assert b.emotion.probs == pytest.approx(a.emotion.probs, abs=tol)
        assert b.sentiment.score == pytest.approx(a.sentiment.score, abs=tol)
