"""sam_edge_ops, the ONNX Runtime custom-op library (csrc/ort/), run the way any
ORT host runs it: a one-node ONNX graph in the domain ai.sam_edge, in an
onnxruntime.InferenceSession with the library registered.

- Our declarations of ORT's C ABI (csrc/ort/ort_abi.h) against the installed
  runtime: the library's self-check calls every declared table slot through
  the C library (libonnxruntime.so) in a subprocess, since a wrong slot may
  crash. The sessions below exercise the rest through the Python module's copy.
- RelPosAttention against the float64 numpy reference, at the tolerances of the
  kernel it wraps (tests/kernels/test_cpu_attention.py): fp32 within 4x the
  error of the same reference computed in float32 numpy; fp16 and bf16 within
  5x and 2x torch's own error at that precision. The op adds no arithmetic of
  its own, so it inherits the kernel's bounds unchanged.
- LayerNorm against float64 numpy, within 4x the error of the same formula in
  float32 numpy: both round the same operations in float32, the kernel summing
  in 16 lanes where numpy sums pairwise. Inputs carry a mean far from zero,
  where a one-pass variance would lose its digits.
- GeluQuantizeLinear and the LayerNorm QuantizeLinear ops against float64 numpy
  then ONNX QuantizeLinear (round half to even, saturate): the uint8 outputs are
  equal wherever the float64 value lies farther from a rounding boundary than
  the float32 error bound each op's contract states (csrc/gelu_quantize.h,
  csrc/layer_norm.h); within it float32 may round the other way, by one step.
- On the session's intra-op pool, at 1, 2 and 3 threads: RelPosAttention (fp32,
  and bf16 where the CPU has AVX512-BF16) equals sam_edge._C's OpenMP kernel bit
  for bit, and the elementwise ops equal themselves at one thread: no task's
  arithmetic depends on the thread that runs it or on how the work is cut.
- Bad attributes and shapes are onnxruntime errors carrying our message, never
  a crash; so are a missing library and a CPU the library refuses.
"""

import math

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from sam_edge.kernels.cpu_attention import (  # noqa: E402
    cpu_kernel_status, fast_compute, rel_pos_attention_qkv, rel_pos_attention_qkv_reference)
from sam_edge.runtime.ort_ops import DOMAIN, DOMAIN_VERSION, LIBRARY_ENV, library_path, register_ort_ops  # noqa: E402
from attention_inputs import qkv_inputs  # noqa: E402

LIBRARY = library_path()
STATUS = cpu_kernel_status()
needs_library = pytest.mark.skipif(
    LIBRARY is None, reason=f"sam_edge_ops is not built (pip install . builds it; {LIBRARY_ENV} names a build)")
# The library asks the same CPU checks as sam_edge._C (both compile csrc/attention/).
needs_avx512 = pytest.mark.skipif(not STATUS["avx512"], reason="this CPU has no AVX-512, so sam_edge_ops refuses it "
                                  "(or sam_edge._C, which reports the CPU's features, is not built)")


def _rel(a, ref):
    return float(np.linalg.norm(a.astype(np.float64) - ref) / np.linalg.norm(ref))


def _session_options(threads=1):
    options = ort.SessionOptions()
    # The kernels run on ORT's intra-op pool: one thread unless a test asks for more.
    options.intra_op_num_threads = threads
    options.log_severity_level = 4  # the errors under test reach the test as exceptions
    register_ort_ops(options)
    return options


def _attention_graph(attributes, with_bias=True):
    """A one-node model: RelPosAttention(qkv, rel_pos_h, rel_pos_w[, kv_bias]) -> out."""
    inputs = ["qkv", "rel_pos_h", "rel_pos_w"] + (["kv_bias"] if with_bias else [])
    # No shapes, not even ranks: the op's own checks see every input as fed.
    info = {name: helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in inputs + ["out"]}
    node = helper.make_node("RelPosAttention", inputs, ["out"], domain=DOMAIN, **attributes)
    graph = helper.make_graph([node], "rel_pos_attention", [info[n] for n in inputs], [info["out"]])
    model = helper.make_model(graph, ir_version=8, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)])
    return model.SerializeToString()


def _attention_session(heads, window, scale, compute=None, with_bias=True, threads=1):
    attributes = {"heads": heads, "window": window, "scale": scale}
    if compute is not None:
        attributes["compute"] = compute
    return ort.InferenceSession(_attention_graph(attributes, with_bias), _session_options(threads),
                                providers=["CPUExecutionProvider"])




def _feeds(qkv, rel_pos_h, rel_pos_w, kv_bias):
    feeds = {"qkv": qkv, "rel_pos_h": rel_pos_h, "rel_pos_w": rel_pos_w}
    if kv_bias is not None:
        feeds["kv_bias"] = kv_bias
    return feeds


