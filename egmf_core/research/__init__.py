"""The research area: training, evaluation, ablations, calibration and voice-prior fitting, distillation of the
auxiliary head, and the analyses behind the results files.

Each command is `python -m egmf_core.research.<name>`: `train`, `evaluate`, `fit_calibration`, `fit_audio_prior`,
`fit_text_prior`, `distill_aux`, `fold_ranking`, `ablate`, `ablate_retrained`, `gate_analysis`, `pack_audio`. The
other modules are what only these commands use: `examples` (dataset records -> model inputs with cached features),
`metrics`, `degrade` (channel degradations) and `analysis` (shared by the ablation and gate reports; the report
writing of the others).

The runtime (the rest of `egmf_core`, `streaming/`, `export/`, `deploy/`) never imports this package
(`tests/test_layering.py`); it may import the runtime library.
"""
