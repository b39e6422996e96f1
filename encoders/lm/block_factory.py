"""The builders of the inserted module, one per control, and what each records about its weights.

A builder turns a ``BlockRequest`` into the module appended after the encoder's last block
(``None``: nothing is appended) and a ``BlockInfo``: where its weights came from and the
identity of the exact weights used. ``controls.py`` names which builder each control uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

import encoders.lm.families  # noqa: F401  (registers the families)
from encoders.lm.auxiliary import AuxiliaryBranch
from encoders.lm.frozen_block import FrozenLMBlock
from encoders.lm.inserted import MLPBlock, VisualBlockSlot
from encoders.lm.layer_loading import load_layers, random_layers
from encoders.lm.lookup import locate
from encoders.lm.registry import get_family
from encoders.weights.layer_cache import LayerCache


@dataclass(frozen=True)
class BlockRequest:
    """What a trial asks of its block: which LM layers, at which width, read from where."""

    family: str
    size: str
    layers: tuple[int, ...]
    seed: int
    visual_dim: int  # token width at the insertion point: sizes the adapters
    weights_dir: str | Path | None = None
    dtype: torch.dtype = torch.float32
    final_norm: str = "none"  # after the layers: none, unit-rms (gain 1) or lm (its own)
    trainable: bool = False  # the LM layers train (finetuned, random-trained)


@dataclass(frozen=True)
class BlockInfo:
    """Recorded on the run: the identity of the exact weights used, and where they came from
    (``weights_source`` is the control's, filled in by ``controls.build_block``)."""

    checkpoint: str = ""  # repo@revision, the random-init recipe, or "" for no LM weights
    checkpoint_path: str = ""
    layers_sha256: str = ""  # hash of the loaded layers' tensors (pretrained only)
    bytes_read: int = 0
    weights_source: str = ""  # pretrained | random | none
    quantization: str = ""  # a quantised checkpoint's GGML type per layer tensor (GGUF)


def pretrained_block(req: BlockRequest) -> tuple[FrozenLMBlock, BlockInfo]:
    """The paper's block: the checkpoint's own layers, read strictly, frozen; its config must
    have the registry's architecture for the size (checked before any tensor is read)."""
    fam = get_family(req.family)
    lm = fam.size(req.size)
    checkpoint = locate(fam, lm, req.weights_dir)
    loaded = load_layers(fam, checkpoint, req.layers, dtype=req.dtype, cache=LayerCache(),
                         final_norm=req.final_norm == "lm", size=lm)
    info = BlockInfo(loaded.identity or checkpoint.identity, str(checkpoint.location),
                     loaded.sha256, loaded.bytes_read, quantization=loaded.quantization)
    block = FrozenLMBlock(loaded.layers, req.visual_dim, loaded.config.hidden_size,
                          fam.layer_kwargs(loaded.config), loaded.final_norm,
                          unit_norm=req.final_norm == "unit-rms", trainable=req.trainable)
    return block, info


def random_block(req: BlockRequest) -> tuple[FrozenLMBlock, BlockInfo]:
    """Same shape, the LM's own initialisation, seeded: pre-training is all that differs."""
    fam = get_family(req.family)
    lm = fam.size(req.size)
    config = fam.make_config(lm)
    config._attn_implementation = "sdpa"
    own_norm = req.final_norm == "lm"
    mods = [m.to(req.dtype) for m in random_layers(fam, config, req.layers, req.seed,
                                                   own_norm)]
    norm = mods.pop() if own_norm else None
    recipe = f"random-init:{fam.model_class.__name__}._init_weights:{lm.repo_id}:seed={req.seed}"
    block = FrozenLMBlock(mods, req.visual_dim, lm.hidden_size, fam.layer_kwargs(config), norm,
                          unit_norm=req.final_norm == "unit-rms", trainable=req.trainable)
    return block, BlockInfo(recipe)


def adapters_only(req: BlockRequest) -> tuple[FrozenLMBlock, BlockInfo]:
    """The two linear maps at the LM's width, no layer between them."""
    lm = get_family(req.family).size(req.size)
    return FrozenLMBlock([], req.visual_dim, lm.hidden_size), BlockInfo()


def no_block(req: BlockRequest) -> tuple[None, BlockInfo]:
    return None, BlockInfo()


def mlp_block(req: BlockRequest) -> tuple[MLPBlock, BlockInfo]:
    """The paper's "+MLP" arm at the LM's width (``encoders.lm.inserted``), trainable."""
    lm = get_family(req.family).size(req.size)
    return MLPBlock(req.visual_dim, lm.hidden_size), BlockInfo()


def visual_block(req: BlockRequest) -> tuple[VisualBlockSlot, BlockInfo]:
    """One more block of the encoder's own kind, sized to the selected LM layers' parameter
    count; the encoder makes it when the slot is appended (``encoders.lm.inserted``)."""
    fam = get_family(req.family)
    return VisualBlockSlot(fam.layer_params(req.size) * len(req.layers)), BlockInfo()


def auxiliary_block(req: BlockRequest) -> tuple[AuxiliaryBranch, BlockInfo]:
    """Bai et al.'s auxiliary training: the pretrained block as a side branch of its own
    head, used in training only (``encoders.lm.auxiliary``)."""
    block, info = pretrained_block(req)
    return AuxiliaryBranch(block, req.visual_dim), info
