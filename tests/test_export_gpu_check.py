"""The GPU check script runs end to end on a CPU-only machine too (CUDA parts skipped with reasons)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export import gpu_check

pytestmark = pytest.mark.slow


def test_gpu_check_runs_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = gpu_check.main(["--out", str(tmp_path), "--quick"])
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert rc == 0 and result["ok"], printed
    env = result["environment"]
    assert env["versions"]["torch"] and env["versions"]["onnxruntime"] and "ort_available_providers" in env
    assert result["onnx_bytes"] > 1_000_000
    cpu = result["parity"]["CPUExecutionProvider"]
    assert cpu["passed"] and cpu["active_providers"][0] == "CPUExecutionProvider" and len(cpu["cases"]) >= 8
    if not env["cuda_available"]:
        assert "skipped" in result["parity"]["torch_cuda_fp32"]
    if not env["tensorrt"]["usable"]:
        assert result["parity"]["tensorrt_plan_fp16"]["skipped"]
    timing = result["timing"]
    assert set(timing) == {"b1_2s", "b1_5s", "b1_8s", "b8_5s"}
    for row in timing.values():
        assert row["torch_cpu_fp32"]["median_ms"] > 0 and row["ort_CPUExecutionProvider"]["median_ms"] > 0
    assert "[gpu_check] OK" in printed
