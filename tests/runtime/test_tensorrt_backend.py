"""The TensorRT backend (sam_edge.runtime.tensorrt_backend): its plumbing over spec'd fakes; and,
where TensorRT and a GPU exist, engines built at a reduced size checked against the
PyTorch reference. Compatibility checks are in test_tensorrt_compat.py, CUDA buffers in
test_cuda_buffers.py."""

import os
import threading
import types

import numpy as np
import pytest

from sam_edge.runtime import cuda_buffers, tensorrt_compat
from sam_edge.runtime import tensorrt_backend as trb
from sam_edge.runtime.tensorrt_compat import ShapeTuple
from tensorrt_runtime_doubles import _FakeAllocation, manifest


# ---------------------------------------------------------------- host paths


class _HostArrays:
    @staticmethod
    def is_device_array(array):
        return False


def _feed_backend(m=8):
    backend = object.__new__(trb.TensorRTBackend)
    backend.mask_input_size = m
    backend.arrays = _HostArrays()
    return backend


def test_decoder_feed_layout():
    """As the torch prompt encoder: points, then box corners labelled 2 and 3; a padding
    point labelled -1 only when there is no box; a zero mask with has_mask 0 when none."""
    b = _feed_backend()
    coords = np.array([[[1.0, 2.0], [3.0, 4.0]]], np.float32)
    labels = np.array([[1, 0]])
    box = np.array([[5.0, 6.0, 7.0, 8.0]], np.float32)
    points_only = b.decoder_feed(coords, labels, None, None)
    assert points_only["point_coords"].shape == (1, 3, 2)
    assert points_only["point_labels"].tolist() == [[1, 0, -1]]
    assert not points_only["has_mask_input"].any() and not points_only["mask_input"].any()
    box_only = b.decoder_feed(None, None, box, None)
    assert box_only["point_coords"].tolist() == [[[5, 6], [7, 8]]] and box_only["point_labels"].tolist() == [[2, 3]]
    both = b.decoder_feed(coords, labels, box, np.ones((1, 1, 8, 8), np.float32))
    assert both["point_labels"].tolist() == [[1, 0, 2, 3]] and both["has_mask_input"].tolist() == [1]
    for feed in (points_only, box_only, both):
        assert all(v.dtype == np.float32 for v in feed.values())


def test_host_postprocess_matches_the_official_one():
    """Without sam_edge._C_cuda the masks are resized on the host: against the official
    Sam.postprocess_masks run in float64. Each output is a convex combination of the inputs
    through two float32 resizes, so its error is a few float32 ulps of the largest input;
    the bound allows 16."""
    torch = pytest.importorskip("torch")
    from segment_anything.modeling import Sam

    backend = _feed_backend()
    backend._gpu_postprocess, backend.image_size = None, 32
    seed = int(np.random.SeedSequence().entropy % 2**32)
    low_res = np.random.default_rng(seed).standard_normal((2, 3, 8, 8)).astype(np.float32)
    ours = backend.postprocess_masks(low_res, (32, 20), (45, 28))
    model = types.SimpleNamespace(image_encoder=types.SimpleNamespace(img_size=32))  # all postprocess_masks reads
    official = Sam.postprocess_masks(model, torch.from_numpy(low_res).double(), (32, 20), (45, 28)).numpy()
    bound = 16 * np.finfo(np.float32).eps * float(np.abs(low_res).max())
    np.testing.assert_allclose(ours, official, rtol=0, atol=bound, err_msg=f"seed {seed}")


def test_load_without_tensorrt_says_so(tmp_path):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed; the message for its absence cannot be shown")
    with pytest.raises(ImportError, match="holds TensorRT engines: TensorRT is not installed"):
        trb.load_tensorrt_engine(str(tmp_path), manifest())




# ---------------------------------------------------------------- with TensorRT and a GPU


