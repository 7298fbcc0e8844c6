"""`python -m egmf_core.research.fold_ranking`: how often the answer trees the prompt pass carries hold the answer.

`EGMFModel.score` folds into its prompt pass the answer trees of `folded_answers` labels; an utterance whose answer
is not among them needs a second LLM pass (~60-90 ms on a 2-core CPU), the largest part of a live stream's latency
tail. The labels are ranked by `EGMFModel.fold_scores`: the auxiliary head's log-probabilities plus the row's prior
(voice or text, `EGMFModel.label_priors`) in calibrated units, the part of the answer the head cannot see. This
measures, on dev utterances of the kinds live streams carry (MELD lines as words, the same lines spoken by espeak-ng,
RAVDESS dev as live cuts), how often the model's answer is among the top k labels by the head alone and by the head
plus the prior. Dev only: the ranking changes which trees are folded, never an answer.

Results: ``benchmarks/results/fold_ranking.{json,md}``. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..checkpoint import CheckpointError
from ..data import DatasetError
from .distill_aux import spoken
from .analysis import command_line, write_report
from .eval_examples import dataset_examples
from .examples import Example, text_length

KS = (1, 2, 3, 4)


@torch.no_grad()
def ranks(model, examples: Sequence[Example], batch_size: int = 16) -> dict[str, list[int]]:
    """Per utterance, how many labels each ranking puts above the model's answer (0: the answer ranks first)."""
    head = model.fusion.aux_head
    out: dict[str, list[int]] = {"head alone": [], "head + prior": []}
    order = sorted(range(len(examples)), key=lambda i: text_length(examples[i].input))
    for b in range(0, len(order), batch_size):
        batch = [examples[i].input for i in order[b:b + batch_size]]
        seen = model.without_unfamiliar_voices(batch)  # what `score` ranks for
        fusion, _ = model.run_fusion(seen)
        aux = head(fusion.enhanced.to(head.weight.dtype)).float().cpu()
        priors = model.label_priors(seen)
        for x, pred, prior, row in zip(seen, model.score(batch), priors, aux):
            labels = model.prompts.label_sets[x.label_set]
            answer = labels.index(pred.emotion)
            columns, _ = model._label_trees[x.label_set]
            for name, p in (("head alone", (None, False)), ("head + prior", prior)):
                s = model.fold_scores(row[columns], x.label_set, *p)
                out[name].append(int((s > s[answer]).sum()))
    return out


def run(checkpoint: str, meld: int, espeak: int) -> dict:
    from ..predictor import EGMFPredictor

    t0 = time.perf_counter()
    model = EGMFPredictor.load(checkpoint, device="cpu").model  # merged LoRA: the answers the live path gives
    if getattr(model.fusion, "aux_head", None) is None:
        raise CheckpointError(f"{checkpoint}: the model has no auxiliary head: it folds no answer trees")
    sets = {"MELD dev, words": dataset_examples(model, "meld", "dev", meld),
            "RAVDESS dev, live cuts": dataset_examples(model, "ravdess", "dev", audio_view="live",
                                                       label_set="default")}
    if espeak:
        from ..features.audio import WhisperFrontend, WhisperFrontendConfig
        from ..features.live_cut import LIVE_WINDOW_S

        frontend = WhisperFrontend(WhisperFrontendConfig(window_s=LIVE_WINDOW_S,
                                                         loudness_lufs=model.cfg.fusion.audio_loudness_lufs))
        with tempfile.TemporaryDirectory(prefix="egmf-espeak-") as tmp:
            sets["MELD dev lines, espeak-ng speech"] = spoken(dataset_examples(model, "meld", "dev", espeak),
                                                              Path(tmp), frontend)
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
              "checkpoint": checkpoint, "folded_answers": model.folded_answers, "sets": {}}
    for name, examples in sets.items():
        print(f"  {name}: {len(examples)} utterances ...", file=sys.stderr, flush=True)
        r = ranks(model, examples)
        result["sets"][name] = {"n": len(examples), **{
            k: {f"top{n}": round(100.0 * float(np.mean(np.array(v) < n)), 1) for n in KS} for k, v in r.items()}}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def markdown(result: dict) -> str:
    lines = [
        "# Which answer trees the prompt pass carries: the aux head alone vs the head plus the prior",
        "",
        f"{result['date']}; {result['machine']}. Checkpoint `{result['checkpoint']}`; the model folds "
        f"{result['folded_answers']} trees. How often the model's answer is among the top k labels of each ranking, "
        "dev utterances (%); a miss at k = folded trees costs the utterance a second LLM pass:",
        "",
        "| dev set | n | ranking | " + " | ".join(f"top {k}" for k in KS) + " |",
        "|---|---|---|" + "---|" * len(KS),
    ]
    for name, r in result["sets"].items():
        for ranking in ("head alone", "head + prior"):
            cells = [f"{r[ranking][f'top{k}']:.1f}" for k in KS]
            if ranking == "head + prior":
                cells = [f"**{c}**" for c in cells]
            lines.append(f"| {name} | {r['n']} | {ranking} | " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{result['command']}` ({result['seconds']:.0f} s)", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m egmf_core.research.fold_ranking", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="default", help="checkpoint file, or 'default' for the shipped one")
    ap.add_argument("--meld", type=int, default=400, help="MELD dev lines as words")
    ap.add_argument("--espeak", type=int, default=200, help="MELD dev lines spoken by espeak-ng (0: none)")
    ap.add_argument("--report", default="benchmarks/results/fold_ranking.md", help="Markdown; the JSON goes beside it")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = run(args.checkpoint, args.meld, args.espeak)
    except (CheckpointError, DatasetError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result["command"] = command_line("egmf_core.research.fold_ranking", argv)
    write_report(Path(args.report), result, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
