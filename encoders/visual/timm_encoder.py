"""Any timm model whose tokens run through a ``blocks`` sequence, as the encoder the frozen LM
block is appended to: ViT, DeiT, EVA, BEiT, CaiT and the like (``--encoder NAME``).

The block goes at the end of ``model.blocks`` (``encoders.visual.vit.insert_after_last_block``),
so a model without one (ResNet, ConvNeXt, Swin: stages, not one token sequence) is refused.
The model is described on the meta device (no weights allocated, nothing downloaded): its
width, its ``pretrained_cfg`` data settings (input size, interpolation, mean, std, crop) as
timm's ``resolve_data_config`` gives them, and a forward pass at the chosen image size.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import timm
import torch
from timm.data import resolve_data_config
from torch import nn

VALID_ENCODERS = ("timm models with a blocks sequence, e.g. vit_tiny_patch16_224, "
                  "deit_small_patch16_224, eva02_tiny_patch14_224, beit_base_patch16_224, "
                  "cait_xxs24_224 (not resnet*, convnext*, swin*)")


class EncoderChoiceError(ValueError):
    """A model name, image size or weights file that cannot make the encoder; one line."""


@dataclass(frozen=True)
class TimmEncoderInfo:
    name: str
    width: int  # token width at the end of ``blocks``: sizes the block's adapters
    data_config: dict[str, Any]  # timm's resolve_data_config, at the chosen input size
    model_class: str


def create_encoder(name: str, num_classes: int, image_size: int = 0) -> nn.Module:
    """``timm.create_model(name)``, untrained (weights come from ``--encoder-weights`` or
    not at all: never the hub), at ``image_size`` when given."""
    kwargs = {"img_size": image_size} if image_size else {}
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)


@cache  # a sweep's driver asks once per trial (each run's description): build once
def describe(name: str, image_size: int = 0, num_classes: int = 10) -> TimmEncoderInfo:
    """What the plan needs of ``name`` at ``image_size``, or EncoderChoiceError naming why
    (not cached: an error is raised again)."""
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:8]}*")[:5]
        hint = f" (close: {', '.join(close)})" if close else ""
        raise EncoderChoiceError(f"unknown --encoder {name!r}{hint}; valid: {VALID_ENCODERS}")
    try:
        with torch.device("meta"):
            model = create_encoder(name, num_classes, image_size)
    except Exception as e:  # noqa: BLE001 -- timm raises what its model's __init__ raises
        raise EncoderChoiceError(f"--encoder {name}"
                                 f"{f' at --image-size {image_size}' if image_size else ''}: "
                                 f"timm cannot build it ({type(e).__name__}: {e})") from None
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential | nn.ModuleList) or not len(blocks):
        raise EncoderChoiceError(f"--encoder {name}: a {type(model).__name__} has no blocks "
                                 f"sequence for the LM block to follow; valid: {VALID_ENCODERS}")
    config = resolve_data_config({}, model=model)
    if image_size:
        config["input_size"] = (config["input_size"][0], image_size, image_size)
    size = config["input_size"]
    try:
        with torch.device("meta"):
            model(torch.empty(1, *size))
    except Exception as e:  # noqa: BLE001
        raise EncoderChoiceError(f"--encoder {name} does not run on {size[1]}x{size[2]} "
                                 f"images ({type(e).__name__}: {str(e)[:160]}); valid: an "
                                 "--image-size its patch grid divides") from None
    width = getattr(model, "embed_dim", None) or model.num_features
    return TimmEncoderInfo(name, int(width), config, type(model).__name__)
