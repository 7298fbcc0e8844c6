"""What the audio features alone can do on RAVDESS, and what per-speaker normalization would and would not buy.

    python benchmarks/bench_audio_probe.py     # writes benchmarks/results/audio_probe.{json,md}

A logistic-regression probe on mean+std pooled Whisper encoder states (the same summary the fusion stack's
audio-statistics block reads; clip view, the features the shipped checkpoint was trained on) is the reference for
the audio branch: the model must at least match a linear probe on its own features. Two questions:

1. Which reference is fair: the probe trained on the model's training actors (01-10, regularization chosen on the
   dev actors 11-12), and the same probe refit on 01-12, as a probe without model selection can be.
2. How much of the cross-speaker gap is the speaker: every test clip's frames are mapped from its speaker's
   statistics onto the training population's, `(h - mu_spk) / sd_spk * sd_pop + mu_pop`, with the speaker's
   statistics taken from a *history* of other clips of the same speaker (never the clip itself), shrunk towards the
   population by `n0` pseudo-clips. Live, the history would be the caller's earlier utterances. The histories:
   random clips of the speaker (every RAVDESS actor acts every emotion equally often, which favours normalization),
   and the skewed histories of real calls: only neutral/calm clips, only clips of one other emotion, only clips of
   the utterance's own emotion (a caller angry the whole call). The probe stays trained on raw features, as the
   shipped model is, so the table says whether normalizing at inference alone would help it.

No test clip, label or statistic chooses anything: C is chosen on dev; n0 is reported on a fixed grid.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench_support import write_report_files  # noqa: E402  (benchmarks/ is the script's folder)

C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)
N0_GRID = (0, 2)
HISTORY_SIZES = (1, 2, 4, 8)
RANDOM_DRAWS = 5


@dataclass
class Split:
    states: list[np.ndarray]  # per clip (T, 384) encoder states
    labels: np.ndarray  # RAVDESS's own 8 emotions
    speakers: np.ndarray


def load_split(split: str, limit: int | None) -> Split:
    from egmf_core.data import load_dataset
    from egmf_core.research.feature_lookup import whisper_audio_lookup

    lookup = whisper_audio_lookup("clip")
    records = list(load_dataset("ravdess", split))[:limit]
    states = [np.asarray(lookup(r), dtype=np.float64) for r in records]
    return Split(states, np.array([r.emotion_original for r in records]), np.array([r.speaker for r in records]))


def pooled(states: Sequence[np.ndarray]) -> np.ndarray:
    """Mean and standard deviation over frames, per clip: (N, 2 * 384)."""
    return np.stack([np.concatenate([s.mean(0), s.std(0)]) for s in states])


@dataclass(frozen=True)
class Population:
    """Frame statistics of the training speakers, the target of the mapping."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def of(cls, states: Sequence[np.ndarray]) -> "Population":
        frames = np.concatenate(states)
        return cls(frames.mean(0), frames.std(0))


def speaker_mapped(clip: np.ndarray, history: Sequence[np.ndarray], pop: Population, n0: float) -> np.ndarray:
    """`clip`'s frames mapped from its speaker's statistics onto the population's. The speaker's frame mean and
    second moment are the history clips' (each clip weighs its frames equally), shrunk towards the population's by
    `n0` pseudo-clips; an empty history (with n0 > 0) leaves the clip unchanged."""
    n = len(history)
    if n + n0 == 0:
        raise ValueError("an empty history needs n0 > 0")
    m1 = (sum(h.mean(0) for h in history) + n0 * pop.mean) / (n + n0)
    m2 = (sum((h**2).mean(0) for h in history) + n0 * (pop.std**2 + pop.mean**2)) / (n + n0)
    sd = np.sqrt(np.maximum(m2 - m1**2, 1e-12))
    return (clip - m1) / sd * pop.std + pop.mean


@dataclass(frozen=True)
class History:
    """One way of choosing a speaker's history: `pick(i, others)` returns the history of clip i among the other clips
    of its speaker; `scores(i)` says whether the row scores clip i at all (a one-emotion history leaves out the clips
    of that emotion); random histories are averaged over `draws`."""

    pick: Callable[[int, list[int]], list[int]]
    scores: Callable[[int], bool] = lambda i: True
    draws: int = 1


