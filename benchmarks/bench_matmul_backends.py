"""The LLM projections' matmul on each CPU backend: `python benchmarks/bench_matmul_backends.py`.

Issue 27 asks for a faster LLM pass on CPUs without native bf16 (int8 "e.g. ONNX Runtime dynamic quantization").
torch's own int8 (`torch._int_mm`) and bf16 are only fast with VNNI / AVX512-BF16 (`egmf_core.precision` refuses
them elsewhere), so before building another LLM path this measures what each backend does at SmolLM2-135M's
projection shapes (a 64-row live prompt pass; hidden 576, MLP 1536) on ONE thread, as the live passes run:

- torch fp32 (`torch.matmul`, oneDNN/MKL: what the LLM runs today),
- torch int8 (`torch._int_mm`) where the CPU has VNNI, else skipped (emulated, ~1.5 GOP/s),
- onnxruntime fp32 (`MatMul`, MLAS),
- onnxruntime int8 (`quantize_dynamic`: int8 weights, inputs quantized per call; `MatMulInteger` + rescale, MLAS),
- onnxruntime's int8 product alone as `egmf_core.serving.OrtInt8Projection` runs it (uint8 x uint8, exact on AVX2),
- `Int8Linear` on onnxruntime: the whole projection as the int8 LLM runs it on CPUs without VNNI (smooth, quantize
  per row, product, rescale: one onnxruntime call).

Median of ``--repeats`` calls per shape after a warm-up; GFLOP/s (int8: GOP/s) per backend and the ratio to torch
fp32. Results: ``--out`` (.json + .md) with the CPU model and flags.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_support import cpu_flag_table, cpu_model  # noqa: E402  (benchmarks/ is on the path above)

from egmf_core.precision import int8_kernel  # noqa: E402
from egmf_core.serving import Int8Linear  # noqa: E402

#: (rows, in, out): a live prompt pass's ~64 new rows through the q/o (576x576), gate/up (576x1536) and down
#: (1536x576) projections of SmolLM2-135M.
SHAPES = ((64, 576, 576), (64, 576, 1536), (64, 1536, 576))


def median_seconds(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def onnx_sessions(w: np.ndarray, folder: Path) -> dict:
    """onnxruntime sessions (one thread) of x @ w: fp32 and dynamically quantized int8."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    k, n = w.shape
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "projection",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    fp32, int8 = folder / f"mm_{k}x{n}.onnx", folder / f"mm_{k}x{n}_int8.onnx"
    onnx.save(model, fp32)
    quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return {name: ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            for name, path in (("onnxruntime fp32", fp32), ("onnxruntime int8 (dynamic)", int8))}


def int8_product(w: np.ndarray):
    """onnxruntime's ``MatMulInteger`` of int8 rows by the int8 weight ``w`` (in, out), both as uint8 with zero point
    128, one thread: the product `egmf_core.serving.OrtInt8Projection` runs (its uint8 x uint8 form is exact on AVX2,
    where uint8 x int8 saturates). Returns a function of the int8 rows (a numpy array) giving the int32 product."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    k, n = w.shape
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "w", "zero", "zero"], ["y"])], "product",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [None, n])],
                              [numpy_helper.from_array((w.view(np.uint8) ^ 0x80), "w"),
                               numpy_helper.from_array(np.array(128, np.uint8), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return lambda rows: session.run(None, {"a": rows.view(np.uint8) ^ 0x80})[0]


def measure(repeats: int) -> dict:
    rng = np.random.default_rng(0)
    rows = []
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for m, k, n in SHAPES:
            x = rng.standard_normal((m, k)).astype(np.float32)
            w = rng.standard_normal((k, n)).astype(np.float32)
            xt, wt = torch.from_numpy(x), torch.from_numpy(w)
            runs = {"torch fp32": lambda: torch.matmul(xt, wt)}
            if int8_kernel() == "torch":
                xq, wq = xt.mul(20).to(torch.int8), wt.mul(20).to(torch.int8)
                runs["torch int8 (_int_mm)"] = lambda: torch._int_mm(xq, wq)
            for name, session in onnx_sessions(w, Path(tmp)).items():
                runs[name] = (lambda s: lambda: s.run(None, {"x": x}))(session)
            xq8 = np.clip(np.round(x * 40), -127, 127).astype(np.int8)
            product = int8_product(np.clip(np.round(w * 40), -127, 127).astype(np.int8))
            runs["onnxruntime int8 product (uint8 x uint8)"] = lambda: product(xq8)
            layer = Int8Linear(_linear(wt), xt.abs().amax(dim=0), kernel="onnxruntime")
            runs["Int8Linear on onnxruntime (whole projection)"] = lambda: layer(xt)
            rate = {name: 2 * m * k * n / median_seconds(fn, repeats) / 1e9 for name, fn in runs.items()}
            rows.append({"shape": [m, k, n], "gflops": rate})
    names = list(rows[0]["gflops"])
    mean = {name: float(np.mean([r["gflops"][name] for r in rows])) for name in names}
    return {"rows": rows, "mean_gflops": mean, "vs_torch_fp32": {n: mean[n] / mean["torch fp32"] for n in names}}


def _linear(w: torch.Tensor) -> torch.nn.Linear:
    """An `nn.Linear` computing x @ w (its weight is w transposed), no bias."""
    linear = torch.nn.Linear(*w.shape, bias=False)
    with torch.no_grad():
        linear.weight.copy_(w.t())
    return linear


def write_report(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    names = list(result["mean_gflops"])
    lines = ["# The LLM projections' matmul by CPU backend (one thread)", "",
             f"`{result['command']}` on {result['cpu']}, {result['cores']} cores; flags: "
             f"{', '.join(result['flags']) or 'none of the bf16/int8 ones'}; {result['date']}; torch "
             f"{result['torch']}, onnxruntime {result['onnxruntime']}. Median of {result['repeats']} calls per shape.",
             "", "| rows x in x out | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += ["| " + " x ".join(map(str, r["shape"])) + " | " + " | ".join(f"{r['gflops'][n]:.1f}" for n in names)
              + " |" for r in result["rows"]]
    lines += ["| mean | " + " | ".join(f"**{result['mean_gflops'][n]:.1f}**" for n in names) + " |",
              "| vs torch fp32 | " + " | ".join(f"x{result['vs_torch_fp32'][n]:.2f}" for n in names) + " |", "",
              "GFLOP/s (int8: GOP/s). torch int8 is left out on a CPU without VNNI (emulated there, ~1.5 GOP/s). "
              "onnxruntime's dynamic int8 multiplies uint8 by int8, which saturates on AVX2 without VNNI (its "
              "products are summed in pairs in int16): fast there but not exact; the uint8 x uint8 product is."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--out", default="benchmarks/results/matmul_backends")
    args = ap.parse_args(argv)
    import onnxruntime

    result = {"command": "python benchmarks/bench_matmul_backends.py " + " ".join(argv if argv is not None
                                                                                  else sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_model(),
              "cores": os.cpu_count(), "flags": [f for f, have in cpu_flag_table().items() if have],
              "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "repeats": args.repeats,
              **measure(args.repeats)}
    write_report(result, Path(args.out))
    print(Path(args.out).with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
