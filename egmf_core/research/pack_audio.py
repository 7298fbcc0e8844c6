"""`python -m egmf_core.research.pack_audio --out ravdess_audio.safetensors [--actors 1-12]`: precompute RAVDESS audio
features (Whisper encoder states, through the feature cache) into one compact AudioFeaturePack, so training can run
on a machine that has neither the speech recognizer nor the audio files (`data.audio_pack` in the train config)."""

from __future__ import annotations

import argparse
import sys
import time

from ..data import RavdessConfig, RavdessDataset
from .feature_lookup import AUDIO_VIEWS, whisper_audio_lookup
from .examples import AudioFeaturePack, feature_key


def _actors(spec: str) -> tuple[int, ...]:
    lo, _, hi = spec.partition("-")
    return tuple(range(int(lo), int(hi or lo) + 1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m egmf_core.research.pack_audio", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--actors", default="1-12", help="actor range, e.g. 1-12")
    ap.add_argument("--audio", choices=AUDIO_VIEWS, default="clip",
                    help="whole clips (default) or live cuts (data.ravdess_audio: live); recorded in the pack")
    args = ap.parse_args(argv)
    records = list(RavdessDataset("all", RavdessConfig(splits={"all_actors": _actors(args.actors)})))
    lookup = whisper_audio_lookup(args.audio)
    start, feats = time.perf_counter(), {}
    for i, rec in enumerate(records, 1):
        states = lookup(rec)
        if states is not None:  # a live cut in which the VAD heard no speech has none
            feats[feature_key(rec)] = states
        if i % 100 == 0 or i == len(records):
            print(f"  {i}/{len(records)} clips ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    path = AudioFeaturePack.write(args.out, feats, args.audio)
    print(f"wrote {len(feats)} clips to {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
