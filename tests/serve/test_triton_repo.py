"""`sam-edge export-triton`: the model repository, validated without a Triton server.

The configs must parse and describe the graphs they serve (checked against
ONNX Runtime's view of the copied graphs, an independent reader), a graph with
sam-edge's ops must name the op library that onnxruntime then runs it with, and the
Python-backend model must answer as a local SamPredictor does, run in-process
against a spec'd fake of triton_python_backend_utils whose BLS calls execute
the repository's own graphs with ONNX Runtime after checking each call against
the called model's config, as Triton does.
"""

import importlib.util
import json
import os
import sys
import types

import numpy as np
import pytest

from onnx_helpers import build_test_bundle, photos, reduced_config

import sam_edge
from sam_edge.cli import main
from sam_edge.runtime import ort_ops
from sam_edge.serve import triton_repo
from sam_edge.serve.api import image_id_of

SCORE_ATOL = 1e-4  # the full decoder graph here vs the split one locally: float32 reassociation
LOGIT_ATOL = 1e-3  # masks may differ only where the local logit is this close to the threshold
# The encoder_ops graph (fp32 RelPosAttention, asserted) against the standard graph: both
# float32, differing by summation order and exp's approximation, a few ulps per element
# through the layers; 1e-5 rel-L2 is over ten times that, far below any wrong weight or feed.
OPS_EMBEDDING_RTOL = 1e-5


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return build_test_bundle(tmp_path_factory.mktemp("triton"), reduced_config(), seed=13)[2]


@pytest.fixture(scope="module")
def ops_repository(bundle, tmp_path_factory):
    """The repository exported with --encoder ops."""
    if ort_ops.library_path() is None:
        pytest.skip("sam_edge_ops is not built (pip install . builds it)")
    out = tmp_path_factory.mktemp("ops_repo") / "model_repository"
    assert main(["export-triton", str(bundle), "--output", str(out), "--cache-mib", "1", "--encoder", "ops"]) == 0
    return out


@pytest.fixture(scope="module")
def repository(bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("repo") / "model_repository"
    assert main(["export-triton", str(bundle), "--output", str(out), "--cache-mib", "1"]) == 0
    return out


# ---------------------------------------------------------------- a fake of triton_python_backend_utils

_ORT_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16", "tensor(int64)": "TYPE_INT64",
              "tensor(int32)": "TYPE_INT32", "tensor(bool)": "TYPE_BOOL", "tensor(uint8)": "TYPE_UINT8"}


