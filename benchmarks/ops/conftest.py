"""pytest-benchmark set-up for the op benchmarks: each op, sam-edge's paths beside
the official implementation in one benchmark group, on the same inputs.

    pytest benchmarks/ops --benchmark-json=ops.json            # a minute or two on 2 cores
    pytest benchmarks/ops --benchmark-compare                   # against the last saved run
    pytest benchmarks/ops --benchmark-autosave                  # save this one for comparing

Not part of the test run (testpaths = tests); tests/test_bench_ops_collect.py
only checks that these collect.
"""

import pytest

try:
    import pytest_benchmark  # noqa: F401
except ImportError:  # collect anyway (CI checks collection), skip at run time
    pytest_benchmark = None


def pytest_collection_modifyitems(config, items):
    if pytest_benchmark is None:
        skip = pytest.mark.skip(reason="pytest-benchmark is not installed: pip install pytest-benchmark")
        for item in items:
            item.add_marker(skip)


@pytest.fixture(params=["compiled", "numpy"])
def postprocess_path(request, monkeypatch):
    """sam_edge.postprocess with its compiled kernels (sam_edge._C), or forced onto
    its numpy fallback; the value is the path's label for the benchmark."""
    import sam_edge.postprocess as pp

    if request.param == "compiled":
        if not pp.compiled_available():
            pytest.skip(f"sam_edge._C is not in use: {pp.active_path()}")
    else:
        monkeypatch.setattr(pp, "_C", None)
    return f"sam-edge {request.param}"
