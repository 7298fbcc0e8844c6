"""Which utterance-level voice features generalize across speakers: `python benchmarks/bench_voice_features.py`.

Issue 25 asks what helps speaker independence. The shipped voice prior (`egmf_core.audio_prior`) is a logistic
regression on the mean and spread of an utterance's Whisper encoder states (the live cut, framed by a second of room
tone on each side). This benchmark scores candidate features the same way the prior's regularization is chosen, so
that a candidate is judged before any of the post-training chain is rerun:

- leave-two-actors-out cross-validation over RAVDESS actors 01-12 (six folds; the test actors 13-16 are never read),
  trained on each fold's other actors' live cuts, clean plus the channel-degraded copies training uses
  (`egmf_core.research.degrade.random_chain`), scored on the held-out actors' clean cuts and, trained without copy
  ``k``, on the held-out actors' copy ``k`` (a channel chain the classifier has not seen);
- candidates: ``whisper`` (what ships: mean + std over every frame), ``whisper-speech`` (mean + std over the frames
  inside the room-tone framing, the speech), ``dynamics`` (std of the frame-to-frame differences over the speech:
  how fast the states move), ``percentiles`` (10th and 90th percentile over the speech), ``egemaps`` (openSMILE's
  eGeMAPSv02 functionals, 88 prosodic and spectral descriptors of the cut, loudness-normalized as the encoder's
  input is) and their combinations. Every block but ``egemaps`` comes from the states the prior already reads, so
  it would cost no latency.

Two more questions about speakers: ``--training-actors K ...`` adds a learning curve (each fold trained on K of
its ten other actors, several random draws), and ``--pitch-semitones S ...`` adds each Whisper-state candidate
trained with pitch-shifted copies of the training actors as extra pseudo-speakers.

openSMILE (`pip install opensmile`) is needed for the ``egemaps`` candidates; it is not a dependency of the runtime.
Results: ``--out`` (.json + .md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from bench_support import write_table_report  # noqa: E402  (benchmarks/ is on the path above)

C_GRID = (0.01, 0.03, 0.1)
CANDIDATES = ("whisper", "whisper-speech", "whisper-speech+dynamics", "whisper-speech+percentiles", "egemaps",
              "whisper+egemaps", "whisper-speech+egemaps")
#: Frames dropped at each end for ``whisper-speech``: the cut's room-tone framing is 1 s (50 frames); 40 keeps the
#: onset and the tail the VAD's pre-roll and hangover leave inside it.
SPEECH_TRIM_FRAMES = 40


def speech_frames(states: np.ndarray) -> np.ndarray:
    """The frames inside the framing (all frames for cuts too short to trim)."""
    x = np.asarray(states, np.float64)
    return x[SPEECH_TRIM_FRAMES:-SPEECH_TRIM_FRAMES] if len(x) > 3 * SPEECH_TRIM_FRAMES else x


def speech_statistics(states: np.ndarray) -> np.ndarray:
    """Mean and std over the speech frames."""
    inner = speech_frames(states)
    return np.concatenate([inner.mean(axis=0), inner.std(axis=0)])


def speech_dynamics(states: np.ndarray) -> np.ndarray:
    """Std of the frame-to-frame differences over the speech frames."""
    return np.diff(speech_frames(states), axis=0).std(axis=0)


def speech_percentiles(states: np.ndarray) -> np.ndarray:
    """10th and 90th percentile of each dimension over the speech frames."""
    return np.percentile(speech_frames(states), [10, 90], axis=0).reshape(-1)


def egemaps_extractor() -> Callable[[np.ndarray], np.ndarray]:
    try:
        import opensmile
    except ImportError as exc:
        raise SystemExit("the egemaps candidates need openSMILE: pip install opensmile (or pass --candidates "
                         "whisper whisper-speech)") from exc
    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                            feature_level=opensmile.FeatureLevel.Functionals)
    return lambda audio: smile.process_signal(np.asarray(audio, np.float32), 16_000).to_numpy()[0].astype(np.float64)


def loudness_target() -> float | None:
    """The shipped model's input loudness normalization (LUFS), as its encoder states are computed."""
    from egmf_core.checkpoint import load_checkpoint

    return load_checkpoint("default").cfg.fusion.audio_loudness_lufs


def standardized_logistic(x: np.ndarray, y: np.ndarray, c: float) -> Callable[[np.ndarray], np.ndarray]:
    """A logistic regression (inverse regularization `c`) on the standardized training rows, as the voice prior is
    fitted; returns its predict function on raw rows."""
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    clf = LogisticRegression(C=c, max_iter=3000).fit((x - mean) / scale, y)
    return lambda z: clf.predict((z - mean) / scale)


