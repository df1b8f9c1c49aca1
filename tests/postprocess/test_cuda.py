"""sam_edge.postprocess.cuda: host-side plumbing everywhere, kernels on a GPU.

The kernels are compared with the CPU ops of sam_edge.postprocess, which
tests/postprocess/test_postprocess.py ties to the official references. Without a CUDA
device (or without sam_edge._C_cuda) those tests skip and say why.

Without a GPU, the rest runs against the real build where it can (the
targets in the fatbin, the RLE chunk plan, error messages: with no driver
every CUDA call fails) and against a spec'd stand-in for ``_C_cuda`` where a
device is needed (the probe's verdict, validation before any pointer is
passed): a SimpleNamespace with only the bindings the path may call, so a
call to any other raises AttributeError.
"""

import os
import re
import runpy
import shutil
import subprocess
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import sam_edge.postprocess as pp
import sam_edge.postprocess.cuda as pc
from sam_edge.runtime.cuda_buffers import from_dlpack_capsule

amg = pytest.importorskip("segment_anything.utils.amg")

_GPU_SKIP = pytest.mark.skipif(
    not (pc.available() and torch.cuda.is_available()),
    reason=f"needs sam_edge._C_cuda and a CUDA device (CUDA path: {pc.status()['summary']})",
)


def needs_gpu(test):
    """Skipped without a usable device; marked gpu so scripts/gpu_check.sh selects it."""
    return pytest.mark.gpu(_GPU_SKIP(test))


def column_major_boundaries(masks):
    """Run boundaries as the GPU kernel reports them, computed on the CPU."""
    n, h, w = masks.shape
    flat = masks.transpose(0, 2, 1).reshape(n, h * w)
    previous = np.concatenate([np.zeros((n, 1), bool), flat[:, :-1]], axis=1)
    mask_index, offset = np.nonzero(flat != previous)
    return mask_index * h * w + offset


@pytest.mark.parametrize("h,w", [(1, 1), (3, 5), (64, 33)])
def test_rles_from_change_positions_match_official(h, w):
    rng = np.random.default_rng(h + w)
    masks = rng.random((4, h, w)) < 0.4
    masks[0] = False
    masks[1] = True
    rles = pc.rles_from_change_positions(column_major_boundaries(masks), 4, h, w)
    official = amg.mask_to_rle_pytorch(torch.from_numpy(masks))
    assert [r["counts"] for r in rles] == [r["counts"] for r in official]


def test_cuda_array_interface_is_read():
    buf = types.SimpleNamespace(
        __cuda_array_interface__={"data": (12345, False), "shape": (2, 3), "typestr": "<f4", "version": 3}
    )
    a = pc.device_array(buf)
    assert (a.ptr, a.shape, a.dtype) == (12345, (2, 3), np.dtype(np.float32))
    strided = types.SimpleNamespace(
        __cuda_array_interface__={"data": (1, False), "shape": (2, 3), "typestr": "<f4", "strides": (4, 8)}
    )
    with pytest.raises(ValueError, match="C-contiguous"):
        pc.device_array(strided)


def test_dlpack_capsule_is_read_and_cpu_rejected():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)[1:]
    parsed = from_dlpack_capsule(t.__dlpack__(), t)
    assert parsed.ptr == t.data_ptr()
    assert parsed.shape == (2, 4) and parsed.dtype == np.float32
    with pytest.raises(TypeError, match="not on a CUDA device"):
        pc.device_array(t)
    with pytest.raises(TypeError, match="CUDA array"):
        pc.device_array([1.0, 2.0])


def test_status_explains_itself():
    status = pc.status()
    assert status["summary"].startswith(("not built: ", "built"))
    assert status["available"] == pc.available()


# ---------------------------------------------------------------- targets

ROOT = Path(__file__).resolve().parents[2]
AMPERE_TO_HOPPER = {80, 86, 87, 89, 90}  # A100, A10/RTX 30, Orin, L4/RTX 40, H100/H200


@pytest.fixture
def setup_module(monkeypatch):
    """setup.py's globals, without running setup() (it runs only as __main__)."""
    monkeypatch.delenv("SAM_EDGE_CUDA_ARCHS", raising=False)
    monkeypatch.chdir(ROOT)
    return runpy.run_path(str(ROOT / "setup.py"), run_name="sam_edge_setup")


