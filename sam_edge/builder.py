"""Build SAM from a config, and load official checkpoints safely.

Checkpoints are read with ``torch.load(weights_only=True)``: no pickle code
ever runs. They are loaded strictly, and a checkpoint of another size is
named as such. Without a checkpoint, `random_weights_model` is the one seeded
random model that `sam-edge predict`, `build`, `validate` and `bench` share.
"""

import os
import zipfile
from functools import partial
from typing import Dict, Optional, Union

import torch

from .config import SAM_CONFIGS, SamConfig, get_config
from .modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer


#: Seed of the random weights used when no checkpoint is given.
RANDOM_WEIGHTS_SEED = 0


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable, or not a SAM state_dict of the expected size."""


def build_sam_from_config(config: SamConfig, checkpoint: Optional[Union[str, os.PathLike]] = None) -> Sam:
    """An eval-mode Sam for `config`, with weights from `checkpoint` when given."""
    grid = config.image_embedding_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=config.image_size,
            patch_size=config.patch_size,
            embed_dim=config.encoder_embed_dim,
            depth=config.encoder_depth,
            num_heads=config.encoder_num_heads,
            global_attn_indexes=config.encoder_global_attn_indexes,
            window_size=config.window_size,
            mlp_ratio=config.mlp_ratio,
            out_chans=config.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(config.image_size, config.image_size),
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=config.prompt_embed_dim,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.prompt_embed_dim,
                num_heads=config.decoder_num_heads,
                mlp_dim=config.decoder_mlp_dim,
            ),
            num_multimask_outputs=config.num_multimask_outputs,
            iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
    )
    sam.config = config
    sam.eval()
    if checkpoint is not None:
        load_sam_weights(sam, checkpoint)
    return sam


def random_weights_model(config: SamConfig, seed: int = RANDOM_WEIGHTS_SEED) -> Sam:
    """An eval-mode Sam for `config` with seeded random weights: the same seed gives the same model.

    The default initialisers draw from torch's global generator, seeded with `seed` and restored
    afterwards; then `randomize_weights_` gives the parameters they leave trivial a value.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        sam = build_sam_from_config(config)
    randomize_weights_(sam, seed)
    return sam


def randomize_weights_(sam: Sam, seed: int) -> None:
    """Give the rel-pos tables, pos_embed and the norms a seeded, non-trivial value in place
    (the default init leaves them at zero or one, which would hide export bugs)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sam.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith(("rel_pos_h", "rel_pos_w", "pos_embed")):
                param.copy_(0.5 * noise)
            elif "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.1 * noise)
            elif "norm" in name and name.endswith("bias"):
                param.copy_(0.1 * noise)


def read_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """The state_dict stored at `path`, read without running pickle code."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint path is a directory, expected a .pth file: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (zipfile.BadZipFile, EOFError, RuntimeError) as exc:
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is truncated or not a PyTorch checkpoint ({exc})"
        ) from exc
    except Exception as exc:  # the unpickler's refusal of code, or garbage input
        raise CheckpointError(
            f"refusing checkpoint {path}: it is not a plain weights-only state_dict "
            f"(only tensors and containers may be stored; {type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} is not a state_dict (a dict of tensors); got {type(state).__name__}")
    odd = [k for k in state if not isinstance(k, str)]
    if odd:
        raise CheckpointError(f"checkpoint {path} is not a state_dict: its keys must be parameter names (str); "
                              f"found {type(odd[0]).__name__} {odd[0]!r}")
    return state


def infer_model_type(state_dict: Dict[str, torch.Tensor]) -> Optional[str]:
    """The official size ("vit_b", "vit_l", "vit_h") a state_dict matches, or None."""
    proj = state_dict.get("image_encoder.patch_embed.proj.weight")
    if proj is None or proj.dim() == 0:
        return None
    depth = len({k.split(".")[2] for k in state_dict if k.startswith("image_encoder.blocks.")})
    for name, cfg in SAM_CONFIGS.items():
        if cfg.encoder_embed_dim == proj.shape[0] and cfg.encoder_depth == depth:
            return name
    return None


def load_sam_weights(sam: Sam, checkpoint: Union[str, os.PathLike]) -> None:
    """Load an official-format checkpoint into `sam`, strictly."""
    state = read_checkpoint(checkpoint)
    if "image_encoder.patch_embed.proj.weight" not in state:
        raise CheckpointError(
            f"checkpoint {os.fspath(checkpoint)} is not a SAM state_dict "
            f"(no image_encoder.patch_embed.proj.weight; first keys: {list(state)[:3]})"
        )
    expected = sam.state_dict()
    found = infer_model_type(state)
    want = sam.config.name if sam.config is not None else "this model"
    problems = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if mismatched:
        k = mismatched[0]
        problems.append(
            f"{len(mismatched)} shape mismatches (e.g. {k}: checkpoint {tuple(state[k].shape)}, "
            f"model {tuple(expected[k].shape)})"
        )
    if problems:
        hint = f"; the checkpoint looks like {found}" if found and found != want else ""
        raise CheckpointError(
            f"checkpoint {os.fspath(checkpoint)} does not fit {want}{hint}: " + "; ".join(problems)
        )
    sam.load_state_dict(state, strict=True)


def _build(model_type: str, checkpoint: Optional[Union[str, os.PathLike]] = None) -> Sam:
    return build_sam_from_config(get_config(model_type), checkpoint)


build_sam_vit_h = partial(_build, "vit_h")
build_sam_vit_l = partial(_build, "vit_l")
build_sam_vit_b = partial(_build, "vit_b")
build_sam = build_sam_vit_h

sam_model_registry = {
    "default": build_sam_vit_h,
    "vit_h": build_sam_vit_h,
    "vit_l": build_sam_vit_l,
    "vit_b": build_sam_vit_b,
}
