#!/usr/bin/env bash
# GPU check of the fusion engines: ONNX export of a random-initialised fusion stack (no LLM weights needed),
# parity vs PyTorch fp32 (torch CUDA, onnxruntime TensorRT/CUDA/CPU EPs, TensorRT fp16 plan where installed) and
# per-utterance latency. Writes $OUT/gpu_check.json, $OUT/gpu_check.log and $OUT/nvidia_smi.csv.
#
# Run from the repository root on the GPU machine, e.g. through the device tool:
#   run(command="bash export/gpu_check.sh", timeout_s=300)
# Optional real features (made beforehand on a machine with ../shared/data and the backbone):
#   python -m export.gpu_check --save-features build/gpu_check_features.npz   # then carry build/gpu_check_features.npz
# Extra arguments are passed on to `python -m export.gpu_check` (e.g. --quick, --no-tensorrt).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/build/gpu_check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >"$OUT/nvidia_smi.csv" 2>&1 || true
FEATURES=()
if [ -f build/gpu_check_features.npz ]; then FEATURES=(--features build/gpu_check_features.npz); fi
PYTHONUNBUFFERED=1 "$PY" -m export.gpu_check --out "$OUT" "${FEATURES[@]}" "$@" 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