# (batch, (H, W), heads, head_dim, window, with kv_bias)
SHAPES = [
    (1, (16, 16), 2, 64, 0, False),  # reduced ViT-B/L global block; the optional input left out
    (2, (8, 16), 3, 64, 0, True),    # batch of 2; a global block ignores kv_bias
    (1, (8, 16), 2, 80, 0, False),   # ViT-H head_dim, global
    (1, (20, 23), 2, 64, 7, True),   # windows padded at the bottom and right: padded keys are kv_bias
    (1, (20, 23), 2, 80, 7, True),   # the same with ViT-H's head_dim
    (2, (30, 30), 2, 64, 14, True),  # ViT-B's window, 3 x 3 windows, padded
    (2, (9, 10), 1, 24, 4, True),    # odd head_dim: the kernel's portable loop
]
_ids = [f"b{s[0]}g{s[1][0]}x{s[1][1]}h{s[2]}d{s[3]}w{s[4]}{'' if s[5] else '-nobias'}" for s in SHAPES]


# ---- the ABI ----

def _c_runtime():
    """The C library that C and C++ hosts link, from the installed wheel (skips without it)."""
    runtime = Path(ort.__file__).parent / "capi" / f"libonnxruntime.so.{ort.__version__}"
    if not runtime.is_file():
        pytest.skip(f"this onnxruntime ships no C library at {runtime}")
    return runtime


_CHECK_API = textwrap.dedent("""
    import ctypes, sys
    runtime_path, library_path, expected_version = sys.argv[1:4]
    runtime = ctypes.CDLL(runtime_path)
    runtime.OrtGetApiBase.restype = ctypes.c_void_p
    api_base = runtime.OrtGetApiBase()
    # OrtApiBase: GetApi, then GetVersionString.
    slot = ctypes.c_void_p.from_address(api_base + ctypes.sizeof(ctypes.c_void_p)).value
    get_version = ctypes.CFUNCTYPE(ctypes.c_char_p)(slot)
    version = get_version().decode()
    if version != expected_version:
        sys.exit(f"GetVersionString gave {version!r}; onnxruntime.__version__ is {expected_version!r}")
    library = ctypes.CDLL(library_path)
    message = ctypes.create_string_buffer(1024)
    failed = library.sam_edge_ops_check_api(ctypes.c_void_p(api_base), message, len(message))
    sys.exit(message.value.decode() if failed else 0)
""")


