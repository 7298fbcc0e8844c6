"""Deployable artifacts of an EGMF checkpoint and the runtime that uses them.

`python -m export --checkpoint <path|default> --out engines/ [--fp16] [--tensorrt]` writes:

- `fusion.onnx`: the fusion stack (frame features + utterance token embeddings -> pseudo tokens, gate weights,
  expert outputs, fused vector) with dynamic batch and time axes and the modality masks as bool inputs;
- `fusion.plan` (only where TensorRT and a CUDA GPU exist): a TensorRT engine with optimization profiles;
- `llm/`: the LoRA-merged LLM as a standard Hugging Face folder (safetensors + tokenizer);
- `manifest.json`: versions, input/output signature, file hashes, parity numbers, execution providers tested.

`export.runner.use_engines(model, "engines/")` swaps a loaded `EGMFModel` onto those artifacts;
`export.runner.load_engine_model("engines/")` builds one from the folder alone.

This package imports nothing heavy at import time, so `python -m export --help` and error paths stay fast.
"""

ENGINE_FORMAT_VERSION = "1"
