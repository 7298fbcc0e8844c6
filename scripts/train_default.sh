#!/usr/bin/env bash
# Reproduce the shipped default checkpoint in one command: the three training stages exactly as README's table ran
# them (same configs, same time budgets), then its test evaluations. Sized for a GPU: the stages took 13 min on an H100. On a
# 2-core CPU a joint step takes ~30 s, so the time budgets would stop each stage after a few dozen steps; pass a
# larger --time-budget-minutes only if you mean it (it applies to every stage).
#
#   bash scripts/train_default.sh --device cuda [--audio-pack PACK]   # arguments go to every training stage
#
# Writes runs/default (stage 1), runs/stage2, runs/stage3 (the result: runs/stage3/best.safetensors) and the test
# reports runs/stage3/eval_{meld,ravdess}_test.json. It never overwrites the shipped file; to ship the result:
#   cp runs/stage3/best.safetensors egmf_core/checkpoints/default.safetensors
set -euo pipefail
cd "$(dirname "$0")/.."

stage() {  # stage CONFIG BUDGET_MINUTES [ARGS...]: later arguments (the caller's) override the budget
    local config=$1 budget=$2
    shift 2
    echo "== python -m egmf_core.train --config $config --time-budget-minutes $budget $*"
    python -m egmf_core.train --config "$config" --time-budget-minutes "$budget" "$@"
}

stage configs/default.yaml 7 "$@"
stage configs/stage2_audio_fusion.yaml 1.3 "$@"
stage configs/stage3_joint.yaml 4.5 "$@"
for dataset in meld ravdess; do
    python -m egmf_core.evaluate --checkpoint runs/stage3/best.safetensors --dataset "$dataset" --split test \
        --out "runs/stage3/eval_${dataset}_test.json"
done