def fake_triton_utils(repository, calls):
    """A module with the names of triton_python_backend_utils that model.py may use, and
    no others (a missing name raises AttributeError, as on any module). Documented
    failure modes modelled: BLS to an unknown model, an input the called model does not
    declare or of the wrong type or shape, a required input missing, an undeclared
    output requested: each an error response, as Triton gives."""
    import onnxruntime as ort

    configs = triton_repo.read_repository(str(repository))
    sessions = {}

    class TritonError:
        def __init__(self, message):
            self._message = str(message)

        def message(self):
            return self._message

    class Tensor:
        def __init__(self, name, array):
            if not isinstance(name, str) or not isinstance(array, np.ndarray):
                raise TypeError(f"Tensor(name: str, array: numpy.ndarray); got {type(name)}, {type(array)}")
            self._name, self._array = name, array

        def name(self):
            return self._name

        def as_numpy(self):
            return self._array

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self._tensors, self._error = list(output_tensors), error

        def has_error(self):
            return self._error is not None

        def error(self):
            return self._error

        def output_tensors(self):
            return self._tensors

    def check(model, tensors, kind):
        """None, or the message Triton would give for tensors that do not fit the model's config."""
        declared = triton_repo.config_tensors(configs[model], kind)
        max_batch = configs[model]["max_batch_size"][0]
        for tensor in tensors:
            if tensor.name() not in declared:
                return f"unexpected inference {kind} '{tensor.name()}' for model '{model}'"
            dtype, dims, _ = declared[tensor.name()]
            array = tensor.as_numpy()
            if array.dtype != np.dtype(triton_repo.TRITON_TO_NUMPY[dtype]):
                return f"{kind} '{tensor.name()}' data-type {array.dtype}, model expects {dtype}"
            if len(dims) != array.ndim or any(d != -1 and d != s for d, s in zip(dims, array.shape)):
                return f"{kind} '{tensor.name()}' shape {list(array.shape)}, model expects {dims}"
            if max_batch > 0 and array.shape[0] > max_batch:
                return f"{kind} '{tensor.name()}' batch {array.shape[0]} over max_batch_size {max_batch}"
        if kind == "input":
            given = {t.name() for t in tensors}
            missing = [n for n, (_, _, optional) in declared.items() if not optional and n not in given]
            if missing:
                return f"expected {len(declared)} inputs but got {len(given)} inputs for model '{model}'"
        return None

    class InferenceRequest:
        def __init__(self, model_name, requested_output_names, inputs):
            self.model_name, self.requested = model_name, list(requested_output_names)
            self.inputs = list(inputs)

        def exec(self):
            if self.model_name not in configs or not (repository / self.model_name / "1" / "model.onnx").exists():
                return InferenceResponse([], TritonError(f"Model '{self.model_name}' is not ready"))
            problem = check(self.model_name, self.inputs, "input")
            undeclared = [n for n in self.requested
                          if n not in triton_repo.config_tensors(configs[self.model_name], "output")]
            if problem or undeclared:
                return InferenceResponse([], TritonError(problem or f"unknown output {undeclared[0]}"))
            calls.append(self.model_name)
            if self.model_name not in sessions:
                sessions[self.model_name] = ort.InferenceSession(
                    str(repository / self.model_name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
            outputs = sessions[self.model_name].run(self.requested, {t.name(): t.as_numpy() for t in self.inputs})
            tensors = [Tensor(n, o) for n, o in zip(self.requested, outputs)]
            problem = check(self.model_name, tensors, "output")
            return InferenceResponse([], TritonError(problem)) if problem else InferenceResponse(tensors)

    def get_input_tensor_by_name(request, name):
        return next((t for t in request.inputs if t.name() == name), None)

    def get_output_tensor_by_name(response, name):
        return next((t for t in response.output_tensors() if t.name() == name), None)

    module = types.ModuleType("triton_python_backend_utils")
    for obj in (TritonError, Tensor, InferenceResponse, InferenceRequest, get_input_tensor_by_name,
                get_output_tensor_by_name):
        setattr(module, obj.__name__, obj)
    module.check = check  # for the test's own requests to the predictor model
    return module


def model_config_json(config):
    """The JSON form of a parsed config that Triton hands to initialize() (parameters as a map)."""
    return json.dumps({"name": config["name"][0],
                       "parameters": {k: {"string_value": v} for k, v in triton_repo.parameters(config).items()}})


@pytest.fixture
def predictor_model(repository, monkeypatch):
    calls = []
    utils = fake_triton_utils(repository, calls)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", utils)
    spec = importlib.util.spec_from_file_location("sam_predictor_model", repository / "sam_predictor" / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    config = triton_repo.read_repository(str(repository))["sam_predictor"]
    model.initialize({"model_config": model_config_json(config)})
    return model, utils, calls


def request(utils, **inputs):
    """A client request to sam_predictor (batch dim 1), checked against its config first."""
    tensors = [utils.Tensor(name, value) for name, value in inputs.items()]
    assert utils.check("sam_predictor", tensors, "input") is None
    return utils.InferenceRequest("sam_predictor", [], tensors)


def outputs(utils, response):
    assert not response.has_error(), response.error().message()
    assert utils.check("sam_predictor", response.output_tensors(), "output") is None
    return {t.name(): t.as_numpy()[0] for t in response.output_tensors()}


# ---------------------------------------------------------------- tests


def assert_config_describes(config, session, name):
    """The parsed config's inputs and outputs are the ONNX Runtime session's, by name, type and dims."""
    assert config["name"] == [name] and config["backend"] == ["onnxruntime"]
    for kind, values in (("input", session.get_inputs()), ("output", session.get_outputs())):
        declared = triton_repo.config_tensors(config, kind)
        assert set(declared) == {v.name for v in values}
        for v in values:
            dtype, dims, _ = declared[v.name]
            assert dtype == _ORT_TYPES[v.type]
            assert dims == [d if isinstance(d, int) else -1 for d in v.shape], (name, v.name)


def test_configs_parse_and_describe_the_graphs(repository, bundle):
    import onnxruntime as ort

    configs = triton_repo.read_repository(str(repository))
    assert set(configs) == {"sam_encoder", "sam_decoder", "sam_predictor"}
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["backend"] == "onnxruntime"
    for name in ("sam_encoder", "sam_decoder"):
        session = ort.InferenceSession(str(repository / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        assert_config_describes(configs[name], session, name)
        assert "model_operations" not in configs[name]
        assert configs[name]["instance_group"] == [{"count": [1], "kind": ["KIND_GPU"]}]
    assert (repository / "sam_encoder" / "1" / "model.onnx").read_bytes() == (bundle / "encoder.onnx").read_bytes()
    assert configs["sam_encoder"]["max_batch_size"] == [4]
    assert configs["sam_decoder"]["max_batch_size"] == [0]  # one embedding for N prompts: not stackable
    predictor = configs["sam_predictor"]
    assert predictor["backend"] == ["python"] and predictor["max_batch_size"][0] > 0
    assert "dynamic_batching" in predictor
    params = triton_repo.parameters(predictor)
    assert int(params["image_size"]) == manifest["image_size"]
    assert int(params["mask_input_size"]) == manifest["mask_input_size"]
    assert params["cache_bytes"] == str(1 << 20)
    assert (repository / "sam_predictor" / "1" / "model.py").read_text() == open(triton_repo.MODEL_PY).read()


def test_pbtxt_round_trip_and_errors():
    config = {"name": "m", "max_batch_size": 0, "flag": True, "ratio": 0.5,
              "input": [{"name": "x", "data_type": triton_repo.Enum("TYPE_FP32"), "dims": [-1, 3]}],
              "dynamic_batching": {"max_queue_delay_microseconds": 100},
              "parameters": [{"key": "k", "value": {"string_value": 'a "quoted" value'}}]}
    parsed = triton_repo.parse_pbtxt("# a comment\n" + triton_repo.to_pbtxt(config))
    assert parsed == {"name": ["m"], "max_batch_size": [0], "flag": [True], "ratio": [0.5],
                      "input": [{"name": ["x"], "data_type": ["TYPE_FP32"], "dims": [-1, 3]}],
                      "dynamic_batching": [{"max_queue_delay_microseconds": [100]}],
                      "parameters": [{"key": ["k"], "value": [{"string_value": ['a "quoted" value']}]}]}
    for bad in ("name: ", "input [ { name: \"x\" ", "a { b: 1 } }", "1: 2"):
        with pytest.raises(ValueError, match="pbtxt"):
            triton_repo.parse_pbtxt(bad)


def test_configs_parse_as_triton_model_config_protos(repository):
    """Where tritonclient's ModelConfig proto is installed, protobuf itself reads every config."""
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    for name in ("sam_encoder", "sam_decoder", "sam_predictor"):
        proto = text_format.Parse((repository / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert proto.name == name


def test_python_backend_model_answers_as_the_local_predictor(predictor_model, bundle):
    model, utils, calls = predictor_model
    image = np.ascontiguousarray(photos()["landscape"][40:220, 100:400])
    h, w = image.shape[:2]
    (response,) = model.execute([request(utils, IMAGE=image[None])])
    image_id = outputs(utils, response)["RESOLVED_IMAGE_ID"][0].decode()
    assert image_id == image_id_of(image) and calls == ["sam_encoder"]

    rng = np.random.default_rng(0)
    prompts = []
    for _ in range(3):  # three one-point prompts: one decoder call
        prompts.append(dict(point_coords=np.array([[rng.uniform(0, w), rng.uniform(0, h)]]), point_labels=np.array([1]),
                            multimask_output=True))
    prompts.append(dict(box=np.array([10.0, 20.0, w - 30.0, h - 5.0]), multimask_output=False))
    requests = []
    for p in prompts:
        inputs = {"IMAGE_ID": np.array([[image_id.encode()]], dtype=object),
                  "MULTIMASK_OUTPUT": np.array([[p["multimask_output"]]])}
        if "point_coords" in p:
            inputs.update(POINT_COORDS=p["point_coords"][None].astype(np.float32),
                          POINT_LABELS=p["point_labels"][None].astype(np.int32))
        if "box" in p:
            inputs["BOX"] = p["box"][None].astype(np.float32)
        requests.append(request(utils, **inputs))
    bad = request(utils, IMAGE_ID=np.array([[image_id.encode()]], dtype=object),
                  POINT_COORDS=np.array([[[np.nan, 1.0]]], np.float32), POINT_LABELS=np.array([[1]], np.int32))
    unknown = request(utils, IMAGE_ID=np.array([[b"never-embedded"]], dtype=object), BOX=np.array([[0, 0, 5, 5]], np.float32))
    responses = model.execute(requests + [bad, unknown])
    assert calls == ["sam_encoder", "sam_decoder", "sam_decoder"]  # the points together, the box alone
    assert responses[-2].has_error() and "NaN" in responses[-2].error().message()
    assert responses[-1].has_error() and "resend" in responses[-1].error().message()

    local = sam_edge.SamPredictor(sam_edge.load(str(bundle)))
    local.set_image(image)
    for p, response in zip(prompts, responses):
        answer = outputs(utils, response)
        masks, scores, low_res = local.predict(**p)
        logits, _, _ = local.predict(**p, return_logits=True)
        assert answer["MASKS"].shape == masks.shape
        assert np.all(np.abs(logits[answer["MASKS"] != masks]) <= LOGIT_ATOL)
        np.testing.assert_allclose(answer["SCORES"], scores, atol=SCORE_ATOL, rtol=0)
        np.testing.assert_allclose(answer["LOW_RES_LOGITS"], low_res, atol=LOGIT_ATOL, rtol=0)
        assert answer["RESOLVED_IMAGE_ID"][0].decode() == image_id


def test_python_backend_model_evicts_by_bytes_and_reembeds(predictor_model):
    """The 1 MiB bound holds a few small embeddings: the oldest id then misses, and
    resending its image embeds it again."""
    model, utils, calls = predictor_model
    images = [np.random.default_rng(i).integers(0, 256, (50, 70, 3), dtype=np.uint8) for i in range(6)]
    for image in images:
        assert not model.execute([request(utils, IMAGE=image[None])])[0].has_error()
    held = model.cache.stats()
    assert held["evictions"] >= 1 and held["bytes"] <= 1 << 20
    first = np.array([[image_id_of(images[0]).encode()]], dtype=object)
    box = np.array([[0, 0, 30, 30]], np.float32)
    (miss,) = model.execute([request(utils, IMAGE_ID=first, BOX=box)])
    assert miss.has_error() and "resend" in miss.error().message()
    runs = calls.count("sam_encoder")
    (again,) = model.execute([request(utils, IMAGE_ID=first, IMAGE=images[0][None], BOX=box)])
    assert outputs(utils, again)["MASKS"].shape[1:] == (50, 70)
    assert calls.count("sam_encoder") == runs + 1


def test_export_refuses_a_non_empty_output(bundle, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    assert main(["export-triton", str(bundle), "--output", str(tmp_path)]) == 1
    assert "not empty" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_a_graph_with_sam_edge_ops_gets_the_op_library(bundle, tmp_path):
    """A graph with ai.sam_edge nodes gets the op library copied beside its config and
    model_operations { op_library_filename } naming it; onnxruntime loads the graph after
    registering that file, as Triton's onnxruntime backend does, and not without it."""
    import shutil

    import onnx
    import onnxruntime as ort

    from sam_edge.runtime import ort_ops
    from sam_edge.runtime.bundle import sha256_file

    library = ort_ops.library_path()
    if library is None:
        pytest.skip("sam_edge_ops is not built (pip install . builds it)")
    custom = tmp_path / "bundle"
    shutil.copytree(bundle, custom)
    manifest = json.loads((custom / "manifest.json").read_text())
    decoder_path = custom / manifest["graphs"]["decoder"]
    model = onnx.load(str(decoder_path))
    # The decoder's low-res logits pass through the library's LayerNorm over their last axis.
    producer = next(n for n in model.graph.node if "low_res_masks" in n.output)
    producer.output[list(producer.output).index("low_res_masks")] = "low_res_masks_raw"
    width = next(o for o in model.graph.output if o.name == "low_res_masks").type.tensor_type.shape.dim[-1].dim_value
    model.graph.initializer.extend([onnx.numpy_helper.from_array(np.ones(width, np.float32), "ln_scale"),
                                    onnx.numpy_helper.from_array(np.zeros(width, np.float32), "ln_bias")])
    model.graph.node.append(onnx.helper.make_node("LayerNorm", ["low_res_masks_raw", "ln_scale", "ln_bias"],
                                                  ["low_res_masks"], domain=ort_ops.DOMAIN, epsilon=1e-5))
    model.opset_import.append(onnx.helper.make_opsetid(ort_ops.DOMAIN, ort_ops.DOMAIN_VERSION))
    onnx.save(model, str(decoder_path))
    record = manifest["files"][manifest["graphs"]["decoder"]]
    record.update(bytes=decoder_path.stat().st_size, sha256=sha256_file(str(decoder_path)))
    (custom / "manifest.json").write_text(json.dumps(manifest))

    out = tmp_path / "repo"
    assert main(["export-triton", str(custom), "--output", str(out), "--cache-mib", "1"]) == 0
    configs = triton_repo.read_repository(str(out))
    assert "model_operations" not in configs["sam_encoder"]
    (ops,) = configs["sam_decoder"]["model_operations"]
    (named,) = ops["op_library_filename"]
    assert named == str(out.resolve() / "sam_decoder" / os.path.basename(library))
    with open(named, "rb") as a, open(library, "rb") as b:
        assert a.read() == b.read()
    graph = str(out / "sam_decoder" / "1" / "model.onnx")
    with pytest.raises(Exception, match="LayerNorm|ai.sam_edge"):
        ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    options = ort.SessionOptions()
    options.register_custom_ops_library(named)
    ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    moved = tmp_path / "repo_for_server"
    assert main(["export-triton", str(custom), "--output", str(moved), "--cache-mib", "1",
                 "--ops-library-dir", "/models"]) == 0
    (ops,) = triton_repo.read_repository(str(moved))["sam_decoder"]["model_operations"]
    assert ops["op_library_filename"] == ["/models/sam_decoder/" + os.path.basename(library)]


# ---------------------------------------------------------------- --encoder ops


def test_the_ops_encoder_names_the_op_library(ops_repository, bundle):
    """--encoder ops serves the bundle's encoder_ops.onnx (with the external weights it
    names), on CPU instances, with the op library copied beside its config and named
    by model_operations; the decoder as in the standard export."""
    import onnx
    import onnxruntime as ort

    library = ort_ops.library_path()
    manifest = json.loads((bundle / "manifest.json").read_text())
    configs = triton_repo.read_repository(str(ops_repository))
    assert set(configs) == {"sam_encoder", "sam_decoder", "sam_predictor"}
    encoder = configs["sam_encoder"]
    model = ops_repository / "sam_encoder" / "1" / "model.onnx"
    assert model.read_bytes() == (bundle / manifest["encoder_ops"]["file"]).read_bytes()
    assert triton_repo.uses_custom_ops(str(model))
    (ops,) = encoder["model_operations"]
    assert ops["op_library_filename"] == [str(ops_repository.resolve() / "sam_encoder" / os.path.basename(library))]
    with open(ops["op_library_filename"][0], "rb") as a, open(library, "rb") as b:
        assert a.read() == b.read()
    assert encoder["instance_group"] == [{"count": [1], "kind": ["KIND_CPU"]}]
    assert encoder["max_batch_size"] == [4]
    assert "model_operations" not in configs["sam_decoder"]
    assert configs["sam_decoder"]["instance_group"] == [{"count": [1], "kind": ["KIND_GPU"]}]
    session = ort.InferenceSession(str(ops_repository / "sam_decoder" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    assert_config_describes(configs["sam_decoder"], session, "sam_decoder")
    # The encoder's interface from the graph itself: onnxruntime opens it only with the
    # library registered, which the next test does where this CPU allows.
    graph = onnx.load(str(model), load_external_data=False).graph
    declared = triton_repo.config_tensors(encoder, "input")
    assert set(declared) == {i.name for i in graph.input} == {"image"}
    assert declared["image"][:2] == ("TYPE_FP32", [-1, 3, manifest["image_size"], manifest["image_size"]])
    assert set(triton_repo.config_tensors(encoder, "output")) == {o.name for o in graph.output}


def test_the_ops_encoder_model_runs_as_sam_edge_load_embeds(ops_repository, bundle):
    """The exported encoder model, run by onnxruntime after registering the file that
    model_operations names (as Triton's onnxruntime backend does), embeds a batch of
    two fresh random images as sam_edge.load's standard graph does, at OPS_EMBEDDING_RTOL."""
    import onnxruntime as ort

    refusal = ort_ops.library_refusal()
    if refusal is not None:
        pytest.skip(refusal)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["encoder_ops"]["compute"] == "fp32"
    config = triton_repo.read_repository(str(ops_repository))["sam_encoder"]
    (named,) = config["model_operations"][0]["op_library_filename"]
    options = ort.SessionOptions()
    options.register_custom_ops_library(named)
    session = ort.InferenceSession(str(ops_repository / "sam_encoder" / "1" / "model.onnx"), options,
                                   providers=["CPUExecutionProvider"])
    assert_config_describes(config, session, "sam_encoder")

    engine = sam_edge.load(str(bundle), native_attention=False)
    assert engine.encoder_mode == "single ONNX Runtime graph"
    images = np.random.default_rng(29).integers(0, 256, (2, 3, 200, 256), dtype=np.uint8)
    expected = engine.embed(images)
    (embedding,) = session.run(["image_embeddings"], {"image": engine.preprocess(images)})
    assert embedding.shape == expected.shape
    for served, local in zip(embedding, expected):
        assert np.linalg.norm(served - local) <= OPS_EMBEDDING_RTOL * np.linalg.norm(local)
    assert np.linalg.norm(expected[0] - expected[1]) > 0.1 * np.linalg.norm(expected[0]), "two images, two embeddings"


def _bundle_without_encoder_ops(bundle, root):
    """A copy of the bundle (its files linked) whose manifest has no encoder_ops, as an older build's."""
    root.mkdir()
    for path in bundle.iterdir():
        if path.name != "manifest.json":
            (root / path.name).symlink_to(path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["encoder_ops"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_the_ops_encoder_refuses_a_bundle_without_it_and_writes_nothing(bundle, tmp_path, capsys):
    older = _bundle_without_encoder_ops(bundle, tmp_path / "bundle")
    out = tmp_path / "repo"
    assert main(["export-triton", str(older), "--output", str(out), "--encoder", "ops"]) == 1
    err = capsys.readouterr().err
    assert "has no encoder_ops graph" in err and "--encoder standard" in err
    assert not out.exists()


def test_the_ops_encoder_without_the_library_writes_nothing(bundle, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(ort_ops.LIBRARY_ENV, str(tmp_path / "no" / "libsam_edge_ops.so"))
    out = tmp_path / "repo"
    assert main(["export-triton", str(bundle), "--output", str(out), "--encoder", "ops"]) == 1
    err = capsys.readouterr().err
    assert "the encoder graph uses sam-edge's custom ops" in err and "not built" in err
    assert not out.exists()