def _gpu_reason():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "needs TensorRT (not installed)"
    try:
        from cuda.bindings import runtime
    except ImportError:
        return "needs cuda-python"
    status, count = runtime.cudaGetDeviceCount()
    if int(status) != 0 or count == 0:
        return "needs a CUDA GPU"
    return None


_skip_without_gpu = pytest.mark.skipif(_gpu_reason() is not None, reason=_gpu_reason() or "")


def requires_gpu(test):
    """Skipped without TensorRT and a CUDA GPU; selectable with -m tensorrt / -m gpu."""
    return pytest.mark.gpu(pytest.mark.tensorrt(_skip_without_gpu(test)))


@requires_gpu
def test_device_array_round_trip():
    provider = cuda_buffers.array_provider("cuda-python")
    host = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    device = cuda_buffers.DeviceArray.empty(host.shape, host.dtype)
    staged = cuda_buffers.PinnedArray(host.shape, host.dtype)
    staged.array[...] = host
    rt = cuda_buffers.cudart()
    cuda_buffers.cuda_check(rt.cudaMemcpyAsync(device.ptr, staged.ptr, host.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                                      provider.stream_handle), "cudaMemcpyAsync")
    np.testing.assert_array_equal(provider.host(device), host)
    np.testing.assert_array_equal(provider.host(device[1]), host[1])
    np.testing.assert_array_equal(provider.host(device[1:2]), host[1:2])
    assert device.__cuda_array_interface__["shape"] == (2, 3, 4)


def _rel_l2(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


#: Bounds shared with the ONNX Runtime bundles' parity tests.
BOUNDS = {"fp16": {"logits_rel_l2": 1e-2}, "int8": {"logits_rel_l2": 0.05, "mean_iou": 0.95}}


@requires_gpu
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_engine_parity_with_pytorch(tmp_path, small_config, precision):
    """A reduced ViT-B bundle built for TensorRT against the PyTorch model on the same
    prompts: low-res logits rel-L2 and (int8) mean mask IoU within the ONNX bundles' bounds."""
    torch = pytest.importorskip("torch")
    from sam_edge.builder import build_sam_from_config
    from sam_edge.export import build as onnx_build
    from sam_edge.export.tensorrt_build import TensorRTBuildParams, build_tensorrt_bundle
    from sam_edge.runtime.predictor import SamPredictor

    onnx_dir = tmp_path / f"onnx-{precision}"
    manifest_onnx = onnx_build.build_bundle(str(onnx_dir), small_config, precision=precision, quiet=True,
                                            fused_attention=False)  # TensorRT parses standard ops only
    params = TensorRTBuildParams(model_type=small_config.name, precision=precision, max_points=6, max_prompts=8,
                                 opt_points=2, opt_prompts=4, workspace_bytes=1 << 30, progress=False,
                                 timing_cache=str(tmp_path / "timing.cache"))
    trt_dir = tmp_path / f"trt-{precision}"
    manifest_trt = build_tensorrt_bundle(params, str(onnx_dir), str(trt_dir))
    assert manifest_trt["tensorrt"]["engines"]["encoder"]["precision"] == precision
    engine = trb.load_tensorrt_engine(str(trt_dir), manifest_trt)

    sam = build_sam_from_config(small_config).eval()
    onnx_build.randomize_weights_(sam, manifest_onnx["weights"]["seed"])
    reference, ours = SamPredictor(sam), SamPredictor(engine)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    reference.set_image(image)
    ours.set_image(image)
    logits_errors, ious = [], []
    for _ in range(4):
        point = rng.uniform((0, 0), (200, 300), size=(1, 2))
        with torch.no_grad():
            ref_masks, _, ref_low = reference.predict(point, np.array([1]), multimask_output=True)
        masks, _, low = ours.predict(point, np.array([1]), multimask_output=True)
        logits_errors.append(_rel_l2(low, ref_low))
        inter = np.logical_and(masks, ref_masks).sum((1, 2))
        union = np.logical_or(masks, ref_masks).sum((1, 2))
        ious.append(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))
    assert max(logits_errors) <= BOUNDS[precision]["logits_rel_l2"]
    if "mean_iou" in BOUNDS[precision]:
        assert float(np.mean(ious)) >= BOUNDS[precision]["mean_iou"]
    # Embed once, query many: a second query of the same prompt reuses the embedding (and a CUDA graph).
    again = ours.predict(point, np.array([1]), multimask_output=True)[2]
    np.testing.assert_allclose(again, low, rtol=0, atol=0)
    engine.close()
    assert os.path.exists(trt_dir / "manifest.json")


