#!/usr/bin/env bash
# Reproduce the shipped default checkpoint in one command: the seven training stages as docs/training.md's table ran them (same
# configs, same time budgets), then its test evaluations. Stages 1-3 are sized for a GPU (13 min on an H100; on a
# 2-core CPU a joint step takes ~30 s, so their time budgets would stop each after a few dozen steps); stages 4 and 5
# ran on a 2-core CPU (45 min budgets: 261 and 300 of their 300 steps), on a GPU each runs in a few minutes. Pass a larger
# --time-budget-minutes only if you mean it (it applies to every stage).
#
#   bash scripts/train_default.sh --device cuda   # arguments go to every training stage (stages 6 and 7 read the
#   clips themselves for their degraded copies, so they refuse --audio-pack)
#
# Writes runs/default (stage 1), runs/stage2 ... runs/stage5 (its aux head then distilled toward the LLM's answers by
# egmf_core.research.distill_aux, ~15 min on a 2-core CPU), runs/stage6 (loudness-normalized and channel-augmented audio,
# distilled and calibrated the same way), runs/stage7 (the result: runs/stage7/best.safetensors, stage 6 on live cut
# v2 with the voice prior of egmf_core.research.fit_audio_prior, calibrated by egmf_core.research.fit_calibration, then distilled) and
# the test reports runs/stage7/eval_{meld,ravdess}_test.json and runs/stage7/eval_ravdess_test_live.json (RAVDESS as
# the live pipeline cuts it). It never overwrites the shipped file; to ship the result:
#   cp runs/stage7/best.safetensors egmf_core/checkpoints/default.safetensors
set -euo pipefail
cd "$(dirname "$0")/.."

stage() {  # stage CONFIG BUDGET_MINUTES [ARGS...]: later arguments (the caller's) override the budget
    local config=$1 budget=$2
    shift 2
    echo "== python -m egmf_core.research.train --config $config --time-budget-minutes $budget $*"
    python -m egmf_core.research.train --config "$config" --time-budget-minutes "$budget" "$@"
}

stage configs/default.yaml 7 "$@"
stage configs/stage2_audio_fusion.yaml 1.3 "$@"
stage configs/stage3_joint.yaml 4.5 "$@"
stage configs/stage4_context_first.yaml 45 "$@"
stage configs/stage5_live_cuts.yaml 45 "$@"
# The aux head refit to the LLM's own answers (which answer trees the prompt pass folds; the answers stay the same).
python -m egmf_core.research.distill_aux --checkpoint runs/stage5/best.safetensors --out runs/stage5/best.safetensors \
    --report runs/stage5/aux_distill.md
stage configs/stage6_robust_audio.yaml 40 "$@"
python -m egmf_core.research.distill_aux --checkpoint runs/stage6/best.safetensors --out runs/stage6/best.safetensors \
    --report runs/stage6/aux_distill.md
# Temperature scaling of the emotion confidences on dev data (MELD dev, RAVDESS 11-12 live cuts), stored in the file.
python -m egmf_core.research.fit_calibration --checkpoint runs/stage6/best.safetensors --out runs/stage6/best.safetensors \
    --report runs/stage6/calibration_fit
stage configs/stage7_relative_line_noise.yaml 30 "$@"
# The voice prior (C by leave-two-actors-out CV over RAVDESS 01-12, strengths on 11-12), then the temperatures
# refitted with it in place.
python -m egmf_core.research.fit_audio_prior --checkpoint runs/stage7/best.safetensors --out runs/stage7/best.safetensors \
    --report runs/stage7/audio_prior_fit
# Familiar voices: the training voices' subspace and the largest dev-actor residual; other voices are answered
# without their audio.
python -m egmf_core.research.fit_voice_domain --checkpoint runs/stage7/best.safetensors --out runs/stage7/best.safetensors \
    --report runs/stage7/voice_domain_fit
# The text prior for the text-led answers (MiniLM sentence embedding + logistic regression on MELD train; C and
# strength on MELD dev), before the temperatures are refitted with both priors in place.
python -m egmf_core.research.fit_text_prior --checkpoint runs/stage7/best.safetensors --out runs/stage7/best.safetensors \
    --report runs/stage7/text_prior_fit
python -m egmf_core.research.fit_calibration --checkpoint runs/stage7/best.safetensors --out runs/stage7/best.safetensors \
    --report runs/stage7/calibration_fit
# Then the prior's classifier refit on every allowed actor (01-12), its strengths, domain and temperatures kept
# (they were fitted where the dev actors were unheard).
python -m egmf_core.research.fit_audio_prior --checkpoint runs/stage7/best.safetensors --out runs/stage7/best.safetensors \
    --refit-all-actors --report runs/stage7/audio_prior_refit
# The aux head toward the answers as they now come out (prior included); answers and probabilities unchanged.
python -m egmf_core.research.distill_aux --checkpoint runs/stage7/best.safetensors --out runs/stage7/best.safetensors \
    --report runs/stage7/aux_distill.md
for dataset in meld ravdess; do
    python -m egmf_core.research.evaluate --checkpoint runs/stage7/best.safetensors --dataset "$dataset" --split test \
        --out "runs/stage7/eval_${dataset}_test.json"
done
python -m egmf_core.research.evaluate --checkpoint runs/stage7/best.safetensors --dataset ravdess --split test --audio live \
    --out runs/stage7/eval_ravdess_test_live.json