@needs_library
def test_api_table_matches_the_installed_runtime():
    """Every OrtApi slot ort_abi.h declares, called through the C library that C
    and C++ hosts link, answers as the documented function does."""
    runtime = _c_runtime()
    result = subprocess.run([sys.executable, "-c", _CHECK_API, str(runtime), LIBRARY, ort.__version__],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode >= 0, f"the self-check crashed (signal {-result.returncode}): a slot is miscounted"
    assert result.returncode == 0, result.stderr


_OLDER_RUNTIME = textwrap.dedent("""
    import ctypes, sys
    runtime_path, library_path = sys.argv[1:3]
    runtime = ctypes.CDLL(runtime_path)
    runtime.OrtGetApiBase.restype = ctypes.c_void_p
    real = (ctypes.c_void_p * 2).from_address(runtime.OrtGetApiBase())
    GetApi = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_uint32)
    real_get_api = GetApi(real[0])
    # The tables of a runtime that stops at API 15, as onnxruntime 1.15 does.
    version = ctypes.create_string_buffer(b"1.15.1")
    older_get_api = GetApi(lambda v: real_get_api(v) if v <= 15 else None)
    older_version = ctypes.CFUNCTYPE(ctypes.c_void_p)(lambda: ctypes.addressof(version))
    api_base = (ctypes.c_void_p * 2)(ctypes.cast(older_get_api, ctypes.c_void_p).value,
                                     ctypes.cast(older_version, ctypes.c_void_p).value)
    library = ctypes.CDLL(library_path)
    library.RegisterCustomOps.restype = ctypes.c_void_p
    status = library.RegisterCustomOps(None, api_base)
    if not status:
        sys.exit("RegisterCustomOps accepted a runtime without API 16")
    api = (ctypes.c_void_p * 94).from_address(real_get_api(1))
    print(ctypes.CFUNCTYPE(ctypes.c_char_p, ctypes.c_void_p)(api[2])(status).decode())  # GetErrorMessage
    ctypes.CFUNCTYPE(None, ctypes.c_void_p)(api[93])(status)  # ReleaseStatus
""")


@needs_library
def test_an_older_runtime_is_refused_with_the_reason():
    """A runtime without API version 16 gets an error status naming both
    versions, built from the version-1 table every runtime has."""
    runtime = _c_runtime()
    result = subprocess.run([sys.executable, "-c", _OLDER_RUNTIME, str(runtime), LIBRARY],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ("sam_edge_ops needs ONNX Runtime API version 16 (onnxruntime 1.16 or later); "
                                     "this runtime is 1.15.1")


# ---- RelPosAttention ----

@needs_library
@needs_avx512
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_rel_pos_attention_fp32_matches_float64(shape):
    batch, grid, heads, d, window, with_bias = shape
    qkv, rel_pos_h, rel_pos_w, kv_bias = qkv_inputs(batch, grid, heads, d, window, seed=sum(grid) + d + window)
    kv_bias = kv_bias if with_bias else None
    scale = d ** -0.5
    (ours,) = _attention_session(heads, window, scale, with_bias=with_bias).run(
        None, _feeds(qkv, rel_pos_h, rel_pos_w, kv_bias))
    ref = rel_pos_attention_qkv_reference(qkv, rel_pos_h, rel_pos_w, kv_bias, heads, window, scale)
    baseline = _rel(rel_pos_attention_qkv_reference(qkv, rel_pos_h, rel_pos_w, kv_bias, heads, window, scale,
                                                    dtype=np.float32), ref)
    assert ours.shape == (batch, *grid, heads * d) and ours.dtype == np.float32
    assert _rel(ours, ref) <= 4 * baseline, (_rel(ours, ref), baseline)


#: The CPU features each reduced compute runs on (the kernel's test states the bounds).
_REDUCED_FEATURE = {"fp16": "AVX512-FP16", "bf16": "AMX-BF16 or AVX512-BF16"}
_REDUCED_CASES = [(s, c) for c in ("fp16", "bf16") for s in SHAPES
                  if s[3] == 64 or (c == "bf16" and s[3] == 80)]


@needs_library
@needs_avx512
@pytest.mark.parametrize("shape, compute", _REDUCED_CASES,
                         ids=[f"{c}-{_ids[SHAPES.index(s)]}" for s, c in _REDUCED_CASES])
def test_rel_pos_attention_reduced_compute_within_torch_error(shape, compute):
    batch, grid, heads, d, window, with_bias = shape
    if fast_compute(d, (window or grid[0], window or grid[1]), compute) != compute:
        pytest.skip(f"this CPU has no {_REDUCED_FEATURE[compute]} path for this shape (for AMX: or the OS "
                    "does not grant it)")
    torch = pytest.importorskip("torch")
    # The kernel's own baseline and multiples, so the op is held to exactly its bounds.
    from tests.kernels.test_cpu_attention import REDUCED_COMPUTE, _torch_reduced_qkv

    qkv, rel_pos_h, rel_pos_w, kv_bias = qkv_inputs(batch, grid, heads, d, window, seed=5 + sum(grid) + window)
    scale = d ** -0.5
    (ours,) = _attention_session(heads, window, scale, compute=compute).run(
        None, _feeds(qkv, rel_pos_h, rel_pos_w, kv_bias))
    ref = rel_pos_attention_qkv_reference(qkv, rel_pos_h, rel_pos_w, kv_bias, heads, window, scale)
    dtype = torch.float16 if compute == "fp16" else torch.bfloat16
    baseline = _rel(_torch_reduced_qkv(torch, qkv, rel_pos_h, rel_pos_w, kv_bias, heads, window, scale, dtype), ref)
    factor = REDUCED_COMPUTE[compute][1]
    assert _rel(ours, ref) <= factor * baseline, (_rel(ours, ref), baseline)


@needs_library
@needs_avx512
@pytest.mark.parametrize("compute", ["fp16", "bf16"])
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[5]], ids=[_ids[0], _ids[5]])
def test_reduced_compute_runs_the_nearest_path_this_cpu_has(compute, shape):
    """The attribute allows reduced arithmetic; where the CPU (or the shape) has no
    path for it, the op runs the next one down (fast_compute's rule), so a graph
    runs unchanged on every AVX-512 CPU: bit for bit the op, and the kernel, at
    that compute."""
    batch, grid, heads, d, window, _ = shape
    qkv, rel_pos_h, rel_pos_w, kv_bias = qkv_inputs(batch, grid, heads, d, window, seed=17 + d)
    scale = d ** -0.5
    runs = fast_compute(d, (window or grid[0], window or grid[1]), compute) or "fp32"
    feeds = _feeds(qkv, rel_pos_h, rel_pos_w, kv_bias)
    (asked,) = _attention_session(heads, window, scale, compute=compute).run(None, feeds)
    (nearest,) = _attention_session(heads, window, scale, compute=runs).run(None, feeds)
    np.testing.assert_array_equal(asked, nearest)
    # The kernel itself at that compute, through sam_edge._C: the op picks what the kernel's rule picks.
    kernel = rel_pos_attention_qkv(qkv, rel_pos_h, rel_pos_w, kv_bias, heads, window, scale, compute=runs)
    np.testing.assert_array_equal(asked, kernel)
    ref = rel_pos_attention_qkv_reference(qkv, rel_pos_h, rel_pos_w, kv_bias, heads, window, scale)
    assert _rel(asked, ref) <= 1e-2, _rel(asked, ref)  # within the loosest (bf16) bound of any path


