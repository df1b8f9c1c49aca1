"""examples/cpp/sam_edge_example, built with g++ and run as a C++ host would run
it: onnxruntime's C library dlopened, sam-edge's op library registered, a
bundle's encoder and decoder graphs loaded from its manifest.

With --ops the example loads the bundle's encoder_ops.onnx (the encoder as one
graph of standard ops and sam_edge_ops' RelPosAttention nodes); without it,
encoder.onnx. Its outputs are checked against the Python runtime's on the same
bundle and inputs: sam_edge.load(bundle), which runs encoder_ops.onnx too where
the library registers (an AVX-512 CPU), else sam_edge.load(bundle,
native_attention=False), the standard graph.

Tolerance, rel-L2 <= 1e-5 for the embedding, the logits and the scores:
- the same graphs in the same onnxruntime build with the same thread count are
  bit-identical in practice; the bound leaves room only for a change of
  summation order between runs (a few float32 ulps through the layers);
- the standard graph against the ops graph (the example without --ops, the
  Python runtime with it): both compute the attention in float32 (the bundle's
  encoder_ops compute is fp32, asserted), differing by summation order and
  exp's approximation, again a few ulps per element, an order of magnitude
  below the bound.
Either way the bound is orders of magnitude below what a mistake in the feed or
the preprocessing shows (a point moved by one pixel exceeds it by far). Masks
may differ only at pixels whose logit is within 1e-4 of the threshold
(sam_edge.postprocess's own agreement with torch).
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

from onnx_helpers import build_test_bundle, reduced_config, rel_l2  # noqa: E402
import sam_edge  # noqa: E402
from sam_edge import postprocess  # noqa: E402
from sam_edge.kernels.cpu_attention import cpu_kernel_status  # noqa: E402
from sam_edge.runtime.ort_ops import library_path  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cpp"
RUNTIME = Path(ort.__file__).parent / "capi" / f"libonnxruntime.so.{ort.__version__}"
OPS = library_path()
# The library refuses a CPU without AVX-512 (csrc/ort/sam_edge_ops.h); the
# example then runs the bundle's standard-op graphs without it.
OPS_USABLE = OPS is not None and os.path.isfile(OPS) and cpu_kernel_status()["avx512"]
NO_OPS = "sam_edge_ops is not built, or this CPU has no AVX-512 and the library refuses it"
THREADS = 2
WIDTH, HEIGHT, POINT = 256, 176, (150.0, 90.0)  # landscape, so the frame pads below the image
TOLERANCE = 1e-5  # rel-L2, see the module docstring


def structured_image(seed: int) -> np.ndarray:
    """(HEIGHT, WIDTH, 3) uint8: a colour gradient, a disk and a bar of their own
    colours, and noise, so that the encoder sees edges and the point lands on an object."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    image = np.stack([x / WIDTH * 200, y / HEIGHT * 180, 60 + 0 * x], axis=-1)
    disk = (x - POINT[0]) ** 2 + (y - POINT[1]) ** 2 < 40**2
    image[disk] = rng.uniform(0, 255, 3)
    image[20:50, 10:120] = rng.uniform(0, 255, 3)
    image += rng.normal(0, 12, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The example's path, built by examples/cpp/build.sh."""
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        pytest.skip(f"no C++ compiler ({compiler}) to build examples/cpp")
    if not RUNTIME.is_file():
        pytest.skip(f"this onnxruntime ships no C library at {RUNTIME}")
    out = tmp_path_factory.mktemp("cpp_example") / "sam_edge_example"
    built = subprocess.run(["sh", str(EXAMPLE / "build.sh"), str(out)], capture_output=True, text=True, timeout=180)
    assert built.returncode == 0, built.stderr
    return out


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """An fp32 bundle with both encoders: encoder.onnx and encoder_ops.onnx."""
    root = tmp_path_factory.mktemp("cpp_bundle")
    _, _, path = build_test_bundle(root, reduced_config(), seed=21, official_decoder=False)
    ops = json.loads((path / "manifest.json").read_text()).get("encoder_ops")
    assert ops is not None and ops["compute"] == "fp32", ops
    return path


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """(the image, its .rgb file) for every run."""
    image = structured_image(seed=5)
    path = tmp_path_factory.mktemp("cpp_image") / "image.rgb"
    image.tofile(path)
    return image, path


@pytest.fixture(scope="module")
def reference(bundle, image):
    """The Python runtime's (embedding, all four tokens' logits, scores) for the image and the point."""
    if OPS_USABLE:
        engine = sam_edge.load(bundle, threads=THREADS)
        assert engine.encoder_mode.startswith("one graph"), engine.encoder_mode
    else:
        engine = sam_edge.load(bundle, threads=THREADS, native_attention=False)
        assert engine.encoder_mode == "single ONNX Runtime graph"
    embedding = engine.embed(image[0].transpose(2, 0, 1)[None])
    coords, labels = np.array([[POINT]], np.float32), np.ones((1, 1), np.float32)
    # All four mask tokens, as the graph returns them: the single-mask token, then the three.
    one_logits, one_scores = engine.decode(embedding, coords, labels, None, None, multimask_output=False)
    three_logits, three_scores = engine.decode(embedding, coords, labels, None, None, multimask_output=True)
    logits = np.concatenate([one_logits, three_logits], axis=1)
    scores = np.concatenate([one_scores, three_scores], axis=1)
    return embedding, logits, scores, engine.image_size


def _run(example, *args, timeout=120):
    return subprocess.run([str(example), "--runtime", str(RUNTIME), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def _run_on_image(example, bundle, image, out_dir, ops):
    """The example's stdout for one run on the image and the point, outputs in out_dir."""
    out_dir.mkdir()
    result = _run(example, *(["--ops", OPS] if ops else []), "--threads", THREADS, bundle, image[1], WIDTH, HEIGHT,
                  *POINT, out_dir)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _assert_matches(out_dir, reference):
    embedding, logits, scores, image_size = reference
    cpp_embedding = np.fromfile(out_dir / "image_embeddings.f32", np.float32).reshape(embedding.shape)
    cpp_logits = np.fromfile(out_dir / "low_res_masks.f32", np.float32).reshape(logits.shape)
    cpp_scores = np.fromfile(out_dir / "iou_predictions.f32", np.float32).reshape(scores.shape)
    assert rel_l2(cpp_embedding, embedding) <= TOLERANCE
    assert rel_l2(cpp_logits, logits) <= TOLERANCE
    assert rel_l2(cpp_scores, scores) <= TOLERANCE

    masks, _, _, upscaled = postprocess.upsample_threshold_stability(
        logits, (HEIGHT, WIDTH), (HEIGHT, WIDTH), frame_size=image_size, return_logits=True)
    cpp_masks = np.fromfile(out_dir / "masks.u8", np.uint8).reshape(masks.shape).astype(bool)
    differ = cpp_masks != masks
    assert not np.any(differ & (np.abs(upscaled) > 1e-4)), "masks differ away from the threshold"
    assert 0 < masks[0, 1].sum() < masks[0, 1].size, "a degenerate mask checks nothing"


@pytest.mark.parametrize("ops", [True, False], ids=["with_ops", "without_ops"])
def test_outputs_match_the_python_runtime(example, bundle, image, reference, ops, tmp_path):
    if ops and not OPS_USABLE:
        pytest.skip(NO_OPS)
    stdout = _run_on_image(example, bundle, image, tmp_path / "out", ops).splitlines()
    assert f"op library: {OPS if ops else 'none'}" in stdout
    assert f"encoder: {'encoder_ops.onnx' if ops else 'encoder.onnx'}" in stdout
    _assert_matches(tmp_path / "out", reference)


def _variant(bundle, root, manifest_edit, drop=()):
    """A copy of the bundle (its graphs linked, not copied) with an edited manifest and without the files in `drop`."""
    root.mkdir()
    for path in bundle.iterdir():
        if path.name != "manifest.json" and path.name not in drop:
            (root / path.name).symlink_to(path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest_edit(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_with_ops_a_bundle_without_encoder_ops_runs_the_standard_graph(example, bundle, image, reference, tmp_path):
    if not OPS_USABLE:
        pytest.skip(NO_OPS)
    older = _variant(bundle, tmp_path / "bundle", lambda m: m.pop("encoder_ops"), drop=("encoder_ops.onnx",))
    stdout = _run_on_image(example, older, image, tmp_path / "out", ops=True).splitlines()
    assert f"op library: {OPS}" in stdout and "encoder: encoder.onnx" in stdout
    _assert_matches(tmp_path / "out", reference)


def _one_error_line(result, expected):
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("sam_edge_example: error:") and expected in lines[0], result.stderr


def test_a_missing_bundle_is_one_clear_error(example, tmp_path):
    (tmp_path / "image.rgb").write_bytes(bytes(WIDTH * HEIGHT * 3))
    result = _run(example, tmp_path / "no-bundle", tmp_path / "image.rgb", WIDTH, HEIGHT, *POINT, tmp_path)
    _one_error_line(result, f"bundle not found: {tmp_path / 'no-bundle'}")


def test_encoder_ops_naming_a_missing_file_is_one_clear_error(example, bundle, tmp_path):
    """Refused with or without --ops: the manifest lists the file, so the bundle is
    incomplete, as sam_edge.load would say."""
    (tmp_path / "image.rgb").write_bytes(bytes(WIDTH * HEIGHT * 3))
    damaged = _variant(bundle, tmp_path / "bundle", lambda m: None, drop=("encoder_ops.onnx",))
    result = _run(example, damaged, tmp_path / "image.rgb", WIDTH, HEIGHT, *POINT, tmp_path)
    _one_error_line(result, f"bundle {damaged} is incomplete: {damaged / 'encoder_ops.onnx'} is missing")


def test_encoder_ops_of_another_domain_version_is_one_clear_error(example, bundle, tmp_path):
    (tmp_path / "image.rgb").write_bytes(bytes(WIDTH * HEIGHT * 3))
    newer = _variant(bundle, tmp_path / "bundle", lambda m: m["encoder_ops"].update(domain_version=2))
    result = _run(example, newer, tmp_path / "image.rgb", WIDTH, HEIGHT, *POINT, tmp_path)
    _one_error_line(result, "encoder_ops needs the op domain ai.sam_edge version 2; "
                            "this example knows ai.sam_edge version 1")


def test_a_missing_op_library_is_one_clear_error(example, bundle, tmp_path):
    (tmp_path / "image.rgb").write_bytes(bytes(WIDTH * HEIGHT * 3))
    missing = tmp_path / "libsam_edge_ops.so"
    result = _run(example, "--ops", missing, bundle, tmp_path / "image.rgb", WIDTH, HEIGHT, *POINT, tmp_path)
    _one_error_line(result, f"op library not found: {missing}")


def test_a_file_that_is_not_an_op_library_is_onnxruntimes_error_in_one_line(example, bundle, tmp_path):
    (tmp_path / "image.rgb").write_bytes(bytes(WIDTH * HEIGHT * 3))
    (tmp_path / "not_a_library.so").write_text("not a shared library\n")
    result = _run(example, "--ops", tmp_path / "not_a_library.so", bundle, tmp_path / "image.rgb", WIDTH, HEIGHT,
                  *POINT, tmp_path)
    _one_error_line(result, "cannot register the op library")
