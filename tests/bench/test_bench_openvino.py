"""benchmarks/bench_openvino.py's OpenVINO rows on a small transformer block, against
torch float64: the fp32 row is the same function, the int8 row (NNCF) is within
int8 error of it. Skips without OpenVINO and NNCF
(the `openvino` extra), which the CI environment does not install."""

import os
import sys

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")
torch = pytest.importorskip("torch")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "benchmarks"))
import bench_openvino  # noqa: E402


class Block(torch.nn.Module):
    """Patch embedding, then one pre-norm attention + MLP block: the MatMuls NNCF quantizes."""

    def __init__(self, dim: int = 64):
        super().__init__()
        self.patch = torch.nn.Conv2d(3, dim, 8, 8)
        self.norm1, self.norm2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
        self.qkv, self.proj = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        x = x + self.proj(torch.softmax(q @ k.transpose(1, 2) / 8.0, dim=-1) @ v)
        return x + self.mlp(self.norm2(x))


def rel_l2(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_openvino_rows_against_torch_float64():
    torch.manual_seed(0)
    model = Block().eval()
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((1, 3, 64, 64)).astype(np.float32) for _ in range(2)]
    calib = [rng.standard_normal((1, 3, 64, 64)).astype(np.float32) for _ in range(4)]
    with torch.no_grad():
        reference = [model.double()(torch.from_numpy(x).double()).numpy() for x in inputs]
        model.float()
        torch_fp32 = max(rel_l2(model(torch.from_numpy(x)).numpy(), r) for x, r in zip(inputs, reference))
    ov_model = bench_openvino.convert_encoder(model, inputs[0])

    rows = bench_openvino.openvino_rows(ov_model, inputs, calib, threads=1, repeat=1, which=("fp32", "int8"))
    assert [r["path"] for r in rows] == ["openvino-fp32", "openvino-int8"]
    errors = [max(rel_l2(o, r) for o, r in zip(row["outputs"], reference)) for row in rows]
    # fp32: the same arithmetic in another order, so a small multiple of torch's own fp32 error.
    assert errors[0] <= 10 * torch_fp32 + 1e-6, (errors, torch_fp32)
    # int8: 8-bit activations and weights give about 1% here; 5% says the graph is intact, while a
    # wrong quantizer (a scale off by a factor, a skipped dequantize) lands far above it.
    assert all(1e-4 < e < 5e-2 for e in errors[1:]), errors
    for row in rows:
        assert len(row["times"]) == len(inputs) and all(t > 0 for t in row["times"])


def test_saved_int8_ir_is_the_model_quantized_in_process(tmp_path):
    """--save-int8-ir then --int8-ir times the same int8 model as quantizing in the timing
    process would, and a saved IR from other weights is refused."""
    torch.manual_seed(0)
    model = Block().eval()
    rng = np.random.default_rng(2)
    inputs = [rng.standard_normal((1, 3, 64, 64)).astype(np.float32)]
    calib = [rng.standard_normal((1, 3, 64, 64)).astype(np.float32) for _ in range(3)]
    ov_model = bench_openvino.convert_encoder(model, inputs[0])
    quantized, seconds = bench_openvino.quantize_openvino(ov_model, calib)
    path = str(tmp_path / "block-int8.xml")
    bench_openvino.save_int8_ir(quantized, path, {"model": "block", "weights": "seed0", "quantize_s": seconds,
                                                  "calibration_images": len(calib)})
    saved = bench_openvino.load_int8_ir(path, "block", "seed0")
    in_process = bench_openvino.openvino_rows(ov_model, inputs, calib, threads=1, repeat=1, which=("int8",))
    from_ir = bench_openvino.openvino_rows(ov_model, inputs, calib, threads=1, repeat=1, which=("int8",),
                                           int8_ir=saved)
    assert from_ir[0]["calibration_images"] == 3 and "quantized_in" in from_ir[0]
    a, b = in_process[0]["outputs"][0], from_ir[0]["outputs"][0]
    assert rel_l2(b, a) < 1e-6, rel_l2(b, a)
    with pytest.raises(SystemExit, match="quantized from block seed0"):
        bench_openvino.load_int8_ir(path, "block", "seed1")
