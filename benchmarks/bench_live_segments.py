"""What the live cut does to the transcript and the answer: segmenter pre/post-roll and framing vs the whole clip.

    python benchmarks/bench_live_segments.py               # RAVDESS dev -> benchmarks/results/live_segments.{json,md}
    python benchmarks/bench_live_segments.py --split test  # -> live_segments_test.{json,md}
    python benchmarks/bench_live_segments.py --settings pre300/post120 pre1000/post60/frame1.0 --limit 40

Live, an utterance is what the VAD segmenter cuts: ``pre_roll_ms`` before the detected start to ``post_roll_ms``
after the last voiced frame. The analysis waits for that post-roll (the speculative end of utterance starts once it
is in), so every millisecond of it is a millisecond of latency; too little and word endings are lost. The shipped
checkpoint was trained on whole RAVDESS clips (about a second of room tone around the sentence), so a tight cut also
moves its audio input away from what it learned on; ``egmf_core.features.live_cut.utterance_audio`` frames the cut
with the line's room tone (``frameS``), as the CLI and the service do.

Each clip, framed by 0.5 s of faint noise, goes through :class:`egmf_core.features.segmenter.VADSegmenter` once per
setting, and each cut through the live recognizer (faster-whisper tiny.en, the live 10 s window) and the shipped
model with the recognizer's transcript, as ``python -m streaming`` does; ``clip`` is the whole clip through the same
path.
Reported per setting: word error rate against the known sentence, 8-class accuracy, agreement of the answers with
the first setting, how many clips gave more than one segment (their segments are joined here) or none (no event
live: counted wrong, every word missed), and the median audio the cut kept after the VAD's end of speech.
Settings run interleaved clip by clip, so load from other processes hits them alike. Choose settings on dev (actors
11-12); the test actors only report the chosen one.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from bench_support import cpu_model, write_table_report  # noqa: E402  (benchmarks/ is the script's folder)

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "live_segments"
ACTORS = {"train": "actors 01-10", "dev": "actors 11-12", "test": "actors 13-16"}


@dataclass(frozen=True)
class Setting:
    """One way to cut a clip: the segmenter's pre-roll and post-roll, and the room tone framed around the speech
    (``egmf_core.features.live_cut.utterance_audio``: what the CLI and the service give the recognizer and the
    model)."""

    pre_roll_ms: int
    post_roll_ms: int
    frame_s: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> "Setting":
        """``pre300/post120`` (the cut alone) or ``pre1000/post60/frame1.0``."""
        m = re.fullmatch(r"pre(\d+)/post(\d+)(?:/frame([\d.]+))?", spec)
        if not m:
            raise argparse.ArgumentTypeError(f"setting {spec!r}: expected preMS/postMS[/frameS], e.g. pre300/post120")
        return cls(int(m[1]), int(m[2]), float(m[3] or 0.0))

    @property
    def name(self) -> str:
        return f"pre{self.pre_roll_ms}/post{self.post_roll_ms}" + (f"/frame{self.frame_s:g}" if self.frame_s else "")


def cut(audio: np.ndarray, setting: Setting, window_s: float) -> tuple[np.ndarray, int, float]:
    """What the live pipeline analyzes for one clip framed by faint noise (``egmf_core.features.live_cut.live_cut``):
    (audio, number of segments, audio the cut kept after the end of speech in ms)."""
    from egmf_core.features.live_cut import live_cut
    from egmf_core.features.segmenter import SegmenterConfig

    c = live_cut(audio, SegmenterConfig(pre_roll_ms=setting.pre_roll_ms, post_roll_ms=setting.post_roll_ms),
                 setting.frame_s, window_s)
    return c.audio, c.segments, c.tail_ms


def run(settings: list[Setting], limit: int | None, split: str = "dev") -> dict:
    import dataclasses

    import torch

    from egmf_core.data import load_dataset
    from egmf_core.research.eval_examples import dataset_examples
    from egmf_core.features.audio import load_audio
    from egmf_core.research.metrics import word_error_rate
    from streaming.analyzer import EGMFAnalyzerConfig, EGMFUtteranceAnalyzer

    torch.set_num_threads(2)
    analyzer = EGMFUtteranceAnalyzer(EGMFAnalyzerConfig(use_video=False))
    model = analyzer.predictor.model
    records = list(load_dataset("ravdess", split))[:limit]
    examples = dataset_examples(model, "ravdess", split, limit=limit, audio=lambda rec: None)
    if len(examples) != len(records):  # RAVDESS: one labelled example per clip, in record order
        raise RuntimeError(f"{len(records)} clips but {len(examples)} examples")
    by_name = {s.name: s for s in settings}
    names = list(by_name) + ["clip"]
    rows: dict[str, dict[str, list]] = {n: {"wer": [], "correct": [], "answer": [], "segments": [], "tail_ms": []}
                                       for n in names}
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with torch.no_grad():
        for i, (rec, ex) in enumerate(zip(records, examples)):
            audio = load_audio(rec.audio_path)
            for name in names:
                if name == "clip":
                    piece, n_segs, tail = audio, 1, float("nan")
                else:
                    piece, n_segs, tail = cut(audio, by_name[name], analyzer.config.asr_window_s)
                if n_segs:
                    asr = analyzer.frontend.process(piece)
                    turn = model.prompts.make_turn(ex.input.current.speaker, asr.text.strip())
                    x = dataclasses.replace(ex.input, current=turn, audio=asr.encoder_states)
                    answer, text = model.score([x])[0].emotion, asr.text
                else:  # the VAD heard no speech: live, no event at all (counted wrong, every word missed)
                    answer, text = None, ""
                r = rows[name]
                r["wer"].append(word_error_rate(rec.text, text))
                r["answer"].append(answer)
                r["correct"].append(answer == ex.input.emotion)
                r["segments"].append(n_segs)
                r["tail_ms"].append(tail)
            if (i + 1) % 20 == 0:
                print(f"  {i + 1}/{len(records)} clips ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    first = rows[names[0]]["answer"]
    table = {}
    for name in names:
        r = rows[name]
        table[name] = {
            "wer_mean": round(100 * float(np.mean(r["wer"])), 2),
            "accuracy8": round(100 * float(np.mean(r["correct"])), 2),
            f"agreement_with_{names[0]}": round(100 * float(np.mean([a == b for a, b in zip(r["answer"], first)])), 2),
            "clips_with_several_segments": int(sum(n > 1 for n in r["segments"])),
            "clips_with_no_segment": int(sum(n == 0 for n in r["segments"])),
            "tail_ms_p50": None if name == "clip" else round(float(np.nanmedian(r["tail_ms"])), 1),
        }
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores; load average {load_before:.2f} before, "
                   f"{os.getloadavg()[0]:.2f} after (1 min)",
        "model_version": analyzer.version,
        "data": f"RAVDESS {split} ({ACTORS[split]}), {len(records)} clips",
        "asr_window_s": analyzer.config.asr_window_s,
        "settings": table,
    }


def markdown(result: dict) -> str:
    settings = result["settings"]
    first = next(iter(settings))
    lines = [
        "# Live cuts: segmenter pre/post-roll and framing vs transcripts and answers",
        "",
        f"{result['date']}; {result['machine']}. Model `{result['model_version']}`; faster-whisper tiny.en, "
        f"{result['asr_window_s']:g} s window; the recognizer's transcript as the text. Data: {result['data']}, each "
        "clip framed by 0.5 s of line noise (50 dB under the clip's loudness: live cut v2) and cut by the live VAD "
        "segmenter (`clip` = the whole clip, uncut, through "
        "the same path).",
        "",
        f"| cut | audio after end of speech p50 (ms, before framing) | WER % | accuracy8 % | "
        f"agreement with {first} % | "
        "clips cut in several segments | clips with no segment |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in settings.items():
        tail = "-" if r["tail_ms_p50"] is None else f"{r['tail_ms_p50']:.0f}"
        lines.append(f"| {name} | {tail} | {r['wer_mean']:.2f} | {r['accuracy8']:.2f} | "
                     f"{r[f'agreement_with_{first}']:.2f} | {r['clips_with_several_segments']} | "
                     f"{r['clips_with_no_segment']} |")
    lines += ["", f"Command: `{result.get('command', 'python benchmarks/bench_live_segments.py')}`; numbers in the "
              "JSON file of the same name.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--settings", type=Setting.parse, nargs="+",
                    default=[Setting.parse(s) for s in ("pre300/post120", "pre1000/post60/frame1.0")],
                    help="cuts to compare, preMS/postMS[/frameS] (the first is the reference for agreement)")
    ap.add_argument("--split", choices=sorted(ACTORS), default="dev",
                    help="RAVDESS split (choose settings on dev; test only to report the chosen one)")
    ap.add_argument("--limit", type=int, default=None, help="first N clips of the split (default: all)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    result = run(args.settings, args.limit, args.split)
    if args.out == DEFAULT_OUT and args.split != "dev":
        args.out = args.out.with_name(f"{args.out.name}_{args.split}")
    write_table_report(args.out, result, markdown, "bench_live_segments.py", argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
