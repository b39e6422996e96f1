"""Weight formats: how one family's checkpoints lay out a layer's tensors.

A family declares the formats its checkpoints come in (``LMFamily.formats``, in order of
preference); the generic loader (``layer_loading.py``) asks the first whose marker file the
checkpoint has for the config and for the tensors of the requested layers, and then builds
transformers' layer modules from them the same way for every format. So a new layout (Meta's
``consolidated.*.pth``, say) is one format object in its own module, with no name checks in
the loader (GGUF, ``gguf_format.py``, is one). Each format also lists the layers' tensor shapes from the files' headers alone
(``layer_shapes``: the sweep's pre-flight, ``layer_loading.check_layers``), no data read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from transformers import PretrainedConfig

from encoders.weights.tensors import SAFETENSORS_DTYPES, CheckpointFormatError, TensorTable

if TYPE_CHECKING:  # types only: the registry holds formats, formats read the family's fields
    from encoders.lm.registry import LMFamily
    from encoders.weights.checkpoint_dir import CheckpointDir
    from encoders.weights.layer_cache import LayerCache
    from encoders.weights.safetensors_reader import SafetensorsReader


@dataclass
class LayerTensors:
    """What a format read. ``layers``: per layer index, the name the tensor is identified by
    (hashed into the layers' identity) -> (its name inside transformers' layer module, the
    tensor). ``final_norm``: the LM's final norm's state dict, when it was asked for."""

    layers: dict[int, dict[str, tuple[str, torch.Tensor]]]
    final_norm: dict[str, torch.Tensor] | None = None
    cache_hit: bool = False
    # What a format knows of the weights beyond the folder's identity: a single-file format's
    # digest (GGUF: the file's sha256) replaces it; quantised tensors' types, per layer.
    identity: str | None = None
    quantization: str = ""


@dataclass
class LayerShapes:
    """What a format's headers say, no data read: ``layers``, per layer index, the name inside
    transformers' layer module -> the tensor's shape as loaded; ``final_norm`` likewise."""

    layers: dict[int, dict[str, tuple[int, ...]]]
    final_norm: dict[str, tuple[int, ...]] | None = None


def header_shape(header: TensorTable, name: str) -> tuple[int, ...]:
    """``name``'s shape as one file's header lists it, in a dtype the readers can load."""
    info = header.tensors.get(name)
    if info is None:
        raise CheckpointFormatError(f"{header.path}: missing tensor(s) {[name]}")
    if info.dtype not in SAFETENSORS_DTYPES:
        raise CheckpointFormatError(
            f"{header.path}: tensor {name} has unsupported dtype {info.dtype}")
    return tuple(info.shape)


class WeightFormat(Protocol):
    """One checkpoint layout. ``marker``: what says a checkpoint is in it, for messages
    (``config.json``, ``params.json``, a ``*.gguf`` file); ``present`` looks for it;
    ``config_location``: where its config is read from, for messages."""

    marker: str

    def present(self, checkpoint: CheckpointDir) -> bool: ...

    def config_location(self, checkpoint: CheckpointDir) -> str: ...

    def load_config(self, family: LMFamily, checkpoint: CheckpointDir) -> PretrainedConfig: ...

    def read_layers(
        self, family: LMFamily, checkpoint: CheckpointDir, config: PretrainedConfig,
        indices: Sequence[int], reader: SafetensorsReader, *, final_norm: bool,
        cache: LayerCache | None,
    ) -> LayerTensors: ...

    def layer_shapes(
        self, family: LMFamily, checkpoint: CheckpointDir, config: PretrainedConfig,
        indices: Sequence[int], reader: SafetensorsReader, *, final_norm: bool,
    ) -> LayerShapes: ...
