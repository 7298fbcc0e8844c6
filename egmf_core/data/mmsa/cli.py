"""`python -m egmf_core.data.mmsa convert --pickle PATH --out DIR --dataset mosei --allow-pickle`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from egmf_core.data.base import DatasetError
from egmf_core.data.mmsa.convert import convert_mmsa_pickle
from egmf_core.data.mmsa.spec import MMSA_DATASETS

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m egmf_core.data.mmsa", description="MMSA feature files (MOSI, MOSEI, CH-SIMS)."
    )
    commands = ap.add_subparsers(dest="command", required=True)
    convert = commands.add_parser(
        "convert", help="check an MMSA pickle and write it as a safe safetensors + JSON folder"
    )
    convert.add_argument("--pickle", required=True, help="MMSA feature file, e.g. MOSEI/Processed/unaligned_50.pkl")
    convert.add_argument("--out", required=True, help="folder to write (created if needed)")
    convert.add_argument("--dataset", required=True, choices=tuple(MMSA_DATASETS))
    convert.add_argument(
        "--allow-pickle",
        action="store_true",
        help="required: unpickling can run arbitrary code, so confirm you trust this file",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        out = convert_mmsa_pickle(args.pickle, args.out, args.dataset, allow_pickle=args.allow_pickle)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"converted {args.dataset} into {out}; load it with MmsaDataset(split, MmsaConfig(folder=...))")
    return 0