def targets(gencode):
    """({sm of SASS}, {compute of PTX}) from nvcc -gencode flags."""
    pairs = [re.fullmatch(r"arch=compute_(\d+),code=(sm|compute)_(\d+)", f) for f in gencode[1::2]]
    return {int(m[3]) for m in pairs if m[2] == "sm"}, {int(m[3]) for m in pairs if m[2] == "compute"}


def test_default_targets_cover_ampere_to_hopper(setup_module):
    sass, ptx = targets(setup_module["cuda_gencode_flags"](setup_module["DEFAULT_CUDA_ARCHS"]))
    assert AMPERE_TO_HOPPER <= sass
    assert ptx == {max(sass)}  # PTX of the newest target, for GPUs after it
    with pytest.raises(ValueError, match="sm_80"):
        setup_module["cuda_gencode_flags"]("75;90")


def find_cuobjdump():
    candidates = [shutil.which("cuobjdump")]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        candidates.append(home and os.path.join(home, "bin", "cuobjdump"))
    nvcc = shutil.which("nvcc")
    candidates.append(nvcc and os.path.join(os.path.dirname(os.path.realpath(nvcc)), "cuobjdump"))
    try:  # the nvidia-cuda-cuobjdump wheel
        import nvidia

        candidates += [os.path.join(p, sub, "bin", "cuobjdump") for p in nvidia.__path__ for sub in ("cu13", "cu12")]
    except ImportError:
        pass
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def test_built_module_holds_code_for_every_target(setup_module):
    if pc._C_cuda is None:
        pytest.skip(f"sam_edge._C_cuda is not built: {pc._CUDA_ERROR}")
    cuobjdump = find_cuobjdump()
    if cuobjdump is None:
        pytest.skip("cuobjdump not found (CUDA toolkit, or pip install nvidia-cuda-cuobjdump)")
    so = pc._C_cuda.__file__

    def listed(kind):
        out = subprocess.run([cuobjdump, f"--list-{kind}", so], capture_output=True, text=True, check=True).stdout
        return {int(m) for m in re.findall(r"\.sm_(\d+)\.(?:cubin|ptx)", out)}

    built_for = getattr(pc._C_cuda, "CUDA_ARCHS", setup_module["DEFAULT_CUDA_ARCHS"])
    sass, ptx = targets(setup_module["cuda_gencode_flags"](built_for))
    assert (listed("elf"), listed("ptx")) == (sass, ptx), f"built for {built_for!r}"
    assert AMPERE_TO_HOPPER <= listed("elf"), f"built for {built_for!r}; CI builds DEFAULT_CUDA_ARCHS"


# ---------------------------------------------------------------- probe and fallback


def fake_cuda(probe_error="", count=1, pointers=None, **bindings):
    """A spec'd stand-in for sam_edge._C_cuda on a machine with `count` devices.

    probe_error is what probe() reports ("" when the kernel ran); pointers
    maps pointer -> device ordinal (-1: host memory) for pointer_device.
    Only the bindings named here exist.
    """
    calls = []

    def probe(device=-1):
        calls.append(("probe", device))
        return probe_error

    def pointer_device(pointer):
        return (pointers or {}).get(pointer, 0)

    module = types.SimpleNamespace(
        device_count=lambda: count, current_device=lambda: 0, runtime_version=lambda: 13000, probe=probe,
        pointer_device=pointer_device, CUDA_ARCHS="80;86;87;89;90+PTX", RLE_DEFAULT_SCRATCH_BYTES=256 << 20,
        RLE_RESERVED_BYTES=1 << 20, **bindings,
    )
    return module, calls


@pytest.fixture
def with_fake(monkeypatch):
    def install(*args, **kwargs):
        module, calls = fake_cuda(*args, **kwargs)
        monkeypatch.setattr(pc, "_C_cuda", module)
        monkeypatch.setattr(pc, "_PROBES", {}, raising=False)  # absent before the probe existed
        return calls

    return install


NO_IMAGE = "launch of probe_kernel: cudaErrorNoKernelImageForDevice: no kernel image is available for execution"


def test_a_device_without_code_for_it_is_not_available(with_fake):
    calls = with_fake(probe_error=NO_IMAGE)
    assert not pc.available()
    assert not pc.available(0)
    assert calls == [("probe", 0)]  # probed once per device, on first use
    status = pc.status()["summary"]
    assert "cudaErrorNoKernelImageForDevice" in status and "80;86;87;89;90+PTX" in status
    assert "on the host" in status
    with pytest.raises(RuntimeError, match="cudaErrorNoKernelImageForDevice"):
        pc.mask_to_rle(fake_device_array(1 << 20, (2, 3), "|u1"))