def test_status_line_without_tensorrt():
    status = tensorrt_compat.status()
    assert status["available"] == (_gpu_reason() is None)
    if _gpu_reason() is None:
        assert status["summary"].startswith("TensorRT ")
    else:
        assert status["summary"].startswith("unavailable (")


# ---------------------------------------------------------------- the backend's plumbing, with host doubles


def _install(monkeypatch, stack):
    """Put a FakeStack's `tensorrt` and CUDA runtime where the backend imports them."""
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", stack.trt)
    monkeypatch.setattr(cuda_buffers, "cudart", lambda: stack.cuda)


@pytest.fixture
def fake_backend(monkeypatch):
    """TensorRTBackends over the spec'd fakes of TensorRT and the CUDA runtime (tests/helpers/tensorrt_fakes.py),
    one fake stack per test: image 64 px, embeddings (1, 8, 4, 4), masks 16 x 16, max batch 2,
    max prompts 3, max points 4. make(stack={...}, **backend_options) -> (backend, cuda runtime, stack)."""
    from tensorrt_fakes import synthetic_engines

    monkeypatch.setenv("SAM_EDGE_POSTPROCESS", "numpy")
    stacks = []

    def make(stack=None, **kw):
        if not stacks:
            stacks.append(synthetic_engines(**(stack or {})))
            _install(monkeypatch, stacks[0])
        fake = stacks[0]
        backend = trb.TensorRTBackend(fake.plans["encoder"], fake.plans["decoder"], image_size=64,
                                      array_library="cuda-python", **kw)
        return backend, fake.cuda, fake

    return make


def test_backend_selects_mask_channels(fake_backend):
    """Multimask: tokens 1..3 of the engine's 4; single mask: token 0 (one strided copy each)."""
    from sam_edge import SamPredictor

    backend, _, _ = fake_backend()
    predictor = SamPredictor(backend)
    predictor.set_image(np.full((40, 64, 3), 100, np.uint8))
    x = predictor.transform.apply_coords(np.array([[10.0, 20.0]]), (40, 64))[0, 0]
    masks, scores, low_res = predictor.predict(np.array([[10.0, 20.0]]), np.array([1]))
    np.testing.assert_allclose(scores, np.arange(1, 4) + x / 1000, rtol=1e-6)
    np.testing.assert_allclose(low_res[:, 0, 0], scores, rtol=1e-6)
    assert masks.shape == (3, 40, 64) and masks.dtype == bool
    _, single, _ = predictor.predict(np.array([[10.0, 20.0]]), np.array([1]), multimask_output=False)
    np.testing.assert_allclose(single, [x / 1000], rtol=1e-5)


def test_backend_feeds_the_prompt_layout(fake_backend):
    """What reaches the decoder engine, written out: a 64 x 64 image in a 64-pixel frame is not
    rescaled, so the point (1, 2) comes first, then the box corners (3, 4), (5, 6) labelled 2 and 3."""
    from sam_edge import SamPredictor

    backend, _, fake = fake_backend()
    predictor = SamPredictor(backend)
    predictor.set_image(np.zeros((64, 64, 3), np.uint8))
    predictor.predict(np.array([[1.0, 2.0]]), np.array([0]), box=np.array([3.0, 4.0, 5.0, 6.0]))
    coords, labels = fake.fed[-1]
    np.testing.assert_array_equal(coords, np.array([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]], np.float32))
    np.testing.assert_array_equal(labels, np.array([[0, 2, 3]], np.float32))


