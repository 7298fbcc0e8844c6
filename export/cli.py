"""`python -m export`: build the deployable engines of an EGMF checkpoint, step by step, with checks.

Each step prints a line when it starts and one with its timing when it ends. A failure prints
`export failed at step '<step>': <cause>` on stderr and exits with status 1 (2 for bad arguments); expected
failures (missing checkpoint, data, parity above tolerance, ...) print no traceback. The engines folder is built in
a staging folder next to `--out` and only moved into place when every step passed, so a failed export never leaves
a half-written engines folder for the service to pick up.

This module holds the command line; the steps and their reports are in `export/progress.py`, the export itself
in `export/build.py`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from .build import run_export
from .progress import Progress, StepFailed

__all__ = ["parse_args", "main"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m export",
        description="Build ONNX / TensorRT engines of the fusion stack and the LoRA-merged LLM from an EGMF "
                    "checkpoint.",
    )
    ap.add_argument("--checkpoint", required=True, help="checkpoint .safetensors file, or 'default' (the shipped one)")
    ap.add_argument("--out", default="engines", help="engines folder to write (default: engines/)")
    ap.add_argument("--fp16", action="store_true",
                    help="fp16 TensorRT engine and TensorRT EP (the ONNX graph stays fp32)")
    ap.add_argument("--tensorrt", action="store_true",
                    help="build fusion.plan with TensorRT (needs TensorRT + a CUDA GPU; "
                    "skipped with a message otherwise)")
    ap.add_argument("--skip-llm", action="store_true", help="do not write the merged LLM (engines/llm/)")
    ap.add_argument("--parity-inputs", choices=("real", "random"), default="real",
                    help="real: features of ../shared/data clips (default); random: synthetic, for machines without "
                         "the data")
    ap.add_argument("--data-dir", default=None, help="shared data folder (default: $EGMF_DATA_DIR or ../shared/data)")
    ap.add_argument("--providers", default=None,
                    help="comma-separated execution providers to check parity on (cpu,cuda,tensorrt; default: all "
                         "available)")
    ap.add_argument("--rtol", type=float, default=None,
                    help="fp32 parity tolerance relative to each output's scale (default 1e-4)")
    ap.add_argument("--atol", type=float, default=None, help="fp32 parity absolute tolerance (default 1e-6)")
    ap.add_argument("--max-batch", type=int, default=8, help="TensorRT profile: largest batch (default 8)")
    ap.add_argument("--opt-seconds", type=float, default=5.0,
                    help="TensorRT profile: optimal utterance length (default 5)")
    ap.add_argument("--max-seconds", type=float, default=30.0,
                    help="TensorRT profile: longest utterance (default 30, Whisper's window)")
    ap.add_argument("--force", action="store_true", help="replace --out even if it is not an engines folder")
    ap.add_argument("-v", "--verbose", action="store_true", help="show library logs")
    return ap.parse_args(argv)


def _quiet_libraries(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("GLOG_minloglevel", "2")  # mediapipe's C++ logging (face features for parity)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" notes
        import warnings

        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            hf_logging.set_verbosity_error()
        except Exception:  # pragma: no cover
            pass


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    _quiet_libraries(args.verbose)
    progress = Progress()
    start = time.perf_counter()
    try:
        manifest = run_export(args, progress)
    except StepFailed as exc:
        print(str(exc), file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("export interrupted", file=sys.stderr)
        return 130
    files = manifest["files"]
    print(f"done in {time.perf_counter() - start:.1f} s: {args.out}/ holds "
          + ", ".join(sorted({k.split('/')[0] + ('/' if '/' in k else '') for k in files} | {'manifest.json'})),
          flush=True)
    return 0