@needs_library
@needs_avx512
def test_bad_attributes_are_onnxruntime_errors():
    with pytest.raises(Exception, match='RelPosAttention: compute must be "fp32", "fp16" or "bf16"; got "int4"'):
        _attention_session(2, 7, 0.125, compute="int4")
    with pytest.raises(Exception, match="RelPosAttention: heads must be >= 1"):
        _attention_session(0, 7, 0.125)
    graph = _attention_graph({"heads": 2, "scale": 0.125})  # no window
    with pytest.raises(Exception, match="RelPosAttention: needs the int attribute window"):
        ort.InferenceSession(graph, _session_options(), providers=["CPUExecutionProvider"])


@needs_library
@needs_avx512
def test_bad_shapes_are_onnxruntime_errors_and_the_session_survives_them():
    qkv, rel_pos_h, rel_pos_w, kv_bias = qkv_inputs(1, (10, 10), 2, 16, 4, seed=2)
    session = _attention_session(2, 4, 0.25)
    bad = [
        (dict(qkv=qkv[..., :-1]), r"expected qkv \(B, H, W, 3 \* heads \* D\) with heads 2; got \(1, 10, 10, 95\)"),
        (dict(qkv=qkv[0]), r"expected qkv \(B, H, W, 3 \* heads \* D\)"),
        (dict(rel_pos_h=rel_pos_h[:-1]), r"expected rel_pos_h \(7, 16\) and rel_pos_w \(7, 16\)"),
        (dict(kv_bias=kv_bias[:, :1]), r"expected kv_bias \(2, 2, 16\)"),
    ]
    good = _feeds(qkv, rel_pos_h, rel_pos_w, kv_bias)
    for change, message in bad:
        with pytest.raises(Exception, match="RelPosAttention: " + message):
            session.run(None, {**good, **change})
    # 10 x 10 tokens in 4 x 4 windows pad the grid: the kernel's own refusal, passed through.
    with pytest.raises(Exception, match="the windows pad the grid, so kv_bias is needed"):
        _attention_session(2, 4, 0.25, with_bias=False).run(None, _feeds(qkv, rel_pos_h, rel_pos_w, None))
    (out,) = session.run(None, good)
    ref = rel_pos_attention_qkv_reference(qkv, rel_pos_h, rel_pos_w, kv_bias, 2, 4, 0.25)
    assert _rel(out, ref) < 1e-5  # after the errors, the same session still computes


@needs_library
@needs_avx512
def test_two_sessions_register_the_library_independently():
    """Each registration adds the domain to its own options; both sessions run."""
    inputs = qkv_inputs(1, (16, 16), 2, 64, 0, seed=3)
    first = _attention_session(2, 0, 0.125).run(None, _feeds(*inputs))[0]
    second = _attention_session(2, 0, 0.125).run(None, _feeds(*inputs))[0]
    np.testing.assert_array_equal(first, second)


# ---- LayerNorm ----

def layer_norm_reference(x, weight, bias, epsilon, dtype=np.float64):
    """torch.nn.LayerNorm over the last axis, in numpy: float64 by default;
    float32 gives the same-precision baseline."""
    x, weight, bias = (np.asarray(a, dtype=dtype) for a in (x, weight, bias))
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + dtype(epsilon)) * weight + bias


def _layer_norm_session(epsilon=1e-6, threads=1):
    names = ["X", "scale", "B"]
    attributes = {} if epsilon is None else {"epsilon": epsilon}
    node = helper.make_node("LayerNorm", names, ["Y"], domain=DOMAIN, **attributes)
    info = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in names + ["Y"]]
    graph = helper.make_graph([node], "layer_norm", info[:3], info[3:])
    model = helper.make_model(graph, ir_version=8, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)])
    return ort.InferenceSession(model.SerializeToString(), _session_options(threads),
                                providers=["CPUExecutionProvider"])


def _layer_norm_inputs(shape, offset, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2.0 + offset).astype(np.float32)
    weight = rng.standard_normal(shape[-1]).astype(np.float32)
    bias = rng.standard_normal(shape[-1]).astype(np.float32)
    return x, weight, bias


# (X's shape, the rows' mean)
LAYER_NORM_SHAPES = [
    ((1, 16, 16, 768), 5.0),   # ViT-B's width over a token grid
    ((3, 5, 1024), 0.0),       # ViT-L's width, centred rows
    ((2, 7, 9, 1280), 5.0),    # ViT-H's width
    ((64, 768), 100.0),        # rows whose mean dwarfs their spread
    ((1, 4, 37), 30.0),        # a width with a partial last lane group
]