def test_backend_batched_prompts(fake_backend):
    """Three prompts take the batched profile (no CUDA graph) and come back row by row."""
    torch = pytest.importorskip("torch")
    from sam_edge import SamPredictor

    backend, runtime, _ = fake_backend()
    predictor = SamPredictor(backend)
    predictor.set_image(np.zeros((64, 64, 3), np.uint8))
    coords = torch.tensor([[[5.0, 1.0]], [[6.0, 1.0]], [[7.0, 1.0]]])
    _, scores, _ = predictor.predict_torch(coords, torch.ones(3, 1), multimask_output=True)
    expected = 10 * np.arange(3)[:, None] + np.arange(1, 4)[None] + np.array([[5.0], [6.0], [7.0]]) / 1000
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-6)
    assert "capture" not in runtime.fake_events
    with pytest.raises(ValueError, match="outside every optimization profile"):
        predictor.predict_torch(torch.ones(4, 1, 2), torch.ones(4, 1))


def test_cuda_graphs_per_shape_with_eviction(fake_backend, monkeypatch):
    """One capture per interactive prompt shape, replayed afterwards; the least recently used
    graph goes when more than MAX_CUDA_GRAPHS are held. (With these doubles a replay runs
    nothing, so only the bookkeeping is checked here; the GPU test checks replayed values.)"""
    from sam_edge import SamPredictor

    monkeypatch.setattr(trb, "MAX_CUDA_GRAPHS", 2)
    backend, runtime, _ = fake_backend()
    predictor = SamPredictor(backend)
    predictor.set_image(np.zeros((64, 64, 3), np.uint8))
    one, two, three = (np.ones((k, 2)) for k in (1, 2, 3))
    for points in (one, one, two, three, one):
        predictor.predict(points, np.ones(len(points), int))
    captures = [e for e in runtime.fake_events if e == "capture"]
    launches = [e for e in runtime.fake_events if isinstance(e, tuple) and e[0] == "launch"]
    destroyed = [e for e in runtime.fake_events if isinstance(e, tuple) and e[0] == "destroy"]
    assert len(captures) == 4 and len(launches) == 1  # one, (one), two, three, one again after eviction
    assert len(destroyed) == 2 and len(backend._graphs) == 2
    backend.close()
    assert not backend._graphs
    no_graphs, _, _ = fake_backend(cuda_graphs=False)
    before = len(runtime.fake_events)  # the doubles share one runtime per test
    plain = SamPredictor(no_graphs)
    plain.set_image(np.zeros((8, 8, 3), np.uint8))
    plain.predict(one, np.ones(1, int))
    plain.predict(one, np.ones(1, int))
    assert runtime.fake_events[before:] == []


def test_embed_batches_beyond_max_batch(fake_backend):
    """Four images through an engine of max batch 2: two calls, each embedding written at its own offset."""
    import inspect

    from segment_anything.modeling import Sam

    from sam_edge import SamPredictor

    official = inspect.signature(Sam.__init__).parameters  # the normalisation the checkpoints were trained with
    PIXEL_MEAN, PIXEL_STD = official["pixel_mean"].default, official["pixel_std"].default
    backend, _, _ = fake_backend()
    predictor = SamPredictor(backend)
    images = [np.full((30 + 10 * i, 64, 3), 40 * i + 10, np.uint8) for i in range(4)]
    predictor.set_image_batch(images)
    for i, image in enumerate(images):
        predictor.select_image(i)
        first_pixel = (float(image[0, 0, 0]) - PIXEL_MEAN[0]) / PIXEL_STD[0]
        expected = first_pixel + i % 2  # the fake adds the index within its call
        np.testing.assert_allclose(backend.to_numpy(predictor.features), expected, rtol=1e-6)