def state_blocks(states: np.ndarray) -> dict[str, np.ndarray]:
    """Every candidate block read from an utterance's Whisper states."""
    from egmf_core.audio_prior import voice_statistics

    return {"whisper": voice_statistics(states), "whisper-speech": speech_statistics(states),
            "dynamics": speech_dynamics(states), "percentiles": speech_percentiles(states)}


def ravdess_dev_pool(limit: int | None) -> list:
    """The records of actors 01-12 (train + dev splits), or `limit` of them spread over every actor."""
    from egmf_core.data import load_dataset

    records = [r for split in ("train", "dev") for r in load_dataset("ravdess", split)]
    return records[::max(1, len(records) // limit)][:limit] if limit else records


def pitch_views(semitones: list[float], limit: int | None) -> dict[str, dict[str, np.ndarray]]:
    """Pseudo-speakers: every clip of actors 01-12 pitch-shifted by each of `semitones` (audiomentations'
    PitchShift, formants moving with the pitch, as a different vocal tract would), then cut and encoded as live
    (not cached: ~1 min per shift here). Whisper-state blocks only."""
    from audiomentations import PitchShift

    from egmf_core.features.audio import WhisperFrontend, WhisperFrontendConfig, load_audio
    from egmf_core.research.feature_lookup import LIVE_WINDOW_S, live_encoder_states

    frontend = WhisperFrontend(WhisperFrontendConfig(window_s=LIVE_WINDOW_S, loudness_lufs=loudness_target()))
    views: dict[str, dict[str, np.ndarray]] = {}
    for st in semitones:
        shift = PitchShift(min_semitones=st, max_semitones=st, p=1.0)
        rows: dict[str, list] = {"label": [], "actor": []}
        for rec in ravdess_dev_pool(limit):
            states = live_encoder_states(shift(load_audio(rec.audio_path).astype(np.float32), 16_000), frontend)
            if len(states) == 0:
                continue
            for block, value in state_blocks(states).items():
                rows.setdefault(block, []).append(value)
            rows["label"].append(rec.emotion_original)
            rows["actor"].append(rec.speaker)
        views[f"pitch:{st:+g}"] = {k: np.array(v) for k, v in rows.items()}
        print(f"  pitch {st:+g} semitones: {len(rows['label'])} clips", file=sys.stderr, flush=True)
    return views


def features(copies: int, use_egemaps: bool, limit: int | None) -> dict[str, dict[str, np.ndarray]]:
    """Per audio view ("clean", "random:k"): every candidate block, labels and actors of actors 01-12's live cuts."""
    from egmf_core.features.audio import load_audio
    from egmf_core.features.live_cut import live_cut
    from egmf_core.features.loudness import normalize_loudness
    from egmf_core.research.feature_lookup import degradation_of, whisper_audio_lookup

    lufs = loudness_target()
    egemaps = egemaps_extractor() if use_egemaps else None
    records = ravdess_dev_pool(limit)
    views: dict[str, dict[str, np.ndarray]] = {}
    for view in ["clean"] + [f"random:{k}" for k in range(copies)]:
        degradation = None if view == "clean" else view
        lookup = whisper_audio_lookup("live", lufs, degradation=degradation)
        rows: dict[str, list] = {"whisper": [], "whisper-speech": [], "dynamics": [], "percentiles": [],
                                 "egemaps": [], "label": [], "actor": []}
        t0 = time.perf_counter()
        for i, rec in enumerate(records):
            states = lookup(rec)
            if states is None:
                continue
            for block, value in state_blocks(states).items():
                rows[block].append(value)
            if egemaps is not None:
                audio = load_audio(rec.audio_path)
                degrade = degradation_of(degradation, Path(rec.audio_path).name)
                cut = live_cut(degrade(audio) if degrade else audio).audio
                rows["egemaps"].append(egemaps(cut if lufs is None else normalize_loudness(cut, lufs)))
            rows["label"].append(rec.emotion_original)
            rows["actor"].append(rec.speaker)
            if (i + 1) % 200 == 0:
                print(f"  {view}: {i + 1}/{len(records)} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr,
                      flush=True)
        views[view] = {k: np.array(v) for k, v in rows.items() if len(v)}
    return views


def design(view: dict[str, np.ndarray], candidate: str) -> np.ndarray:
    return np.hstack([view[block] for block in candidate.split("+")])


def cv_accuracy(views: dict, candidate: str, c: float, train_views: list[str], test_view: str,
                training_actors: int | None = None, rng: np.random.Generator | None = None) -> list[float]:
    """Held-out accuracy (%) per leave-two-actors-out fold; `training_actors`: train on that many of the fold's
    other actors, drawn with `rng` (the learning curve), instead of all of them."""
    actors = sorted(set(views["clean"]["actor"]))
    accs = []
    for i in range(0, len(actors), 2):
        held = actors[i:i + 2]
        others = [a for a in actors if a not in held]
        if training_actors is not None:
            others = list((rng or np.random.default_rng(0)).choice(others, training_actors, replace=False))
        x = np.vstack([design(views[v], candidate)[np.isin(views[v]["actor"], others)] for v in train_views])
        y = np.concatenate([views[v]["label"][np.isin(views[v]["actor"], others)] for v in train_views])
        predict = standardized_logistic(x, y, c)
        test = np.isin(views[test_view]["actor"], held)
        pred = predict(design(views[test_view], candidate)[test])
        accs.append(float((pred == views[test_view]["label"][test]).mean() * 100))
    return accs


def markdown(result: dict) -> str:
    lines = ["# Voice features across speakers: leave-two-actors-out CV over RAVDESS 01-12", "",
             f"`{result['command']}`, {result['date']}. Live cuts; training pool: clean + {result['copies']} "
             "channel-degraded copies of the other actors; 'unseen chain': trained without the last copy, scored on "
             "it. Mean accuracy (%) over six folds; the test actors 13-16 are never read.", "",
             "| candidate | dims | best C | clean held-out | per fold | unseen chain |", "|---|---|---|---|---|---|"]
    for name, r in result["candidates"].items():
        lines.append(f"| {name} | {r['dims']} | {r['c']} | {r['clean']:.2f} | "
                     f"{', '.join(f'{a:.1f}' for a in r['folds'])} | "
                     + (f"{r['unseen_chain']:.2f} |" if r.get("unseen_chain") is not None else "- |"))
    curves = {name: r["learning_curve"] for name, r in result["candidates"].items() if r.get("learning_curve")}
    if curves:
        ks = sorted({int(k) for curve in curves.values() for k in curve})
        lines += ["", "Learning curve: clean held-out accuracy (%) trained on K of the fold's ten other actors "
                  f"(best C; mean over the six folds x {result['draws']} random draws of the K actors):", "",
                  "| candidate | " + " | ".join(f"K = {k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
        for name, curve in curves.items():
            lines.append(f"| {name} | " + " | ".join(f"{curve[str(k)]:.2f}" for k in ks) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--candidates", nargs="+", choices=CANDIDATES, default=list(CANDIDATES))
    ap.add_argument("--degraded-copies", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None,
                    help="N clips of actors 01-12, spread over all of them (smoke runs)")
    ap.add_argument("--training-actors", type=int, nargs="*", default=[],
                    help="also a learning curve: accuracy trained on K of the ten other actors (e.g. 2 4 6 8)")
    ap.add_argument("--draws", type=int, default=5, help="random draws of the K actors per fold (learning curve)")
    ap.add_argument("--pitch-semitones", type=float, nargs="*", default=[],
                    help="also each Whisper-state candidate trained with pitch-shifted copies of the training actors "
                         "(pseudo-speakers), e.g. -3 3")
    ap.add_argument("--out", default="benchmarks/results/voice_features")
    args = ap.parse_args(argv)
    views = features(args.degraded_copies, any("egemaps" in c for c in args.candidates), args.limit)
    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "copies": args.degraded_copies,
                    "draws": args.draws, "candidates": {}}
    copies = [v for v in views if v != "clean"]
    pitched = pitch_views(args.pitch_semitones, args.limit) if args.pitch_semitones else {}
    views.update(pitched)
    runs = [(name, name, []) for name in args.candidates] + [
        (f"{name} + pitch-shifted copies ({', '.join(f'{st:+g}' for st in args.pitch_semitones)} semitones)", name,
         list(pitched)) for name in args.candidates if pitched and "egemaps" not in name]
    for label, name, extra in runs:
        cv = {c: cv_accuracy(views, name, c, ["clean"] + copies + extra, "clean") for c in C_GRID}
        best = max(C_GRID, key=lambda c: float(np.mean(cv[c])))
        unseen = (float(np.mean(cv_accuracy(views, name, best, ["clean"] + copies[:-1] + extra, copies[-1])))
                  if copies else None)
        result["candidates"][label] = {"dims": int(design(views["clean"], name).shape[1]), "c": best,
                                      "clean": float(np.mean(cv[best])), "folds": cv[best],
                                      "grid": {str(c): float(np.mean(a)) for c, a in cv.items()},
                                      "unseen_chain": unseen}
        if args.training_actors:
            rng = np.random.default_rng(0)
            result["candidates"][label]["learning_curve"] = {
                str(k): float(np.mean([cv_accuracy(views, name, best, ["clean"] + copies + extra, "clean", k, rng)
                                       for _ in range(args.draws)]))
                for k in args.training_actors}
        print(f"{label}: C={best} {np.mean(cv[best]):.2f}", file=sys.stderr, flush=True)
    write_table_report(Path(args.out), result, markdown, "bench_voice_features.py", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