def test_a_device_whose_probe_runs_is_available(with_fake):
    calls = with_fake(probe_error="")
    assert pc.available() and pc.available()
    assert calls == [("probe", 0)]
    assert "kernels run on device 0" in pc.status()["summary"]


def test_sam_edge_postprocess_numpy_turns_the_cuda_path_off(with_fake, monkeypatch):
    """SAM_EDGE_POSTPROCESS=numpy sends callers that choose a path to the host, on a device where
    the kernels run; the ops themselves still run when called."""
    with_fake(probe_error="", stability_scores=lambda *args: None)
    monkeypatch.setenv("SAM_EDGE_POSTPROCESS", "numpy")
    status = pc.status()
    assert not pc.available() and not status["available"]
    assert status["summary"].startswith("disabled by SAM_EDGE_POSTPROCESS=numpy")
    monkeypatch.setattr(pc, "_empty", lambda like, shape, dtype: fake_device_array(0x9000, tuple(shape), "<f4"))
    assert pc.stability_score(fake_device_array(0x1000, (2, 4, 4), "<f4")).__cuda_array_interface__["data"][0] == 0x9000
    monkeypatch.delenv("SAM_EDGE_POSTPROCESS")
    assert pc.available() and pc.status()["available"]


def test_sam_edge_info_says_why_the_cuda_path_is_not_used(with_fake):
    from sam_edge.info import info

    with_fake(probe_error=NO_IMAGE)
    assert "cudaErrorNoKernelImageForDevice" in info()["postprocess_cuda"]


@pytest.mark.skipif(pc._C_cuda is None, reason=f"sam_edge._C_cuda is not built: {pc._CUDA_ERROR}")
def test_real_probe_reports_instead_of_raising():
    if torch.cuda.is_available():
        assert pc._C_cuda.probe() == "", "the kernels of this build do not run on this GPU"
        assert pc.available()
    else:  # here every CUDA call fails (no driver): the probe says so, available() is False
        message = pc._C_cuda.probe()
        assert message.startswith(("cudaMalloc", "launch of probe_kernel")) and "cudaError" in message
        assert not pc.available()


@pytest.mark.skipif(pc._C_cuda is None or torch.cuda.is_available(),
                    reason="needs the build and no CUDA driver, so that every CUDA call fails")
def test_cuda_errors_name_the_binding_and_the_failed_call():
    failed_alloc = r"_C_cuda\.stability_scores: scratch\.alloc\(&counts, 2 \* n\) failed: cudaError"
    with pytest.raises(RuntimeError, match=failed_alloc):
        pc._C_cuda.stability_scores(0, 1, 1, 1.0, -1.0, 0)
    with pytest.raises(RuntimeError, match=r"_C_cuda\.pointer_device: cudaPointerGetAttributes failed"):
        pc._C_cuda.pointer_device(1)


# ---------------------------------------------------------------- validation before any pointer is passed


def fake_device_array(ptr, shape, typestr, strides=None):
    return types.SimpleNamespace(
        __cuda_array_interface__={"data": (ptr, False), "shape": shape, "typestr": typestr, "strides": strides,
                                  "version": 3}
    )


def test_upsample_entry_point_passes_checked_pointers(with_fake):
    """The call the TensorRT backend makes: its own output buffers, no masks, its stream."""
    launched = []
    with_fake(upsample_threshold_stability=lambda *args: launched.append(args))
    low = fake_device_array(0x1000, (2, 3, 256, 256), "<f4")
    logits = fake_device_array(0x2000, (2, 3, 480, 640), "<f4")
    stability = fake_device_array(0x3000, (6,), "<f4")
    boxes = fake_device_array(0x4000, (6, 4), "<i8")
    masks, s, b, l_out = pc.upsample_threshold_stability(
        low, (768, 1024), (480, 640), mask_threshold=0.5, return_logits=True, return_masks=False, stream=77,
        logits_out=logits, stability_out=stability, boxes_out=boxes,
    )
    assert masks is None and (s, b, l_out) == (stability, boxes, logits)
    assert launched == [(0x1000, 6, 256, 256, 1024, 1024, 768, 1024, 480, 640, 0.5, 1.5, -0.5,
                         0, 0x2000, 0x3000, 0x4000, 77, 0)]