def test_backend_refuses_the_orig_im_size_decoder(fake_backend):
    with pytest.raises(ValueError, match="not the orig_im_size variant"):
        fake_backend(stack={"decoder_extra_inputs": ("orig_im_size",)})


def test_backend_keeps_its_device_when_the_caller_switches(fake_backend):
    """Multi-GPU: the backend lives on device 1; the application switches to device 0 between calls.
    Every call makes device 1 current (TensorRT runs an engine on the device it was loaded on) and
    gives device 0 back afterwards."""
    from sam_edge import SamPredictor

    backend, cuda, _ = fake_backend(stack={"device_count": 2}, device=1)
    assert cuda.cudaGetDevice()[1] == 0, "construction gives the caller's device back too"
    predictor = SamPredictor(backend)
    predictor.set_image(np.full((40, 64, 3), 100, np.uint8))
    for points in (np.ones((1, 2)), np.ones((1, 2)), np.ones((2, 2))):  # a plain run, a replay, a capture
        cuda.cudaSetDevice(0)
        _, scores, _ = predictor.predict(points, np.ones(len(points), int))
        assert cuda.cudaGetDevice()[1] == 0
    assert scores.shape == (3,)
    backend.close()


def test_cuda_graph_replay_gives_the_captured_results(fake_backend):
    """The fakes record the work queued during capture and replay it on cudaGraphLaunch, reading
    the prompt buffers as they are at launch: a replayed prompt gives the same scores as its
    plain run, and a new prompt of the same shape gives its own."""
    from sam_edge import SamPredictor

    backend, cuda, _ = fake_backend()
    predictor = SamPredictor(backend)
    predictor.set_image(np.zeros((64, 64, 3), np.uint8))
    first = predictor.predict(np.array([[10.0, 5.0]]), np.ones(1, int))[1]
    replayed = predictor.predict(np.array([[10.0, 5.0]]), np.ones(1, int))[1]
    moved = predictor.predict(np.array([[30.0, 5.0]]), np.ones(1, int))[1]
    assert sum(1 for e in cuda.fake_events if isinstance(e, tuple) and e[0] == "launch") == 2
    np.testing.assert_array_equal(replayed, first)
    x = predictor.transform.apply_coords(np.array([[30.0, 5.0]]), (64, 64))[0, 0]
    np.testing.assert_allclose(moved, np.arange(1, 4) + x / 1000, rtol=1e-6)


def test_version_compatible_plans_need_host_code_allowed(fake_backend, tmp_path, monkeypatch):
    """Version-compatible plans hold TensorRT's lean runtime, which deserializes only with
    Runtime.engine_host_code_allowed; load_tensorrt_engine takes it from the manifest."""
    from tensorrt_fakes import COMPUTE_CAPABILITY, TENSORRT_VERSION, synthetic_engines

    stack = synthetic_engines(version_compatible=True)
    _install(monkeypatch, stack)
    with pytest.raises(RuntimeError, match="could not deserialize encoder"):
        trb.TensorRTBackend(stack.plans["encoder"], stack.plans["decoder"], image_size=64, array_library="cuda-python")
    for name, plan in stack.plans.items():
        (tmp_path / f"{name}.plan").write_bytes(plan)
    section = {"version": TENSORRT_VERSION, "compute_capability": "%d.%d" % COMPUTE_CAPABILITY,
               "hardware_compatibility": "none", "version_compatible": True}
    bundle = {"image_size": 64, "graphs": {"encoder": "encoder.plan", "decoder": "decoder.plan"},
              "tensorrt": section, "model_type": "vit_b"}
    engine = trb.load_tensorrt_engine(str(tmp_path), bundle, array_library="cuda-python")
    assert engine.embed(np.zeros((1, 3, 64, 64), np.float32)) is not None


class _TorchLikeArrays:
    """The array-provider calls postprocess_masks makes (allocations are described, not made)."""

    name = "torch"

    def take_over(self):
        pass

    def hand_over(self):
        pass

    @staticmethod
    def empty(shape, dtype):
        return _DeviceBuffer(tuple(shape), np.dtype(dtype).str)


