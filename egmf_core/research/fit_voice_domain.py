"""`python -m egmf_core.research.fit_voice_domain --checkpoint CKPT --out CKPT`: fit which voices the audio can be trusted on.

The voice prior (`egmf_core.audio_prior`) and the audio branch learned emotion from the voices of RAVDESS actors
01-10; on other voices (interviews, the MEAD actors) their reading was mostly "anger" or "joy" with high confidence.
This command stores, in the checkpoint's prior, what familiar voices look like, so that `EGMFModel` answers an
unfamiliar voice from its words, face and context instead (`AudioPrior.familiar`):

1. The subspace: the top `--components` principal directions of the prior's own training pool (actors 01-10 live
   cuts, clean and the channel-degraded copies training made), in the prior's standardized coordinates.
2. The threshold: the largest mean squared residual outside that subspace among the development actors 11-12 (never
   trained on) under every benchmark channel condition (`egmf_core.research.degrade.CONDITIONS`: level, limiter,
   loudness, phone, MP3, noise): no held-out RAVDESS speaker under a condition a user has is called unfamiliar. The test
   actors 13-16 and the real recordings in ../shared/data/media play no part.

The written checkpoint is a copy of `--checkpoint` with the prior's domain added (tensors, calibration and the rest
of the prior unchanged). The report (`--report`, JSON + markdown) gives the residuals per group.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ..audio_prior import METADATA_KEY, AudioPrior, voice_statistics
from ..checkpoint import read_audio_prior, read_file, write_file
from .degrade import CONDITIONS
from .eval_examples import dataset_examples
from .feature_lookup import whisper_audio_lookup
from .fit_audio_prior import DEV_ACTORS, actor_of


def principal_subspace(z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Center (d,) and the top-k principal directions (k, d, orthonormal rows) of the rows of `z`."""
    center = z.mean(axis=0)
    _, _, vt = np.linalg.svd(z - center, full_matrices=False)
    return center.astype(np.float32), vt[:k].astype(np.float32)


def residuals(prior: AudioPrior, states: Sequence[np.ndarray]) -> np.ndarray:
    return np.array([prior.domain_residual(s) for s in states])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m egmf_core.research.fit_voice_domain",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="default")
    ap.add_argument("--out", required=True, help="the checkpoint to write (may equal --checkpoint)")
    ap.add_argument("--components", type=int, default=32, help="principal directions of the familiar subspace")
    ap.add_argument("--degraded-copies", type=int, default=2,
                    help="channel-degraded copies of each training clip in the pool (as fit_audio_prior used)")
    ap.add_argument("--report", default="benchmarks/results/voice_domain_fit", help="report path without extension")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    from ..checkpoint import load_checkpoint

    prior = read_audio_prior(args.checkpoint)
    if prior is None:
        raise SystemExit(f"{args.checkpoint}: no voice prior to add a domain to (python -m "
                         "egmf_core.research.fit_audio_prior)")
    model = load_checkpoint(args.checkpoint)
    lufs = model.cfg.fusion.audio_loudness_lufs

    def states(split: str, degradation: str | None) -> dict[str, list[np.ndarray]]:
        """Live-cut encoder states per actor of a RAVDESS split under a degradation."""
        lookup = whisper_audio_lookup("live", lufs, degradation=degradation)
        out: dict[str, list[np.ndarray]] = {}
        for e in dataset_examples(model, "ravdess", split, audio=lookup, label_set="ravdess"):
            if e.input.audio is not None:
                out.setdefault(actor_of(e), []).append(e.input.audio)
        return out

    print("live-cut features of the prior's training pool (actors 01-10) ...", file=sys.stderr, flush=True)
    pool = [s for d in [None] + [f"random:{k}" for k in range(args.degraded_copies)]
            for a, ss in states("train", d).items() if a not in DEV_ACTORS for s in ss]
    center, basis = principal_subspace(np.stack([(voice_statistics(s) - prior.mean) / prior.scale for s in pool]),
                                       args.components)
    domained = replace(prior, domain_center=center, domain_basis=basis, domain_threshold=1.0)

    groups: dict[str, np.ndarray] = {"train pool (01-10)": residuals(domained, pool)}
    for name in CONDITIONS:
        print(f"dev actors {'+'.join(DEV_ACTORS)}, {name} ...", file=sys.stderr, flush=True)
        dev = [s for a, ss in states("dev", None if name == "clean" else name).items() for s in ss]
        groups[f"dev {name}"] = residuals(domained, dev)
    threshold = float(max(r.max() for g, r in groups.items() if g.startswith("dev ")))
    domained = replace(domained, domain_threshold=threshold)

    tensors, meta = read_file(args.checkpoint)
    meta[METADATA_KEY] = domained.to_json()
    out = write_file(tensors, meta, args.out)

    report = {"checkpoint": str(args.checkpoint), "out": str(out), "components": args.components,
              "threshold": threshold, "seconds": round(time.perf_counter() - t0, 1),
              "residuals": {g: {"n": len(r), "median": float(np.median(r)), "p95": float(np.percentile(r, 95)),
                                "max": float(r.max())} for g, r in groups.items()}}
    path = Path(args.report)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(report, indent=2))
    lines = ["# Familiar voices: the voice prior's domain (RAVDESS actors 01-12; no test actor)", "",
             f"`python -m egmf_core.research.fit_voice_domain --checkpoint {args.checkpoint} --out {args.out}`; "
             f"{report['seconds']:.0f} s. Subspace: {args.components} principal directions of the prior's training "
             f"pool; threshold = the largest dev residual: **{threshold:.3f}**.", "",
             "| group | n | median | p95 | max |", "|---|---|---|---|---|"]
    for g, r in report["residuals"].items():
        lines.append(f"| {g} | {r['n']} | {r['median']:.3f} | {r['p95']:.3f} | {r['max']:.3f} |")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"checkpoint with the voice domain: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
