"""The concurrency model: one engine shared by many threads, one predictor per
thread, misuse refused.

N threads share one engine, each with its own predictor over its own image,
each running a stream of queries at the same time as the others. Every
answer must be bit-identical to the same query run alone: a shared engine
whose state leaked between threads (a cached decoder image part, the
attention kernel's scratch, an arena) would give another image's masks.
"""

import threading

import numpy as np
import pytest

import sam_edge
from onnx_helpers import build_test_bundle, prompt_kinds, reduced_config
from sam_edge import PredictorThreadError, SamAutomaticMaskGenerator, SamPredictor

N_THREADS = 8
N_QUERIES = 50


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    _, checkpoint, path = build_test_bundle(tmp_path_factory.mktemp("concurrency"), reduced_config(), seed=21)
    return checkpoint, path


def _ops_graph_engine(path, monkeypatch):
    """The bundle's encoder ops graph (sam_edge_ops' RelPosAttention). Where the
    kernel has no fast path load() keeps the standard graph, so the choice is
    forced: the op's portable path runs the same cuts."""
    from sam_edge.kernels import cpu_attention
    from sam_edge.runtime.ort_ops import library_refusal

    if library_refusal() is not None:
        pytest.skip(f"sam_edge_ops cannot run here: {library_refusal()}")
    monkeypatch.setattr(cpu_attention, "fast_compute", lambda head_dim, k_size, preferred: "fp32")
    engine = sam_edge.load(path, native_attention=True)
    assert engine.encoder_mode.startswith("one graph + sam_edge_ops"), engine.encoder_mode
    return engine


@pytest.fixture(params=["onnxruntime-single-graph", "onnxruntime-ops-graph", "torch"])
def engine(request, bundle, monkeypatch):
    checkpoint, path = bundle
    if request.param == "onnxruntime-single-graph":
        engine = sam_edge.load(path, native_attention=False)
        assert engine.encoder_mode == "single ONNX Runtime graph"
        return engine
    if request.param == "onnxruntime-ops-graph":
        return _ops_graph_engine(path, monkeypatch)
    from sam_edge.builder import build_sam_from_config

    return build_sam_from_config(reduced_config(), checkpoint)


def _job(seed: int):
    """One thread's work: its own image and N_QUERIES prompts of every kind, some
    with mask_input (the full decoder) and some without (the split decoder)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (int(rng.integers(48, 300)), int(rng.integers(48, 300)), 3), dtype=np.uint8)
    queries = []
    while len(queries) < N_QUERIES:
        for kwargs in prompt_kinds(image.shape, rng).values():
            kwargs = dict(kwargs, multimask_output=bool(rng.integers(2)))
            if rng.random() < 0.3:
                kwargs["mask_input"] = rng.normal(0, 3, (1, 64, 64)).astype(np.float32)
            queries.append(kwargs)
    return image, queries[:N_QUERIES]


def _run(engine, job):
    image, queries = job
    predictor = SamPredictor(engine)
    predictor.set_image(image)
    return [predictor.predict(**q) for q in queries]


def test_threads_sharing_an_engine_answer_as_if_alone(engine):
    jobs = [_job(1000 + i) for i in range(N_THREADS)]
    # mask_input's side is the engine's; the reduced config's 16x16 grid gives 64.
    assert SamPredictor(engine).backend.mask_input_size == 64
    alone = [_run(engine, job) for job in jobs]

    together = [None] * N_THREADS
    errors = []
    start = threading.Barrier(N_THREADS)

    def worker(i):
        try:
            start.wait()
            together[i] = _run(engine, jobs[i])
        except BaseException as exc:  # reported below, with the thread it came from
            errors.append((i, exc))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    assert not errors, errors
    for i in range(N_THREADS):
        for q, (expected, got) in enumerate(zip(alone[i], together[i])):
            for name, a, b in zip(("masks", "scores", "low_res"), expected, got):
                assert a.shape == b.shape and a.dtype == b.dtype, (i, q, name)
                assert np.array_equal(a, b), f"thread {i}, query {q}: {name} differs from the same query run alone"


def test_the_attention_kernel_in_two_threads_at_once():
    """Two Python threads inside _C.rel_pos_attention_qkv with the GIL released,
    each with its own OpenMP team and thread_local scratch: each answer is the
    one it gives alone. Shapes differ per thread so a shared buffer would show."""
    from sam_edge.kernels.cpu_attention import cpu_kernel_status, rel_pos_attention_qkv

    if not cpu_kernel_status()["available"]:
        pytest.skip("sam_edge._C is not built")
    rng = np.random.default_rng(3)
    cases = []
    for side, window in ((16, 0), (20, 14), (12, 0), (30, 14)):
        heads, d = 2, 64
        s = window or side
        cases.append((
            rng.standard_normal((1, side, side, 3 * heads * d), dtype=np.float32),
            rng.standard_normal((2 * s - 1, d), dtype=np.float32),
            rng.standard_normal((2 * s - 1, d), dtype=np.float32),
            rng.standard_normal((2, heads, d), dtype=np.float32) if window else None,
            heads, window, d ** -0.5,
        ))
    alone = [rel_pos_attention_qkv(*case) for case in cases]
    results = {}
    errors = []

    def worker(i):
        try:
            results[i] = [rel_pos_attention_qkv(*cases[i % len(cases)]) for _ in range(5)]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for i, outs in results.items():
        for out in outs:
            assert np.array_equal(out, alone[i % len(cases)])


class _GatedEngine:
    """Delegates to a real engine; decode() waits until the test opens the gate,
    so another thread's call provably lands while one is inside the predictor."""

    def __init__(self, engine):
        self._engine = engine
        self.inside = threading.Event()
        self.gate = threading.Event()
        for name in ("name", "image_size", "mask_input_size", "mask_threshold", "image_format", "device",
                     "takes_torch_tensors"):
            setattr(self, name, getattr(engine, name))

    def from_numpy(self, array):
        return self._engine.from_numpy(array)

    def to_numpy(self, array):
        return self._engine.to_numpy(array)

    def embed(self, input_image):
        return self._engine.embed(input_image)

    def decode(self, *args):
        self.inside.set()
        assert self.gate.wait(timeout=60)
        return self._engine.decode(*args)

    def postprocess_masks(self, *args):
        return self._engine.postprocess_masks(*args)

    def binary_masks(self, *args):
        return self._engine.binary_masks(*args)