class _DeviceBuffer:
    """A device array as __cuda_array_interface__ describes it (nothing is read from it)."""

    def __init__(self, shape, typestr="<f4", strides=None):
        self.shape = shape
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (0x1000, False),
                                         "version": 3, "strides": strides}


def _gpu_postprocess_backend(function):
    from tensorrt_fakes import FakeCudaRuntime

    backend = object.__new__(trb.TensorRTBackend)
    backend._rt, backend.device_index, backend.stream = FakeCudaRuntime(), 0, 7
    backend._lock = threading.RLock()
    backend.arrays, backend.image_size, backend._gpu_postprocess = _TorchLikeArrays(), 64, function
    return backend


def test_gpu_postprocess_goes_through_postprocess_cuda():
    """Device logits go to sam_edge.postprocess.cuda.upsample_threshold_stability, the function
    that checks them, with the backend's frame, threshold and stream, writing into arrays of the
    backend's library; those logits come back."""
    calls = []

    def recorder(low_res, input_size, original_size, **kw):
        calls.append((low_res, input_size, original_size, kw))

    backend = _gpu_postprocess_backend(recorder)
    low_res = _DeviceBuffer((2, 3, 16, 16))
    logits = backend.postprocess_masks(low_res, (64, 40), (90, 57))
    (given, input_size, original_size, kw), = calls
    assert given is low_res and input_size == (64, 40) and original_size == (90, 57)
    assert kw.pop("logits_out") is logits and logits.shape == (2, 3, 90, 57)
    assert kw.pop("stability_out").shape == (2, 3) and kw.pop("boxes_out").shape == (2, 3, 4)
    assert kw == {"mask_threshold": 0.0, "frame_size": 64, "return_logits": True, "stream": 7, "return_masks": False}


def test_gpu_postprocess_refuses_what_postprocess_cuda_refuses():
    """A non-contiguous or float64 device array is refused by postprocess.cuda's checks (the old
    backend passed the raw pointer on to _C_cuda)."""
    from sam_edge.postprocess import cuda as postprocess_cuda

    if postprocess_cuda._C_cuda is None:
        pytest.skip(f"sam_edge._C_cuda is not built: {postprocess_cuda.status()}")
    backend = _gpu_postprocess_backend(postprocess_cuda.upsample_threshold_stability)
    transposed = _DeviceBuffer((2, 3, 16, 16), strides=(4, 8, 24 * 16, 24))
    with pytest.raises(ValueError, match="contiguous"):
        backend.postprocess_masks(transposed, (64, 40), (90, 57))
    with pytest.raises(TypeError, match="float32"):
        backend.postprocess_masks(_DeviceBuffer((2, 3, 16, 16), "<f8"), (64, 40), (90, 57))


def test_engine_profiles_are_shape_tuples(fake_backend):
    """The fakes' engines (see fake_backend): encoder batch 1..2; decoder profile 0 one prompt,
    profile 1 up to 3 prompts, 1..4 points, tuned for 2."""
    backend, _, _ = fake_backend()
    assert backend.encoder.profiles == [{"image": ShapeTuple((1, 3, 64, 64), (1, 3, 64, 64), (2, 3, 64, 64))}]
    interactive, batched = backend.decoder.profiles
    assert interactive["point_coords"] == ShapeTuple((1, 1, 2), (1, 2, 2), (1, 4, 2))
    assert batched["point_coords"] == ShapeTuple((1, 1, 2), (1, 2, 2), (3, 4, 2))
    assert batched["mask_input"].max == (3, 1, 16, 16) and "image_embeddings" not in batched  # static input
    assert (backend.max_batch, backend.max_prompts, backend.max_points) == (2, 3, 4)
    one = {"point_coords": (1, 2, 2), "point_labels": (1, 2), "mask_input": (1, 1, 16, 16), "has_mask_input": (1,)}
    assert backend.decoder.choose_profile(one) == 0
    assert backend.decoder.choose_profile(dict(one, point_coords=(3, 2, 2), point_labels=(3, 2))) == 1
    with pytest.raises(ValueError, match=r"point_coords \(1, 1, 2\)\.\.\(3, 4, 2\)"):
        backend.decoder.choose_profile(dict(one, point_coords=(1, 5, 2), point_labels=(1, 5)))


