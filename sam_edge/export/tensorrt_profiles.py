"""Optimization profiles, input name -> ShapeTuple(min, opt, max): the encoder's and the
fast decoder's as data, and any profile checked against a graph's inputs. Pure
functions: neither onnx nor TensorRT is imported.
"""

from typing import Dict, List, Mapping, Sequence

from ..runtime.tensorrt_compat import Profile, ShapeTuple
from .tensorrt_graph_checks import InputSpec

ENCODER_INPUT = "image"


def encoder_profile(max_batch: int = 1, image_size: int = 1024, opt_batch: int = 1) -> Profile:
    """The encoder's profile: image (B, 3, S, S) with 1 <= B <= max_batch, tuned for opt_batch."""
    check_counts(max_batch=max_batch, opt_batch=opt_batch, image_size=image_size)
    if opt_batch > max_batch:
        raise ValueError(f"opt_batch ({opt_batch}) must not exceed max_batch ({max_batch})")
    s = image_size
    return {ENCODER_INPUT: ShapeTuple((1, 3, s, s), (opt_batch, 3, s, s), (max_batch, 3, s, s))}


def decoder_profiles(
    max_points: int = 16,
    max_prompts: int = 64,
    opt_points: int = 2,
    opt_prompts: int = 64,
    embedding_size: int = 64,
    embed_dim: int = 256,
) -> List[Profile]:
    """Two profiles of the fast decoder, B prompts of N points each (N counts the
    padding point or the two box corners the runtime adds):

    0. interactive: one prompt, 1 <= N <= max_points, tuned for opt_points (a
       click plus its padding point is N = 2). The CUDA graph is captured here.
    1. batched: 1 <= B <= max_prompts, tuned for (opt_prompts, opt_points), as
       the automatic mask generator's point grid.

    mask_input / has_mask_input take 1 (shared, or no mask) up to max_prompts rows.
    """
    check_counts(max_points=max_points, max_prompts=max_prompts, opt_points=opt_points, opt_prompts=opt_prompts)
    if opt_points > max_points or opt_prompts > max_prompts:
        raise ValueError(
            f"opt shapes must fit the max shapes: opt_points {opt_points} <= max_points {max_points}, "
            f"opt_prompts {opt_prompts} <= max_prompts {max_prompts}"
        )
    g, m = embedding_size, 4 * embedding_size

    def profile(opt_b: int, max_b: int) -> Profile:
        return {
            "image_embeddings": ShapeTuple(*((1, embed_dim, g, g),) * 3),
            "point_coords": ShapeTuple((1, 1, 2), (opt_b, opt_points, 2), (max_b, max_points, 2)),
            "point_labels": ShapeTuple((1, 1), (opt_b, opt_points), (max_b, max_points)),
            "mask_input": ShapeTuple((1, 1, m, m), (1, 1, m, m), (max_b, 1, m, m)),
            "has_mask_input": ShapeTuple((1,), (1,), (max_b,)),
        }

    return [profile(1, 1), profile(opt_prompts, max_prompts)]


def check_counts(**values: int) -> None:
    """ValueError naming the first value that is not a positive integer."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")


def validate_profile(profile: Mapping[str, Sequence[Sequence[int]]], specs: Mapping[str, InputSpec], what: str) -> Profile:
    """Check a profile against the graph's inputs and return it as tuples.

    Every graph input needs a (min, opt, max) of its rank; static dims must be
    equal to the graph's in all three; min <= opt <= max per axis; sizes >= 1.
    """
    missing = [n for n in specs if n not in profile]
    unknown = [n for n in profile if n not in specs]
    if missing or unknown:
        raise ValueError(
            f"{what}: the profile does not match the graph's inputs {list(specs)}: "
            + ", ".join(filter(None, [missing and f"no shapes for {missing}", unknown and f"no such input {unknown}"]))
        )
    out: Profile = {}
    for name, spec in specs.items():
        ranges = profile[name]
        if len(ranges) != 3:
            raise ValueError(f"{what}: {name} needs (min, opt, max) shapes; got {ranges!r}")
        shapes = tuple(tuple(int(d) for d in shape) for shape in ranges)
        for label, shape in zip(("min", "opt", "max"), shapes):
            if len(shape) != spec.rank:
                raise ValueError(f"{what}: {name} has rank {spec.rank} {spec.dims}; the {label} shape is {shape}")
            if any(d < 1 for d in shape):
                raise ValueError(f"{what}: {name} {label} shape {shape} has a size below 1")
            for axis, (d, graph_d) in enumerate(zip(shape, spec.dims)):
                if isinstance(graph_d, int) and d != graph_d:
                    raise ValueError(
                        f"{what}: {name} axis {axis} is fixed at {graph_d} in the graph {spec.dims}; "
                        f"the {label} shape {shape} gives {d}"
                    )
        lo, opt, hi = shapes
        if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
            raise ValueError(f"{what}: {name} needs min <= opt <= max on every axis; got {lo}, {opt}, {hi}")
        out[name] = ShapeTuple(*shapes)
    return out


def profile_to_json(profile: Profile) -> Dict[str, List[List[int]]]:
    return {name: [list(s) for s in ranges] for name, ranges in profile.items()}
