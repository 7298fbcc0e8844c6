"""Per-stream speaker normalization of the voice prior: `python benchmarks/bench_speaker_baseline.py`.

Issue 25 asks whether normalizing the voice features per stream helps speaker independence. On a live line one
stream is (mostly) one speaker, so the prior could read an utterance's voice statistics relative to that speaker's
earlier utterances instead of relative to the ten training actors. This benchmark measures what that gains and what
it costs, the way the prior's regularization is chosen (leave-two-actors-out cross-validation over RAVDESS actors
01-12 on live cuts, trained on clean + channel-degraded copies; the test actors 13-16 are never read):

- ``none``: the prior's input as shipped in spirit (mean + std of the Whisper states over the speech,
  `bench_voice_features.speech_statistics`), no normalization;
- ``speaker (all clips)``: each actor centred by the mean of all of its clips: an upper bound no live stream has
  (it sees the future, and RAVDESS's clips are balanced over the emotions);
- ``stream``: each utterance centred by the mean of ``HISTORY`` earlier utterances of the same speaker, shrunk toward
  the training population by ``PSEUDO_COUNT`` pseudo-utterances (MAP-style), as a live stream could compute it. The
  classifier is trained on baselines from histories of the same construction, drawn from every emotion or, for a
  share of the rows (``calm-only share``), from the speaker's neutral and calm clips only.

The catch is that the baseline is made of speech whose emotion is the thing being predicted: a call is mostly calm,
and a caller may be angry for minutes. So the held-out actors are scored under histories drawn from every emotion,
from neutral + calm only (an ordinary call), from one emotion only (angry, sad, happy), and from nothing (the
population mean); with accuracy (8 classes) goes the false-alarm rate: neutral and calm clips given another label.
Results: ``--out`` (.json + .md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from bench_support import write_table_report  # noqa: E402  (benchmarks/ is on the path above)
from bench_voice_features import features, standardized_logistic  # noqa: E402

#: Earlier utterances of the speaker that make a baseline, and the population pseudo-count it is shrunk with.
HISTORY = 10
PSEUDO_COUNT = 3.0
C = 0.01  # the best of bench_voice_features' grid for the normalized rows (0.01 and 0.03 within 0.2 points)
CALM = ("neutral", "calm")
#: History scenarios the held-out actors are scored under: None = any emotion, () = no history at all.
SCENARIOS: dict[str, tuple[str, ...] | None] = {
    "any emotion": None, "neutral + calm": CALM, "angry": ("angry",), "sad": ("sad",), "happy": ("happy",),
    "no history": (),
}
BLOCK = "whisper-speech"


def stream_centred(x: np.ndarray, actors: np.ndarray, labels: np.ndarray, rows: np.ndarray, population: np.ndarray,
                   history_of, rng: np.random.Generator, history: int = HISTORY,
                   pseudo_count: float = PSEUDO_COUNT) -> np.ndarray:
    """(len(rows), dim): each row's features minus its speaker's baseline: the mean of up to `history` other rows of
    the same actor whose label is in ``history_of(row)`` (None: any label), shrunk toward `population` by
    `pseudo_count`. The row itself is never part of its own baseline."""
    out = np.empty((len(rows), x.shape[1]))
    for n, j in enumerate(rows):
        allowed = history_of(j)
        pool = np.flatnonzero((actors == actors[j]) & (np.arange(len(x)) != j)
                              & (np.ones(len(x), bool) if allowed is None else np.isin(labels, allowed)))
        h = rng.choice(pool, size=min(history, len(pool)), replace=False) if len(pool) else pool
        out[n] = x[j] - (x[h].sum(axis=0) + pseudo_count * population) / (len(h) + pseudo_count)
    return out


def speaker_centred(x: np.ndarray, actors: np.ndarray) -> np.ndarray:
    """Each actor's rows minus that actor's mean over all of its rows (the upper bound)."""
    out = np.empty_like(x, dtype=np.float64)
    for a in np.unique(actors):
        m = actors == a
        out[m] = x[m] - x[m].mean(axis=0)
    return out


def _scores(pred: np.ndarray, gold: np.ndarray) -> tuple[float, float]:
    calm = np.isin(gold, CALM)
    return float((pred == gold).mean() * 100), float((~np.isin(pred[calm], CALM)).mean() * 100)


def study(views: dict, calm_shares: tuple[float, ...], seed: int = 0) -> dict:
    """Per method (and calm-only share), per scenario: mean accuracy and false-alarm rate over the six folds."""
    actors = sorted(set(views["clean"]["actor"]))
    methods: dict[str, dict[str, list[tuple[float, float]]]] = {}
    test = views["clean"]
    tx, ta, ty = test[BLOCK].astype(np.float64), test["actor"], test["label"]
    train = [(v[BLOCK].astype(np.float64), v["actor"], v["label"]) for v in views.values()]
    for i in range(0, len(actors), 2):
        held = actors[i:i + 2]
        rows = [np.flatnonzero(~np.isin(a, held)) for _, a, _ in train]
        population = np.vstack([x[r] for (x, _, _), r in zip(train, rows)]).mean(axis=0)
        y = np.concatenate([lab[r] for (_, _, lab), r in zip(train, rows)])
        held_rows = np.flatnonzero(np.isin(ta, held))

        predict = standardized_logistic(np.vstack([x[r] for (x, _, _), r in zip(train, rows)]), y, C)
        methods.setdefault("none", {}).setdefault("-", []).append(_scores(predict(tx[held_rows]), ty[held_rows]))

        centred = np.vstack([speaker_centred(x, a)[r] for (x, a, _), r in zip(train, rows)])
        predict = standardized_logistic(centred, y, C)
        methods.setdefault("speaker (all clips)", {}).setdefault("-", []).append(
            _scores(predict(speaker_centred(tx, ta)[held_rows]), ty[held_rows]))

        for share in calm_shares:
            # each share and fold its own draws, so that a row does not depend on which other shares ran
            rng = np.random.default_rng([seed, i, round(share * 1000)])
            draw = (lambda j, share=share, rng=rng: CALM if rng.random() < share else None)
            predict = standardized_logistic(np.vstack([stream_centred(x, a, lab, r, population, draw, rng)
                                      for (x, a, lab), r in zip(train, rows)]), y, C)
            name = f"stream, calm-only share {share:.0%}"
            for scenario, allowed in SCENARIOS.items():
                z = stream_centred(tx, ta, ty, held_rows, population, lambda j, allowed=allowed: allowed, rng)
                methods.setdefault(name, {}).setdefault(scenario, []).append(_scores(predict(z), ty[held_rows]))
        print(f"  fold {held}: done", file=sys.stderr, flush=True)
    return {m: {s: {"accuracy": float(np.mean([a for a, _ in v])), "false_alarms": float(np.mean([f for _, f in v])),
                    "folds": [round(a, 1) for a, _ in v]} for s, v in per.items()} for m, per in methods.items()}


def markdown(result: dict) -> str:
    scenarios = list(SCENARIOS)
    lines = ["# Per-stream speaker normalization of the voice prior (leave-two-actors-out CV, RAVDESS 01-12)", "",
             f"`{result['command']}`, {result['date']}. Live cuts, clean held-out actors; training pool clean + "
             f"{result['copies']} channel-degraded copies; logistic regression C = {C}; baselines from {HISTORY} "
             f"earlier utterances shrunk by {PSEUDO_COUNT:g} population pseudo-utterances. Cells: accuracy (8 "
             "classes) / false alarms (neutral + calm clips given another label), mean of six folds. Columns: what "
             "the held-out speaker's history was made of.", "",
             "| method | " + " | ".join(scenarios) + " |", "|---|" + "---|" * len(scenarios)]
    for name, per in result["methods"].items():
        cells = [per.get(s, per.get("-")) for s in scenarios]
        lines.append(f"| {name} | " + " | ".join(f"{c['accuracy']:.1f} / {c['false_alarms']:.0f} %" for c in cells)
                     + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--degraded-copies", type=int, default=2)
    ap.add_argument("--calm-shares", type=float, nargs="+", default=[0.0, 0.5, 0.8, 1.0],
                    help="shares of training baselines drawn from the speaker's neutral and calm clips only")
    ap.add_argument("--limit", type=int, default=None,
                    help="N clips of actors 01-12, spread over all of them (smoke runs)")
    ap.add_argument("--out", default="benchmarks/results/speaker_baseline")
    args = ap.parse_args(argv)
    views = features(args.degraded_copies, False, args.limit)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "copies": args.degraded_copies,
              "history": HISTORY, "pseudo_count": PSEUDO_COUNT, "c": C,
              "methods": study(views, tuple(args.calm_shares))}
    write_table_report(Path(args.out), result, markdown, "bench_speaker_baseline.py", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