@pytest.fixture
def ort_engine(bundle):
    return sam_edge.load(bundle[1], native_attention=False)


def test_two_threads_inside_one_predictor_are_refused(ort_engine):
    gated = _GatedEngine(ort_engine)
    predictor = SamPredictor(gated)
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    answer = {}

    def query():
        predictor.set_image(image)
        answer["masks"] = predictor.predict(point_coords=np.array([[10.0, 20.0]]), point_labels=np.array([1]))

    query = threading.Thread(target=query)
    query.start()
    assert gated.inside.wait(timeout=60)
    try:
        with pytest.raises(PredictorThreadError, match="one predictor per thread"):
            predictor.set_image(image[::-1].copy())
        with pytest.raises(PredictorThreadError, match="inside SamPredictor.predict"):
            predictor.predict(box=np.array([0, 0, 50, 50]))
    finally:
        gated.gate.set()
        query.join(timeout=60)
    # The first thread's query finished on its own image, untouched.
    alone = SamPredictor(ort_engine)
    alone.set_image(image)
    expected = alone.predict(point_coords=np.array([[10.0, 20.0]]), point_labels=np.array([1]))
    for a, b in zip(expected, answer["masks"]):
        assert np.array_equal(a, b)


def test_predicting_on_an_image_another_thread_set_is_refused(ort_engine):
    predictor = SamPredictor(ort_engine)
    rng = np.random.default_rng(1)
    predictor.set_image(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    caught = []

    def other():
        try:
            predictor.predict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([1]))
        except PredictorThreadError as exc:
            caught.append(exc)
        # Handing the predictor over is fine once this thread sets its own image.
        predictor.set_image(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))
        caught.append(predictor.predict(box=np.array([0, 0, 10, 10]))[0].shape)

    t = threading.Thread(target=other)
    t.start()
    t.join(timeout=60)
    assert isinstance(caught[0], PredictorThreadError) and "set on another thread" in str(caught[0])
    assert caught[1] == (3, 32, 48)
    # ... and now the image is the other thread's.
    with pytest.raises(PredictorThreadError):
        predictor.get_image_embedding()


def test_one_mask_generator_in_two_threads_is_refused(ort_engine):
    gated = _GatedEngine(ort_engine)
    generator = SamAutomaticMaskGenerator(gated, points_per_side=2)
    image = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    first = threading.Thread(target=generator.generate, args=(image,))
    first.start()
    assert gated.inside.wait(timeout=60)
    try:
        with pytest.raises(PredictorThreadError, match="one generator per thread"):
            generator.generate(image)
    finally:
        gated.gate.set()
        first.join(timeout=60)


def test_max_image_pixels_guard(ort_engine):
    predictor = SamPredictor(ort_engine, max_image_pixels=100 * 100)
    # A view over a few bytes: the guard must refuse before anything is resized or copied.
    huge = np.lib.stride_tricks.as_strided(np.zeros(3, np.uint8), (30000, 30000, 3), (0, 0, 1))
    with pytest.raises(ValueError, match="30000 x 30000 pixels is over the limit of 10000"):
        predictor.set_image(huge)
    with pytest.raises(ValueError, match="over the limit"):
        SamPredictor(ort_engine).set_image(huge)  # the default bound
    predictor.set_image(np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(ValueError, match="max_image_pixels"):
        SamPredictor(ort_engine, max_image_pixels=0)
