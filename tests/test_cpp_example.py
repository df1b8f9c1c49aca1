"""examples/cpp/sam_edge_example, built with g++ and run as a C++ host would run
it: onnxruntime's C library dlopened, sam-edge's op library registered, a
bundle's encoder and decoder graphs loaded from its manifest.

Its outputs are checked against the Python runtime's on the same bundle and
inputs (sam_edge.load(bundle, native_attention=False): the same single encoder
graph, not the segments around the attention kernel). Both run the same graphs
in the same onnxruntime build with the same thread count, so the outputs are
bit-identical in practice; the bound rel-L2 <= 1e-5 leaves room only for a
change of summation order between runs (a few float32 ulps through the
layers), orders of magnitude below what a mistake in the feed or the
preprocessing shows (a point moved by one pixel exceeds it by far). Masks may
differ only at pixels whose logit is within 1e-4 of the threshold
(sam_edge.postprocess's own agreement with torch).
"""

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
THREADS = 2
WIDTH, HEIGHT, POINT = 256, 176, (150.0, 90.0)  # landscape, so the frame pads below the image


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
    root = tmp_path_factory.mktemp("cpp_bundle")
    _, _, path = build_test_bundle(root, reduced_config(), seed=21, official_decoder=False, split_encoder=False)
    return path


def _run(example, *args, timeout=120):
    return subprocess.run([str(example), "--runtime", str(RUNTIME), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cpp_run(example, bundle, tmp_path_factory):
    """(image, the example's stdout, OUT_DIR) for one run on a fresh image and one point."""
    root = tmp_path_factory.mktemp("cpp_run")
    image = structured_image(seed=5)
    image.tofile(root / "image.rgb")
    out_dir = root / "out"
    out_dir.mkdir()
    ops = ["--ops", OPS] if OPS_USABLE else []
    result = _run(example, *ops, "--threads", THREADS, bundle, root / "image.rgb", WIDTH, HEIGHT, *POINT, out_dir)
    assert result.returncode == 0, result.stderr
    return image, result.stdout, out_dir


def test_decoder_outputs_match_the_python_runtime(cpp_run, bundle):
    image, _, out_dir = cpp_run
    engine = sam_edge.load(bundle, threads=THREADS, native_attention=False)
    assert engine.encoder_mode == "single ONNX Runtime graph"
    embedding = engine.embed(image.transpose(2, 0, 1)[None])
    coords, labels = np.array([[POINT]], np.float32), np.ones((1, 1), np.float32)
    # All four mask tokens, as the graph returns them: the single-mask token, then the three.
    one_logits, one_scores = engine.decode(embedding, coords, labels, None, None, multimask_output=False)
    three_logits, three_scores = engine.decode(embedding, coords, labels, None, None, multimask_output=True)
    logits = np.concatenate([one_logits, three_logits], axis=1)
    scores = np.concatenate([one_scores, three_scores], axis=1)

    cpp_embedding = np.fromfile(out_dir / "image_embeddings.f32", np.float32).reshape(embedding.shape)
    cpp_logits = np.fromfile(out_dir / "low_res_masks.f32", np.float32).reshape(logits.shape)
    cpp_scores = np.fromfile(out_dir / "iou_predictions.f32", np.float32).reshape(scores.shape)
    assert rel_l2(cpp_embedding, embedding) <= 1e-5
    assert rel_l2(cpp_logits, logits) <= 1e-5
    assert rel_l2(cpp_scores, scores) <= 1e-5

    masks, _, _, upscaled = postprocess.upsample_threshold_stability(
        logits, (HEIGHT, WIDTH), (HEIGHT, WIDTH), frame_size=engine.image_size, return_logits=True)
    cpp_masks = np.fromfile(out_dir / "masks.u8", np.uint8).reshape(masks.shape).astype(bool)
    differ = cpp_masks != masks
    assert not np.any(differ & (np.abs(upscaled) > 1e-4)), "masks differ away from the threshold"
    assert 0 < masks[0, 1].sum() < masks[0, 1].size, "a degenerate mask checks nothing"


def test_the_op_library_is_registered(cpp_run):
    if not OPS_USABLE:
        pytest.skip("sam_edge_ops is not built, or this CPU has no AVX-512 and the library refuses it: "
                    "the example ran without it")
    assert f"op library: {OPS}" in cpp_run[1].splitlines()


def _one_error_line(result, expected):
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("sam_edge_example: error:") and expected in lines[0], result.stderr


def test_a_missing_bundle_is_one_clear_error(example, tmp_path):
    (tmp_path / "image.rgb").write_bytes(bytes(WIDTH * HEIGHT * 3))
    result = _run(example, tmp_path / "no-bundle", tmp_path / "image.rgb", WIDTH, HEIGHT, *POINT, tmp_path)
    _one_error_line(result, f"bundle not found: {tmp_path / 'no-bundle'}")


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
