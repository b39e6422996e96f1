"""Build the inserted module for one control, and say where its weights came from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import encoders.families  # noqa: F401  (registers the families)
from encoders.checkpoints import locate
from encoders.frozen_block import CONTROLS, WEIGHT_SOURCE, FrozenLMBlock
from encoders.layer_cache import LayerCache
from encoders.layer_loading import load_config, load_layers, random_layers
from encoders.registry import get_family


@dataclass(frozen=True)
class BlockInfo:
    """Recorded on the run: weights' source, and the identity of the exact weights used."""

    weights_source: str  # pretrained | random | none
    checkpoint: str  # repo@revision, random-init recipe, or "" for no LM weights
    checkpoint_path: str = ""
    layers_sha256: str = ""  # hash of the loaded layers' tensors (pretrained only)
    bytes_read: int = 0


def build_block(
    *,
    family: str,
    size: str,
    layers: tuple[int, ...],
    control: str,
    seed: int,
    visual_dim: int,
    weights_dir: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    final_norm: bool = False,
) -> tuple[nn.Module | None, BlockInfo]:
    """``final_norm``: append the LM's own final norm after the layers (frozen too)."""
    if control not in CONTROLS:
        raise ValueError(f"unknown control {control!r}; valid: {', '.join(CONTROLS)}")
    source = WEIGHT_SOURCE[control]
    if control == "none":
        return None, BlockInfo(source, "")
    fam = get_family(family)
    lm = fam.size(size)
    if control == "adapters":
        return FrozenLMBlock([], visual_dim, lm.hidden_size), BlockInfo(source, "")
    if control == "random":
        config = fam.make_config(lm)
        config._attn_implementation = "sdpa"
        mods = [m.to(dtype) for m in random_layers(fam, config, layers, seed, final_norm)]
        norm = mods.pop() if final_norm else None
        recipe = f"random-init:{fam.model_class.__name__}._init_weights:{lm.repo_id}:seed={seed}"
        block = FrozenLMBlock(mods, visual_dim, lm.hidden_size, fam.layer_kwargs(config), norm)
        return block, BlockInfo(source, recipe)
    checkpoint = locate(fam, lm, weights_dir)
    loaded = load_layers(
        fam, checkpoint, layers, dtype=dtype, cache=LayerCache(), final_norm=final_norm
    )
    hidden = loaded.config.hidden_size
    info = BlockInfo(
        source,
        checkpoint.identity,
        str(checkpoint.location),
        loaded.sha256,
        loaded.bytes_read,
    )
    kwargs = fam.layer_kwargs(loaded.config)
    return FrozenLMBlock(loaded.layers, visual_dim, hidden, kwargs, loaded.final_norm), info


def check_checkpoint(family: str, size: str, weights_dir: str | Path | None) -> str:
    """Cheap pre-flight (config.json only): found, and shaped as the registry says."""
    fam = get_family(family)
    lm = fam.size(size)
    checkpoint = locate(fam, lm, weights_dir)
    config = load_config(fam, checkpoint)
    got = (config.hidden_size, config.num_hidden_layers, config.num_attention_heads)
    want = (lm.hidden_size, lm.num_layers, lm.num_heads)
    if got != want:
        raise ValueError(
            f"{checkpoint.resolve('config.json')}: (hidden, layers, heads) = {got}, but the "
            f"registry's {family}/{size} is {want}"
        )
    return checkpoint.identity