@needs_library
@needs_avx512
@pytest.mark.parametrize("shape, offset", LAYER_NORM_SHAPES, ids=lambda v: str(v))
def test_layer_norm_fp32_matches_float64(shape, offset):
    x, weight, bias = _layer_norm_inputs(shape, offset, seed=sum(shape))
    (ours,) = _layer_norm_session(1e-6).run(None, {"X": x, "scale": weight, "B": bias})
    ref = layer_norm_reference(x, weight, bias, 1e-6)
    baseline = _rel(layer_norm_reference(x, weight, bias, 1e-6, dtype=np.float32), ref)
    assert ours.shape == shape and ours.dtype == np.float32
    assert _rel(ours, ref) <= 4 * baseline, (_rel(ours, ref), baseline)


@needs_library
@needs_avx512
def test_layer_norm_bad_inputs_are_onnxruntime_errors():
    x, weight, bias = _layer_norm_inputs((2, 8), 1.0, seed=4)
    session = _layer_norm_session(1e-6)
    with pytest.raises(Exception, match=r"LayerNorm: expected scale and B \(8,\), X's last axis; got \(7,\) and"):
        session.run(None, {"X": x, "scale": weight[:-1], "B": bias})
    with pytest.raises(Exception, match="LayerNorm: expected X"):
        session.run(None, {"X": np.array(1.0, dtype=np.float32), "scale": weight, "B": bias})
    with pytest.raises(Exception, match="LayerNorm: needs the float attribute epsilon"):
        _layer_norm_session(None)
    with pytest.raises(Exception, match="LayerNorm: epsilon must be finite and >= 0"):
        _layer_norm_session(-1.0)


# ---- GeluQuantizeLinear ----

def _one_node_session(op_type, inputs, outputs, threads=1, **attributes):
    """A one-node model in our domain; inputs and outputs as (name, TensorProto type)."""
    node = helper.make_node(op_type, [n for n, _ in inputs], [n for n, _ in outputs], domain=DOMAIN, **attributes)
    info = [helper.make_tensor_value_info(name, kind, None) for name, kind in inputs + outputs]
    graph = helper.make_graph([node], op_type, info[:len(inputs)], info[len(inputs):])
    model = helper.make_model(graph, ir_version=8, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)])
    return ort.InferenceSession(model.SerializeToString(), _session_options(threads),
                                providers=["CPUExecutionProvider"])


def quantize_reference(v, y_zero_point):
    """ONNX QuantizeLinear of v = x / y_scale, already divided (float64): round half
    to even, add the zero point, saturate to uint8."""
    return np.clip(np.rint(v) + int(y_zero_point), 0, 255).astype(np.uint8)


def _boundary_distance(v):
    """How far each v lies from the nearest rounding boundary (a half-integer), in steps."""
    return np.abs(v - np.floor(v) - 0.5)


def _assert_quantized_equal(ours, v, y_zero_point, window):
    """ours equals quantize_reference(v) wherever v is farther than `window` (steps,
    per element) from a boundary, and is within one step everywhere. The window
    must leave most values to the exact check."""
    ref = quantize_reference(v, y_zero_point)
    near = _boundary_distance(v) <= window
    diff = ours.astype(np.int64) - ref.astype(np.int64)
    assert ours.dtype == np.uint8 and ours.shape == ref.shape
    assert not np.any(diff[~near]), (f"{np.count_nonzero(diff[~near])} values away from a boundary differ; "
                                     f"first at v = {v[~near][diff[~near] != 0][:4]}")
    assert np.abs(diff).max() <= 1
    assert near.mean() < 0.02, near.mean()  # the exact check covers nearly every value


def gelu_reference(x):
    """Exact GELU, x * Phi(x), in float64 (Phi from erfc, accurate in both tails)."""
    x = np.asarray(x, dtype=np.float64)
    phi = 0.5 * np.vectorize(math.erfc, otypes=[np.float64])(-x / math.sqrt(2.0))
    return x * phi


def _gelu_quantize_session(threads=1):
    return _one_node_session("GeluQuantizeLinear", [("X", TensorProto.FLOAT), ("y_scale", TensorProto.FLOAT),
                                                    ("y_zero_point", TensorProto.UINT8)], [("Y", TensorProto.UINT8)],
                             threads=threads)


