"""The streaming latency benchmark (``benchmarks/bench_streaming_latency.py``, its parts in ``benchmarks/latency/``)
on a 3-utterance conversation: its
report has the fields the README quotes, every utterance gets exactly one event, the first and last utterance are
the same recording with a growing context, and the stage timings are there. No timing thresholds: the latency and
real-time targets are judged (and reported as met / not met) by the benchmark itself."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys

import pytest

from egmf_core.research.metrics import word_error_rate
from test_streaming_support import REPO, needs_ravdess

sys.path.insert(0, str(REPO / "benchmarks"))
from latency.measure import analysis_intervals  # noqa: E402
from latency.report import write_report  # noqa: E402
from latency.run import run_benchmark  # noqa: E402
from latency.variants import precision_label, side_by_side  # noqa: E402

pytestmark = [pytest.mark.slow, needs_ravdess,
              pytest.mark.skipif(not shutil.which("espeak-ng"), reason="espeak-ng missing")]

STAGES = {"asr_encoder", "asr_decode", "predict", "fusion", "llm_prefill", "llm_answer"}


def _command():
    """The command (``main``) as a module: the script is not on the import path under its own name."""
    spec = importlib.util.spec_from_file_location("bench_streaming_latency",
                                                  REPO / "benchmarks" / "bench_streaming_latency.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_three_utterance_report(tmp_path):
    from streaming.analyzer import ModelUnavailableError

    try:
        res = run_benchmark(3, n_ravdess=2, n_espeak=2, offline_reps=1, say=lambda *a: None)
    except ModelUnavailableError as e:
        pytest.skip(f"model unavailable: {e}")
    jpath, mpath = write_report(res, tmp_path, "streaming_latency")
    assert json.loads(jpath.read_text()) == json.loads(json.dumps(res))

    c = res["counts"]
    assert (c["utterance_events"], c["references"], c["unmatched_references"], c["extra_events"], c["errors"]) == \
        (3, 3, 0, 0, [])
    # the CLI's live default: speculative end of utterance, each result used at most once per utterance
    sp = res["speculation"]
    assert res["speculative"] and 1 <= sp["used"] <= 3 and sp["started"] == sp["used"] + sp["discarded"]
    an = res["analyses"]  # every analysis the pipeline ran, discarded speculations included: one at a time
    assert an["n"] >= 3 and an["overlapping"] == 0 and an["cancelled"] <= sp["discarded"]
    assert "Speculative end of utterance" in mpath.read_text()
    # the side-by-side pooling (`--speculation both`), here over this run and the same rows labelled "off"
    sbs = side_by_side([dict(res, speculative=False), res])
    assert sbs["order"] == ["off", "on"] and sbs["on"]["latency_ms"]["n"] == sbs["off"]["latency_ms"]["n"] == 3
    assert sbs["ratio"] == {"of": "on / off", "p50": 1.0, "p95": 1.0}
    # pooled by checkpoint instead (`--checkpoint A B`): the label is the run's
    by_ckpt = side_by_side([dict(res, label="a"), dict(res, label="b"), dict(res, label="b")],
                                 label=lambda r: r["label"])
    assert by_ckpt["labels"] == ["a", "b"] and by_ckpt["b"]["latency_ms"]["n"] == 6
    assert by_ckpt["a"]["prompt_pass_tokens"]["n"] == 3 and by_ckpt["ratio"]["of"] == "b / a"
    asr = sorted(r["stages_ms"]["asr_encoder"] + r["stages_ms"]["asr_decode"] for r in res["utterances"])
    assert sbs["on"]["asr_ms"]["p50"] == pytest.approx(asr[1], abs=0.051)
    assert "ASR p50 / p95" in _report(res, sbs, tmp_path)
    waits = sorted(r["latency_ms"] - r["analyze_ms"] for r in res["utterances"])
    assert sbs["on"]["wait_ms"]["p50"] == pytest.approx(waits[1], abs=0.051)
    rows = res["utterances"]
    assert [r["index"] for r in rows] == [1, 2, 3]
    assert all(r["events_for_this_utterance"] == 1 for r in rows)
    assert sum(r["speculative"] for r in rows) == sp["used"]
    # the conversation: utterance 3 repeats utterance 1's recording, with two turns of context instead of none
    assert rows[0]["piece"] == rows[2]["piece"] and rows[0]["piece"] != rows[1]["piece"]
    assert [r["context_turns"] for r in rows] == [0, 1, 2]
    assert rows[0]["prompt_tokens"] < rows[2]["prompt_tokens"]
    assert {r["source"] for r in rows} == {"ravdess", "espeak-ng"}
    for r in rows:
        assert r["text"] and STAGES <= set(r["stages_ms"]), r
        assert r["latency_ms"] > 0 and r["analyze_ms"] > 0 and r["rtf"] > 0
        assert r["llm_prefill_ms_per_token"] > 0
        # the prompt pass carried three likeliest labels' answer trees (aux head + prior) (7-9 nodes each); a separate
        # answer pass fed the answer's tree only when those were not it
        assert 21 <= r["folded_tokens"] <= 26 and r["answer_tokens"] >= 0
        assert (r["llm_answer_ms_per_token"] is None) == (r["answer_tokens"] == 0)
        # the shipped checkpoint's template prefix comes from the KV cache: the pass encodes the rest
        assert 0 < r["prompt_pass_tokens"] < r["prompt_tokens"]
        # the VAD found the reference utterance (frame-exact boundaries within 150 ms of the energy reference)
        assert abs(r["vad_start_s"] - r["ref_start_s"]) < 0.15 and abs(r["vad_end_s"] - r["ref_end_s"]) < 0.15

    for key in ("p50", "p95", "max"):
        assert res["latency_ms"][key] > 0 and res["event_latency_ms"][key] > 0
    assert res["latency_ms"]["utterances_up_to_8s"] == 3
    assert res["rtf"]["overall"] > 0 and res["rtf"]["p95"] >= res["rtf"]["p50"]
    assert res["lengths_s"]["n"] == 3 and sum(res["lengths_s"]["histogram"]) == 3
    assert STAGES <= set(res["stages_ms"]) and res["vad"]["segmenter_ms_total"] > 0
    assert isinstance(res["targets"]["p95_latency_met"], bool) and isinstance(res["targets"]["rtf_met"], bool)
    m = res["machine"]
    assert m["cpu"] and len(m["load_average_before"]) == 3 and len(m["load_average_after"]) == 3
    assert "other_processes_cores" in m and isinstance(m["shared"], bool)
    ctx = res["context"]
    assert ctx["same_audio_first_and_last"]
    # the same recording, segmented at another stream offset: the recognizer may word it slightly differently
    assert word_error_rate(rows[0]["text"], rows[2]["text"]) <= 0.2, (rows[0]["text"], rows[2]["text"])
    assert ctx["utterance_last"] == 3 and ctx["predict_ms_first"] > 0 and ctx["predict_ms_last"] > 0
    off = ctx["offline"]
    assert off["empty"]["prompt_tokens"] < off["stream"]["prompt_tokens"]
    assert off["empty"]["answer_tokens"] >= 0 and off["stream"]["answer_tokens"] >= 0
    md = mpath.read_text()
    assert "end of speech -> event" in md and ("**met**" in md or "**not met**" in md)
    # the number format the LLM's projections ran in (the configuration's default, auto: as the CPU allows)
    assert res["llm_precision"] in {"fp32", "bf16"} and res["llm_precision_requested"] == "auto"
    assert f"LLM projections in {res['llm_precision']}" in md
    # pooled by precision (`--llm-precision fp32 auto`): the runs' formats are in the rows and the table
    by_prec = side_by_side([dict(res, label="llm fp32", llm_precision="fp32"),
                            dict(res, label="llm auto (bf16)", llm_precision="bf16")], label=lambda r: r["label"])
    assert [c["llm_precision"] for c in by_prec["runs"]] == ["fp32", "bf16"]
    assert by_prec["llm fp32"]["llm_precision"] == ["fp32"]
    assert "`llm P`" in _report(res, by_prec, tmp_path)


def _report(res, sbs, tmp_path) -> str:
    _, mpath = write_report(dict(res, side_by_side=sbs), tmp_path / "sbs", "streaming_latency")
    return mpath.read_text()


@pytest.mark.parametrize("argv", [["--asr-threads", "1", "2", "--folded-answers", "0", "2"],
                                  ["--asr-threads", "1", "2", "--speculation", "both"], ["--asr-threads", "0"]])
def test_one_comparison_at_a_time_and_valid_thread_counts(argv, capsys):
    """Mixed comparisons and thread counts below 1 are refused before any model loads, naming the options."""
    with pytest.raises(SystemExit) as e:
        _command().main(argv)
    assert e.value.code == 2 and "--asr-threads" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--llm-precision", "fp32", "auto", "--asr-threads", "1", "2"],
                                  ["--llm-precision", "fp32", "bf16", "--speculation", "both"],
                                  ["--llm-precision", "fp16"]])
def test_llm_precision_is_one_comparison_and_a_known_format(argv, capsys):
    """--llm-precision takes egmf_core.precision's names and, listed, is one comparison like --asr-threads."""
    with pytest.raises(SystemExit) as e:
        _command().main(argv)
    assert e.value.code == 2 and "--llm-precision" in capsys.readouterr().err


def test_precision_labels_name_what_auto_resolved_to():
    assert precision_label("fp32", "fp32") == "llm fp32"
    assert precision_label("auto", "bf16") == "llm auto (bf16)"
    assert precision_label(None, "fp32") == "llm fp32"


def test_analysis_intervals_counts_overlaps_and_cancellations():
    one_at_a_time = [(0.0, 1.0, True), (1.0, 1.2, False), (1.5, 2.0, True)]
    assert analysis_intervals(one_at_a_time) == {"n": 3, "overlapping": 0, "cancelled": 1, "cancelled_ms_p50": 200.0}
    # a cancelled speculation still running when the next analysis starts: both count as overlapping
    assert analysis_intervals([(0.0, 1.0, False), (0.9, 2.0, True), (3.0, 4.0, True)])["overlapping"] == 2
    assert analysis_intervals([])["cancelled_ms_p50"] is None