def history_rows(split: Split, rng: np.random.Generator) -> dict[str, list[History]]:
    """Row name -> the histories whose accuracies the row averages."""
    y = split.labels

    def random_k(k: int) -> History:
        return History(lambda i, c: list(rng.choice(c, size=min(k, len(c)), replace=False)), draws=RANDOM_DRAWS)

    def only(emotions: set[str]) -> History:
        return History(lambda i, c: [j for j in c if y[j] in emotions], scores=lambda i: y[i] not in emotions)

    rows: dict[str, list[History]] = {"all other clips of the speaker (balanced emotions)": [History(lambda i, c: c)]}
    rows.update({f"{k} random other clips": [random_k(k)] for k in HISTORY_SIZES})
    rows["neutral/calm clips only (other clips)"] = [only({"neutral", "calm"})]
    rows["clips of one other emotion (mean over emotions)"] = [only({e}) for e in sorted(set(y))]
    rows["clips of the utterance's own emotion"] = [History(lambda i, c: [j for j in c if y[j] == y[i]])]
    return rows


def map_split(split: Split, pop: Population, history: History, n0: float) -> tuple[list[int], list[np.ndarray]] | None:
    """The clips `history` scores (indices) and their frames mapped with their histories; None if one of them has an
    empty history and n0 = 0 (nothing to normalize by)."""
    kept, mapped = [], []
    for i, clip in enumerate(split.states):
        if not history.scores(i):
            continue
        others = [j for j in range(len(split.states)) if split.speakers[j] == split.speakers[i] and j != i]
        chosen = history.pick(i, others)
        if not chosen and n0 == 0:
            return None
        kept.append(i)
        mapped.append(speaker_mapped(clip, [split.states[j] for j in chosen], pop, n0))
    return kept, mapped


def mapped_accuracy(clf, split: Split, pop: Population, history: History, n0: float) -> float | None:
    """Accuracy (%) of `clf` on the clips `history` scores, each mapped with its history (None: see `map_split`)."""
    if (result := map_split(split, pop, history, n0)) is None:
        return None
    kept, mapped = result
    return 100.0 * clf.score(pooled(mapped), split.labels[kept])


def raw_accuracy(clf, split: Split, history: History) -> float:
    """Accuracy (%) of `clf` without normalization on the clips `history` scores: the row's own baseline."""
    kept = [i for i in range(len(split.states)) if history.scores(i)]
    return 100.0 * clf.score(pooled([split.states[i] for i in kept]), split.labels[kept])


def evaluate_histories(clf, split: Split, pop: Population,
                       rng: np.random.Generator) -> dict[str, dict[str, float | None]]:
    """Accuracy (%) of the raw-trained probe on speaker-mapped test clips, per history row and n0."""
    out: dict[str, dict[str, float | None]] = {}
    for name, histories in history_rows(split, rng).items():
        out[name] = {"same clips, not normalized": float(np.mean([raw_accuracy(clf, split, h) for h in histories]))}
        for n0 in N0_GRID:
            vals = [mapped_accuracy(clf, split, pop, h, n0) for h in histories for _ in range(h.draws)]
            out[name][f"n0={n0}"] = None if any(v is None for v in vals) else float(np.mean(vals))
    return out


MODEL_ROWS = ("all other clips of the speaker (balanced emotions)", "4 random other clips",
              "neutral/calm clips only (other clips)", "clips of the utterance's own emotion")
MODEL_N0 = 2


def model_rows(checkpoint: str, test: Split, pop: Population, rng: np.random.Generator, limit: int | None) -> dict:
    """A checkpoint (trained on raw features) scored on speaker-mapped test clips, without retraining: its LLM
    answers and its auxiliary head, per history of `MODEL_ROWS` (n0 = `MODEL_N0`, one draw of random histories),
    each next to the same clips unmapped."""
    import dataclasses

    from egmf_core.research.retrained_scoring import aux_predictions
    from egmf_core.checkpoint import load_checkpoint
    from egmf_core.research.eval_examples import dataset_examples
    from egmf_core.research.evaluate import predict_examples

    model = load_checkpoint(checkpoint)
    examples = dataset_examples(model, "ravdess", "test", limit)
    if [e.input.audio.shape for e in examples] != [s.shape for s in test.states]:
        raise RuntimeError("the test examples are not the probe's clips")

    def scores(exs: list) -> tuple[np.ndarray, np.ndarray]:
        """Per clip: the LLM's answer is right; the auxiliary head's is."""
        llm = [p.emotion == e.input.emotion for p, e in zip(predict_examples(model, exs), exs)]
        aux_labels, _, _ = aux_predictions(model, exs)
        return np.array(llm), np.array([a == e.input.emotion for a, e in zip(aux_labels, exs)])

    raw_llm, raw_aux = scores(examples)
    rows = history_rows(test, rng)
    out = {}
    for name in MODEL_ROWS:
        kept, states = map_split(test, pop, rows[name][0], MODEL_N0)
        llm, aux = scores([dataclasses.replace(examples[i],
                                               input=dataclasses.replace(examples[i].input, audio=a.astype(np.float32)))
                           for i, a in zip(kept, states)])
        out[name] = {"n": len(kept), "llm_raw": 100.0 * raw_llm[kept].mean(), "llm_mapped": 100.0 * llm.mean(),
                     "aux_raw": 100.0 * raw_aux[kept].mean(), "aux_mapped": 100.0 * aux.mean()}
    return out