@pytest.mark.parametrize("change,error,match", [
    ({"low": ((2, 3, 256, 256), "<f8")}, TypeError, "low_res_logits must be float32"),
    ({"low": ((3, 256, 256), "<f4", (4, 1024 * 4, 256 * 1024 * 4))}, ValueError, "C-contiguous"),
    ({"boxes": ((6, 4), "<i4")}, TypeError, "boxes_out must be int64"),
    ({"boxes": ((4, 6), "<i8")}, ValueError, "boxes_out must have shape"),
    ({"stability": ((5,), "<f4")}, ValueError, "stability_out must have shape"),
    ({"host": 0x3000}, TypeError, "stability_out is host memory"),
    ({"other_device": 0x4000}, ValueError, "one device"),
])
def test_upsample_entry_point_refuses_bad_arrays(with_fake, change, error, match):
    pointers = {change.get("host"): -1, change.get("other_device"): 1}
    with_fake(pointers=pointers)  # no upsample binding: reaching it would raise AttributeError
    low = fake_device_array(0x1000, *change.get("low", ((2, 3, 256, 256), "<f4")))
    stability = fake_device_array(0x3000, *change.get("stability", ((2, 3), "<f4")))
    boxes = fake_device_array(0x4000, *change.get("boxes", ((2, 3, 4), "<i8")))
    with pytest.raises(error, match=match):
        pc.upsample_threshold_stability(low, (768, 1024), (480, 640), return_masks=False,
                                        stability_out=stability, boxes_out=boxes)


def test_other_ops_refuse_bad_arrays(with_fake):
    with_fake(pointers={0x1000: -1})
    with pytest.raises(TypeError, match="masks is host memory"):
        pc.mask_to_rle(fake_device_array(0x1000, (2, 4, 4), "|u1"))
    with pytest.raises(ValueError, match="scratch_bytes"):
        pc.mask_to_rle(fake_device_array(0x2000, (2, 4, 4), "|u1"), scratch_bytes=1024)
    with pytest.raises(TypeError, match="masks must be bool or uint8"):
        pc.masks_to_boxes(fake_device_array(0x2000, (2, 4, 4), "<f4"))
    with pytest.raises(ValueError, match="logits must be"):
        pc.stability_score(fake_device_array(0x2000, (4,), "<f4"))
    with pytest.raises(ValueError, match="scores \\(N,\\)"):
        pc.batched_nms(fake_device_array(0x2000, (3, 4), "<f4"), fake_device_array(0x3000, (2,), "<f4"),
                       fake_device_array(0x4000, (3,), "<i8"), 0.5)


# ---------------------------------------------------------------- RLE scratch