def test_status_with_tensorrt_and_a_gpu(fake_backend):
    """With the fakes installed: what an engine must match, and where masks are resized."""
    from tensorrt_fakes import COMPUTE_CAPABILITY, GPU_NAME, TENSORRT_VERSION

    fake_backend()  # installs the fakes
    status = tensorrt_compat.status()
    assert status["available"] and status["tensorrt"] == TENSORRT_VERSION and status["gpu"] == GPU_NAME
    assert status["compute_capability"] == "%d.%d" % COMPUTE_CAPABILITY
    assert status["summary"].startswith(f"TensorRT {TENSORRT_VERSION} on {GPU_NAME} (compute capability ")
    assert status["summary"].endswith("mask postprocess: " + status["mask_postprocess"])


def test_one_device_array_type():
    """sam_edge.postprocess.cuda reads arrays into the DeviceArray the backend allocates; a
    DeviceArray (or a view of one) passes through unchanged."""
    from sam_edge.postprocess import cuda as postprocess_cuda

    parent = cuda_buffers.DeviceArray(_FakeAllocation.ptr, (4, 3), np.float32, owner=_FakeAllocation())
    view = postprocess_cuda.device_array(parent[1:3], "low_res_logits")
    assert isinstance(view, cuda_buffers.DeviceArray) and (view.ptr, view.shape) == (parent.ptr + 12, (2, 3))
    read = postprocess_cuda.device_array(_DeviceBuffer((2, 3, 16, 16)))
    assert isinstance(read, cuda_buffers.DeviceArray) and (read.ptr, read.shape, read.dtype) == (0x1000, (2, 3, 16, 16), np.float32)


def test_backend_shared_by_threads_serialises_its_gpu_work(fake_backend):
    """One backend, one stream and one context per profile, shared by four threads, each with its
    own predictor: no two threads are ever inside an engine at once (TensorRT allows one user of
    a context at a time), and every answer is the one the same query gets alone. The engines are
    slowed so that threads not kept apart would overlap inside them."""
    import time

    from sam_edge import SamPredictor

    backend, _, _ = fake_backend(cuda_graphs=False)
    inside, most = [0], [0]
    count = threading.Lock()

    def slowed(execute):
        def run(context):
            with count:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.002)
            try:
                return execute(context)
            finally:
                with count:
                    inside[0] -= 1
        return run

    for engine in (backend.encoder, backend.decoder):
        engine.execute = slowed(engine.execute)

    rng = np.random.default_rng(21)
    jobs = [(rng.integers(0, 256, (40 + 4 * i, 64, 3), dtype=np.uint8), rng.uniform(0, 39, (12, 1, 2)))
            for i in range(4)]

    def answers(predictor, image, points):
        predictor.set_image(image)
        return [predictor.predict(p, np.array([1]))[1] for p in points]

    alone = [answers(SamPredictor(backend), *job) for job in jobs]
    together, errors = [None] * len(jobs), []
    start = threading.Barrier(len(jobs))

    def worker(i):
        try:
            predictor = SamPredictor(backend)
            start.wait()
            together[i] = answers(predictor, *jobs[i])
        except BaseException as exc:  # reported below, with the thread's index
            errors.append((i, exc))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert most[0] == 1, f"{most[0]} threads were inside the engines at once"
    for i in range(len(jobs)):
        for a, b in zip(together[i], alone[i]):
            np.testing.assert_array_equal(a, b)