def run(limit: int | None, seed: int = 0, checkpoint: str | None = None) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, dev, test = (load_split(s, limit) for s in ("train", "dev", "test"))
    probe = lambda C: make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))  # noqa: E731
    x_train, x_dev, x_test = pooled(train.states), pooled(dev.states), pooled(test.states)
    by_c = {}
    for C in C_GRID:
        clf = probe(C).fit(x_train, train.labels)
        by_c[C] = {"dev": 100.0 * clf.score(x_dev, dev.labels), "test": 100.0 * clf.score(x_test, test.labels)}
    best_c = max(C_GRID, key=lambda C: (by_c[C]["dev"], -C))
    clf = probe(best_c).fit(x_train, train.labels)
    refit = probe(best_c).fit(np.concatenate([x_train, x_dev]), np.concatenate([train.labels, dev.labels]))
    pop = Population.of(train.states)
    return {
        "data": f"RAVDESS train (actors 01-10) {len(train.states)} clips, dev (11-12) {len(dev.states)}, "
                f"test (13-16) {len(test.states)}; whisper tiny.en states, clip view",
        "probe": "StandardScaler + LogisticRegression on mean+std pooled encoder states",
        "by_C": {str(c): v for c, v in by_c.items()},
        "C": best_c,
        "train_01_10": by_c[best_c],
        "refit_01_12_test": 100.0 * refit.score(x_test, test.labels),
        "speaker_mapped_test": evaluate_histories(clf, test, pop, np.random.default_rng(seed)),
        "random_draws": RANDOM_DRAWS,
        "checkpoint": checkpoint,
        "model_n0": MODEL_N0,
        "model_speaker_mapped_test": model_rows(checkpoint, test, pop, np.random.default_rng(seed), limit)
        if checkpoint else None,
    }


def render(res: dict) -> str:
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [
        "# RAVDESS audio probe and per-speaker normalization",
        "",
        f"Data: {res['data']}. Probe: {res['probe']}; C = {res['C']} chosen on dev (grid "
        f"{', '.join(res['by_C'])}).",
        "",
        "| probe | dev acc8 | test acc8 |",
        "|---|---|---|",
        f"| trained on actors 01-10 (the model's training actors) | {fmt(res['train_01_10']['dev'])} | "
        f"{fmt(res['train_01_10']['test'])} |",
        f"| refit on actors 01-12 (no dev left) | - | {fmt(res['refit_01_12_test'])} |",
        "",
        "Test accuracy of the probe trained on 01-10 (raw features), with every test clip mapped onto the training "
        "population's statistics from a history of other clips of its speaker; n0 = pseudo-clips of population "
        f"statistics mixed in (random histories: mean of {res['random_draws']} draws; n/a: some clip has no such "
        "history and n0 = 0 leaves nothing to normalize by). A row with a one-emotion history scores only the clips of "
        "other emotions; its first column is the same clips without normalization:",
        "",
        "| speaker history | " + " | ".join(next(iter(res["speaker_mapped_test"].values()))) + " |",
        "|---|" + "---|" * len(next(iter(res["speaker_mapped_test"].values()))),
    ]
    for name, row in res["speaker_mapped_test"].items():
        lines.append(f"| {name} | " + " | ".join(fmt(v) for v in row.values()) + " |")
    if res["model_speaker_mapped_test"]:
        lines += [
            "",
            f"The checkpoint `{res['checkpoint']}` (trained on raw features, not retrained) on the same mapped test "
            "clips "
            f"(n0 = {res['model_n0']}, one draw of random histories): 8-class accuracy of its LLM answers and of its "
            "auxiliary emotion head, each next to the same clips unmapped:",
            "",
            "| speaker history | clips | LLM answers, unmapped | LLM answers, mapped | aux head, unmapped | "
            "aux head, mapped |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in res["model_speaker_mapped_test"].items():
            lines.append(f"| {name} | {r['n']} | {fmt(r['llm_raw'])} | {fmt(r['llm_mapped'])} | {fmt(r['aux_raw'])} | "
                         f"{fmt(r['aux_mapped'])} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=None, help="first N clips of each split (a quick look)")
    ap.add_argument("--seed", type=int, default=0, help="random histories")
    ap.add_argument("--checkpoint", default="default",
                    help="also score this checkpoint on speaker-mapped clips ('none': the probe only)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "audio_probe"),
                    help="output path without suffix: .json and .md are written")
    args = ap.parse_args(argv)
    res = run(args.limit, args.seed, None if args.checkpoint == "none" else args.checkpoint)
    write_report_files(Path(args.out), res, render, indent=1, json_end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