def _gelu_inputs(shape, seed):
    """N(0, 2^2) values, a lin1 output's spread, with some far into both tails and
    the table's edges (+-6) planted, so saturation and the tails are exercised."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2.0).astype(np.float32)
    flat = x.reshape(-1)
    special = np.array([-1e4, -40.0, -6.0, -5.999, 5.999, 6.0, 40.0, 1e4, 0.0, -0.0], dtype=np.float32)
    picks = rng.choice(flat.size, size=min(flat.size, 4 * special.size), replace=False)
    flat[picks] = np.resize(special, picks.size)
    return x


# (X's shape, y_scale, y_zero_point)
GELU_QUANTIZE_CASES = [
    ((1, 16, 16, 3072), 0.0173, 11),  # ViT-B's MLP width over a token grid; a calibrated zero point
    ((2, 7, 9, 768), 0.04, 0),        # batch of 2; saturation at both ends
    ((3, 5, 37), 0.011, 128),         # a width with a partial last vector
    ((20,), 0.5, 200),                # one short row, a coarse scale
]


@needs_library
@needs_avx512
@pytest.mark.parametrize("shape, y_scale, y_zero_point", GELU_QUANTIZE_CASES, ids=lambda v: str(v))
def test_gelu_quantize_matches_float64(shape, y_scale, y_zero_point):
    x = _gelu_inputs(shape, seed=sum(shape) + y_zero_point)
    scale = np.float32(y_scale)
    (ours,) = _gelu_quantize_session().run(None, {"X": x, "y_scale": np.array(scale),
                                                  "y_zero_point": np.array(y_zero_point, dtype=np.uint8)})
    gelu = gelu_reference(x)
    v = gelu / float(scale)
    # csrc/gelu_quantize.h's bound: Phi within 2^-23 (times |x|), then the product
    # and the division each round once.
    window = 4 * 2.0 ** -24 * (np.abs(x) + np.abs(gelu)) / float(scale)
    _assert_quantized_equal(ours, v, y_zero_point, window)
    ref = quantize_reference(v, y_zero_point)
    assert ref.min() == 0 or ref.max() == 255 or len(shape) == 1, "the inputs should reach saturation"


@needs_library
@needs_avx512
def test_gelu_quantize_bad_inputs_are_onnxruntime_errors():
    session = _gelu_quantize_session()
    x = _gelu_inputs((2, 8), seed=3)
    good = {"X": x, "y_scale": np.array(0.02, np.float32), "y_zero_point": np.array(3, np.uint8)}
    bad = [
        (dict(y_scale=np.array([0.02, 0.03], np.float32)),
         r"expected y_scale and y_zero_point per tensor \(a scalar or \(1,\)\); got \(2,\) and \(\)"),
        (dict(y_scale=np.array(0.0, np.float32)), "y_scale must be finite and > 0"),
        (dict(y_scale=np.array(np.inf, np.float32)), "y_scale must be finite and > 0"),
    ]
    for change, message in bad:
        with pytest.raises(Exception, match="GeluQuantizeLinear: " + message):
            session.run(None, {**good, **change})
    # A wrong element type is ORT's own type check, before the kernel runs.
    with pytest.raises(Exception, match=r"expected: \(tensor\(uint8\)\)"):
        session.run(None, {**good, "y_zero_point": np.array(3, np.int8)})
    (out,) = session.run(None, {**good, "y_scale": np.array([0.02], np.float32)})  # (1,) is per tensor too
    _assert_quantized_equal(out, gelu_reference(x) / float(np.float32(0.02)), 3,
                            4 * 2.0 ** -24 * (np.abs(x) + np.abs(gelu_reference(x))) / 0.02)
    empty = session.run(None, {**good, "X": np.zeros((0, 8), np.float32)})[0]
    assert empty.shape == (0, 8) and empty.dtype == np.uint8


# ---- LayerNormQuantizeLinear, SkipLayerNormQuantizeLinear ----

def _layer_norm_quantize_session(with_skip, epsilon=1e-6, threads=1):
    floats = ["X", "skip", "scale", "B", "y_scale"] if with_skip else ["X", "scale", "B", "y_scale"]
    inputs = [(n, TensorProto.FLOAT) for n in floats] + [("y_zero_point", TensorProto.UINT8)]
    outputs = [("Y", TensorProto.UINT8)] + ([("sum", TensorProto.FLOAT)] if with_skip else [])
    attributes = {} if epsilon is None else {"epsilon": epsilon}
    op = "SkipLayerNormQuantizeLinear" if with_skip else "LayerNormQuantizeLinear"
    return _one_node_session(op, inputs, outputs, threads=threads, **attributes)


def layer_norm_error_window(x, weight, bias, y_scale, epsilon):
    """The float32 error bound of LayerNorm's value, in quantization steps, per element:
    each lane of the kernel sums n / 16 terms and 16 lanes are added after, so a sum
    is within (n / 16 + 16) roundings of exact; the mean's error reaches each value
    scaled by inv_std, the variance's through the square root and the reciprocal
    (a few more roundings), and the last multiply-add rounds twice."""
    x = x.astype(np.float64)
    n = x.shape[-1]
    gamma = (n / 16 + 24) * 2.0 ** -24
    mean = x.mean(axis=-1, keepdims=True)
    inv_std = 1.0 / np.sqrt(((x - mean) ** 2).mean(axis=-1, keepdims=True) + epsilon)
    z = (x - mean) * inv_std
    w, b = np.abs(weight.astype(np.float64)), np.abs(bias.astype(np.float64))
    return gamma * (w * (inv_std * np.abs(x).mean(axis=-1, keepdims=True) + np.abs(z)) + b) / float(y_scale)


# (X's shape, the rows' mean, y_scale, y_zero_point)
LAYER_NORM_QUANTIZE_CASES = [
    ((1, 16, 16, 768), 5.0, 0.03, 128),  # ViT-B's width over a token grid; saturates at both ends
    ((3, 5, 1024), 0.0, 0.05, 3),        # ViT-L's width, centred rows
    ((2, 7, 9, 1280), 5.0, 0.04, 90),    # ViT-H's width
    ((64, 768), 100.0, 0.04, 100),       # rows whose mean dwarfs their spread
    ((1, 4, 37), 30.0, 0.02, 128),       # a width with a partial last vector
]


@needs_library
@needs_avx512
@pytest.mark.parametrize("with_skip", [False, True], ids=["plain", "skip"])
@pytest.mark.parametrize("shape, offset, y_scale, y_zero_point", LAYER_NORM_QUANTIZE_CASES, ids=lambda v: str(v))
def test_layer_norm_quantize_matches_float64(shape, offset, y_scale, y_zero_point, with_skip):
    x, weight, bias = _layer_norm_inputs(shape, offset, seed=sum(shape) + y_zero_point)
    feeds = {"X": x, "scale": weight, "B": bias, "y_scale": np.array(y_scale, np.float32),
             "y_zero_point": np.array(y_zero_point, np.uint8)}
    normalized = x
    if with_skip:
        # The residual and the block's output: the sum is what gets normalised.
        residual, skip = x, np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
        feeds["skip"] = skip
        normalized = residual + skip  # float32, as ONNX's Add
    outputs = _layer_norm_quantize_session(with_skip).run(None, feeds)
    if with_skip:
        np.testing.assert_array_equal(outputs[1], normalized)
    scale = float(np.float32(y_scale))
    v = layer_norm_reference(normalized, weight, bias, 1e-6) / scale
    _assert_quantized_equal(outputs[0], v, y_zero_point,
                            layer_norm_error_window(normalized, weight, bias, scale, 1e-6))
    # Its float value is the LayerNorm op's, bit for bit: only QuantizeLinear's own rounding is added.
    (layer_norm,) = _layer_norm_session(1e-6).run(None, {"X": normalized, "scale": weight, "B": bias})
    quantized = np.clip(np.rint(layer_norm / np.float32(y_scale)) + y_zero_point, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(outputs[0], quantized)


@needs_library
@needs_avx512
def test_layer_norm_quantize_bad_inputs_are_onnxruntime_errors():
    x, weight, bias = _layer_norm_inputs((2, 8), 1.0, seed=4)
    quantize = {"y_scale": np.array(0.05, np.float32), "y_zero_point": np.array(128, np.uint8)}
    plain, skip = _layer_norm_quantize_session(False), _layer_norm_quantize_session(True)
    good = {"X": x, "scale": weight, "B": bias, **quantize}
    with pytest.raises(Exception, match=r"LayerNormQuantizeLinear: expected scale and B \(8,\), X's last axis"):
        plain.run(None, {**good, "B": bias[:-1]})
    with pytest.raises(Exception, match="LayerNormQuantizeLinear: expected X"):
        plain.run(None, {**good, "X": np.array(1.0, np.float32)})
    with pytest.raises(Exception, match="LayerNormQuantizeLinear: y_scale must be finite and > 0"):
        plain.run(None, {**good, "y_scale": np.array(-0.05, np.float32)})
    with pytest.raises(Exception, match=r"SkipLayerNormQuantizeLinear: expected skip shaped like X \(2, 8\); got \(1, 8\)"):
        skip.run(None, {**good, "skip": x[:1]})
    with pytest.raises(Exception, match="LayerNormQuantizeLinear: needs the float attribute epsilon"):
        _layer_norm_quantize_session(False, epsilon=None)
    (out,) = plain.run(None, good)  # the session still computes after its errors
    v = layer_norm_reference(x, weight, bias, 1e-6) / float(np.float32(0.05))
    _assert_quantized_equal(out, v, 128, layer_norm_error_window(x, weight, bias, 0.05, 1e-6))


# ---- on the session's intra-op pool ----
#
# Each op's loops run as tasks on ORT's intra-op pool (onnxruntime >= 1.17), a
# task's arithmetic the same whichever thread runs it and however the work is
# cut: at 1, 2 and 3 threads (3 is more than this 2-core host has) the op equals
# the OpenMP kernel of sam_edge._C bit for bit, and itself at one thread.

POOL_THREADS = [1, 2, 3]
needs_pool = pytest.mark.skipif(
    tuple(int(p) for p in ort.__version__.split(".")[:2]) < (1, 17),
    reason=f"onnxruntime {ort.__version__} has no KernelContext_ParallelFor (1.17): the ops run on OpenMP")
# Global and windowed, ViT-B's and ViT-H's head_dim, and the portable loop's odd head_dim.
_POOL_SHAPES = [SHAPES[0], SHAPES[1], SHAPES[4], SHAPES[5], SHAPES[6]]


@needs_library
@needs_avx512
@needs_pool
@pytest.mark.parametrize("threads", POOL_THREADS)
@pytest.mark.parametrize("compute", ["fp32", "bf16"])
@pytest.mark.parametrize("shape", _POOL_SHAPES, ids=[_ids[SHAPES.index(s)] for s in _POOL_SHAPES])
def test_rel_pos_attention_on_the_pool_equals_the_kernel(shape, compute, threads):
    batch, grid, heads, d, window, with_bias = shape
    k_size = (window or grid[0], window or grid[1])
    if compute == "bf16" and not (STATUS["avx512_bf16"] or STATUS["amx_bf16"]):
        pytest.skip(f"this CPU has no bf16 path (it needs {_REDUCED_FEATURE['bf16']})")
    if compute == "bf16" and fast_compute(d, k_size, "bf16") != "bf16":
        pytest.skip(f"no bf16 path takes head_dim {d}: the op runs fp32 there, the fp32 case")
    if compute == "bf16" and STATUS["amx_bf16"]:
        pytest.skip("bf16 runs on AMX here, which keeps its OpenMP team; the AVX512-BF16 path is not reached")
    qkv, rel_pos_h, rel_pos_w, kv_bias = qkv_inputs(batch, grid, heads, d, window, seed=sum(grid) + d + threads)
    kv_bias = kv_bias if with_bias else None
    scale = d ** -0.5
    (ours,) = _attention_session(heads, window, scale, compute=compute, with_bias=with_bias, threads=threads).run(
        None, _feeds(qkv, rel_pos_h, rel_pos_w, kv_bias))
    kernel = rel_pos_attention_qkv(qkv, rel_pos_h, rel_pos_w, kv_bias, heads, window, scale, compute=compute)
    np.testing.assert_array_equal(ours, kernel)


# The elementwise ops' kernels have no sam_edge._C binding: each row is one
# task's, so the op at several threads equals the op at one, whose float64 tests
# are above. Widths: ViT-B's norm and MLP over a 32 x 32 grid, and rows of 37
# that leave the last task short.
_ELEMENTWISE_WIDTHS = [768, 3072, 37]


def _elementwise_outputs(op, width, threads):
    x, weight, bias = _layer_norm_inputs((1, 1000 if width == 37 else 1024, width), 5.0, seed=width)
    quantize = {"y_scale": np.array(0.03, np.float32), "y_zero_point": np.array(128, np.uint8)}
    if op == "LayerNorm":
        return _layer_norm_session(1e-6, threads=threads).run(None, {"X": x, "scale": weight, "B": bias})
    if op == "GeluQuantizeLinear":
        return _gelu_quantize_session(threads).run(None, {"X": x, **quantize})
    with_skip = op == "SkipLayerNormQuantizeLinear"
    feeds = {"X": x, "scale": weight, "B": bias, **quantize}
    if with_skip:
        feeds["skip"] = np.random.default_rng(width).standard_normal(x.shape).astype(np.float32)
    return _layer_norm_quantize_session(with_skip, threads=threads).run(None, feeds)


@needs_library
@needs_avx512
@needs_pool
@pytest.mark.parametrize("threads", POOL_THREADS[1:])
@pytest.mark.parametrize("width", _ELEMENTWISE_WIDTHS)
@pytest.mark.parametrize("op", ["LayerNorm", "GeluQuantizeLinear", "LayerNormQuantizeLinear",
                                "SkipLayerNormQuantizeLinear"])
def test_elementwise_ops_on_the_pool_equal_one_thread(op, width, threads):
    one = _elementwise_outputs(op, width, 1)
    many = _elementwise_outputs(op, width, threads)
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a, b)


# ---- loading ----

def test_a_missing_library_is_a_clear_error(monkeypatch, tmp_path):
    missing = str(tmp_path / "libsam_edge_ops.so")
    with pytest.raises(Exception, match="Failed to load library .*libsam_edge_ops.so"):
        ort.SessionOptions().register_custom_ops_library(missing)
    monkeypatch.setenv(LIBRARY_ENV, missing)
    with pytest.raises(FileNotFoundError, match=f"{LIBRARY_ENV} names .*, which is not a file"):
        register_ort_ops(ort.SessionOptions())


@needs_library
def test_a_cpu_without_avx512_is_refused_with_the_reason():
    if STATUS["avx512"] or not STATUS["available"]:
        pytest.skip("this CPU has AVX-512 (or sam_edge._C, which reports it, is not built): the library loads")
    with pytest.raises(Exception, match="this CPU has no AVX-512, which sam_edge_ops' kernels need"):
        register_ort_ops(ort.SessionOptions())