@pytest.mark.skipif(pc._C_cuda is None, reason=f"sam_edge._C_cuda is not built: {pc._CUDA_ERROR}")
@pytest.mark.parametrize("n,hw,cap", [
    (100, 12_000_000, 256 << 20),  # 100 masks of 12 MP on an 8 GB Orin
    (3, 40_000_000, 256 << 20),  # one mask's positions alone exceed the cap
    (5, 7, 256 << 20),
    (7, 12_000_000, 64 << 30),  # a large cap: CUB's int-sized ranges bound the chunk instead
    (2, 3_000_001, (1 << 20) + 8 * 1000),  # the smallest caps: chunks of 1000 items
])
def test_rle_chunks_stay_under_the_cap_and_cover_every_mask_once(n, hw, cap):
    chunks, scratch = pc._C_cuda.rle_chunk_plan(n, hw, cap)
    assert scratch <= cap
    assert all(0 < items <= 2**31 - 1 and items * 8 + pc._C_cuda.RLE_RESERVED_BYTES <= scratch
               for _, items in chunks)
    firsts = np.array([first for first, _ in chunks], np.int64)
    ends = firsts + np.array([items for _, items in chunks], np.int64)
    assert firsts[0] == 0 and np.array_equal(firsts[1:], ends[:-1]) and ends[-1] == n * hw
    covered = np.zeros(n, np.int64)  # pixels of each mask, over all chunks
    for first, end in zip(firsts, ends):
        for i in range(first // hw, (end - 1) // hw + 1):
            covered[i] += min(end, (i + 1) * hw) - max(first, i * hw)
    assert np.array_equal(covered, np.full(n, hw))


@pytest.mark.skipif(pc._C_cuda is None, reason=f"sam_edge._C_cuda is not built: {pc._CUDA_ERROR}")
def test_rle_chunk_plan_refuses_a_cap_below_one_item():
    assert pc._C_cuda.rle_chunk_plan(3, 100, pc._C_cuda.RLE_RESERVED_BYTES)[0] == []


# ---------------------------------------------------------------- on a GPU


def blobby(rng, n, h, w):
    noise = torch.from_numpy(rng.standard_normal((n, 1, max(2, h // 8), max(2, w // 8))).astype(np.float32))
    return (torch.nn.functional.interpolate(noise, (h, w), mode="bicubic")[:, 0] > 0.3).numpy()


@needs_gpu
@pytest.mark.parametrize("h,w", [(1, 1), (7, 5), (480, 640), (2160, 3840)])
def test_gpu_masks_rle_boxes_stability_match_cpu(h, w):
    rng = np.random.default_rng(h)
    masks = blobby(rng, 3, h, w)
    masks[0] = False
    logits = rng.standard_normal((3, h, w)).astype(np.float32) * 3
    dm = torch.from_numpy(masks).cuda()
    np.testing.assert_array_equal(pc.masks_to_boxes(dm).cpu().numpy(), pp.masks_to_boxes(masks))
    assert pc.mask_to_rle(dm) == pp.mask_to_rle(masks)
    np.testing.assert_array_equal(
        pc.stability_score(torch.from_numpy(logits).cuda(), 0.0, 1.0).cpu().numpy(), pp.stability_score(logits)
    )


@needs_gpu
@pytest.mark.parametrize("input_size,original_size", [((768, 1024), (480, 640)), ((576, 1024), (1080, 1920))])
def test_gpu_upsample_is_bit_identical_to_cpu(input_size, original_size):
    rng = np.random.default_rng(0)
    low = (rng.standard_normal((2, 3, 256, 256)) * 8).astype(np.float32)
    gpu = pc.upsample_threshold_stability(torch.from_numpy(low).cuda(), input_size, original_size, return_logits=True)
    cpu = pp.upsample_threshold_stability(low, input_size, original_size, return_logits=True)
    for g, c in zip(gpu, cpu):
        np.testing.assert_array_equal(g.cpu().numpy(), c)


@needs_gpu
@pytest.mark.parametrize("h,w", [(64, 33), (1500, 2250)])
def test_gpu_rle_is_the_same_in_small_chunks(h, w):
    """Chunks that start and end inside masks give the same RLEs as one pass."""
    masks = blobby(np.random.default_rng(w), 5, h, w)
    dm = torch.from_numpy(masks).cuda()
    smallest = pc._C_cuda.RLE_RESERVED_BYTES + 8 * 997  # 997 items a chunk: a prime, so boundaries fall anywhere
    assert pc.mask_to_rle(dm, scratch_bytes=smallest) == pc.mask_to_rle(dm) == pp.mask_to_rle(masks)


@needs_gpu
def test_gpu_upsample_into_given_outputs_matches_allocated():
    rng = np.random.default_rng(1)
    low = torch.from_numpy((rng.standard_normal((2, 3, 256, 256)) * 8).astype(np.float32)).cuda()
    expected = pc.upsample_threshold_stability(low, (768, 1024), (480, 640), return_logits=True)
    logits = torch.empty((6, 480, 640), device="cuda")
    stability = torch.empty(6, device="cuda")
    boxes = torch.empty((6, 4), dtype=torch.int64, device="cuda")
    masks, s, b, l_out = pc.upsample_threshold_stability(
        low, (768, 1024), (480, 640), return_logits=True, return_masks=False, logits_out=logits,
        stability_out=stability, boxes_out=boxes,
    )
    assert masks is None
    for got, want in zip((s, b, l_out), expected[1:]):
        np.testing.assert_array_equal(got.cpu().numpy().reshape(want.shape), want.cpu().numpy())


@needs_gpu
@pytest.mark.parametrize("n", [1, 500, 3000])
def test_gpu_nms_matches_cpu(n):
    rng = np.random.default_rng(n)
    xy = rng.random((n, 2)).astype(np.float32) * 300
    boxes = np.concatenate([xy, xy + 5 + rng.random((n, 2)).astype(np.float32) * 60], axis=1)
    scores = rng.random(n).astype(np.float32)
    categories = rng.integers(0, 3, n)
    kept = pc.batched_nms(
        torch.from_numpy(boxes).cuda(), torch.from_numpy(scores).cuda(), torch.from_numpy(categories).cuda(), 0.6
    )
    np.testing.assert_array_equal(kept, pp.batched_nms(boxes, scores, categories, 0.6))
