"""Materialise only the requested layer(s) of a checkpoint, strictly, with transformers' classes.

The family's weight format (``formats.py``: the Hugging Face layout, Meta's ``params.json`` +
``consolidated.*.pth``) says where the layers' tensors are and reads only their bytes; this
module builds the layers from them, the same way for every format: on the ``meta`` device
with the tensors assigned, so no memory is spent on a throw-away random initialisation, and
with ``strict=True``: a missing or unexpected tensor is an error naming the file, never a
silently random weight. The layers' identity is a hash of their tensors' names and bytes.

``check_layers`` is its header-only twin (the sweep's pre-flight): the same config check and
the same comparison with the layer class, from the shapes the files' headers list, reading
no tensor data. Given the registry's size, both first check that the checkpoint's config has
the registry's architecture (``LMFamily.check_config``).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import PretrainedConfig

from encoders.lm.formats import WeightFormat
from encoders.lm.registry import LMFamily, LMSize
from encoders.weights.checkpoint_dir import CheckpointDir
from encoders.weights.layer_cache import LayerCache
from encoders.weights.safetensors_reader import SafetensorsReader
from encoders.weights.tensors import CheckpointFormatError


@dataclass
class LoadedLayers:
    layers: list[nn.Module]
    config: PretrainedConfig
    files_opened: list[str] = field(default_factory=list)
    bytes_read: int = 0
    tensor_bytes: int = 0
    sha256: str = ""  # of the layers' tensor names and bytes: the identity of what was loaded
    cache_hit: bool = False
    final_norm: nn.Module | None = None
    identity: str | None = None  # the format's own (a GGUF file's sha256), else the folder's
    quantization: str = ""  # GGML type of each layer tensor, for quantised formats


def load_config(family: LMFamily, checkpoint: CheckpointDir) -> PretrainedConfig:
    return family.format_for(checkpoint).load_config(family, checkpoint)


def _checked_config(
    family: LMFamily, checkpoint: CheckpointDir, indices: Sequence[int], size: LMSize | None
) -> tuple[WeightFormat, PretrainedConfig]:
    """The checkpoint's format and config: the registry's ``size`` (if given), ``indices`` in it."""
    fmt = family.format_for(checkpoint)
    config = fmt.load_config(family, checkpoint)
    if size is not None:
        family.check_config(size, config, fmt.config_location(checkpoint))
    n_layers = config.num_hidden_layers
    if not isinstance(n_layers, int) or n_layers < 1:
        raise CheckpointFormatError(f"{checkpoint.location}: config has {n_layers!r} layers")
    for i in indices:
        if not 0 <= i < n_layers:
            raise IndexError(f"layer {i} out of range for {checkpoint.location} ({n_layers} layers)")
    return fmt, config


def check_layers(
    family: LMFamily,
    checkpoint: CheckpointDir,
    indices: Sequence[int],
    *,
    final_norm: bool = False,
    reader: SafetensorsReader | None = None,
    size: LMSize | None = None,
) -> PretrainedConfig:
    """What ``load_layers`` would check, from headers only: every tensor the layer class (and
    the final norm) expects is listed by the file holding it, with its shape, and nothing
    else; only the headers of the files holding ``indices`` are read (once each, ``reader``
    caches them), no tensor data. Returns the checkpoint's config."""
    fmt, config = _checked_config(family, checkpoint, indices, size)
    if not indices and not final_norm:
        return config
    shapes = fmt.layer_shapes(family, checkpoint, config, indices,
                              reader or SafetensorsReader(checkpoint.open), final_norm=final_norm)
    for i in indices:
        _expected_layer(family, config, i, shapes.layers[i], checkpoint)
    if shapes.final_norm is not None:
        with torch.device("meta"):
            norm = family.build_final_norm(config)
        _match(norm, shapes.final_norm, "final norm", checkpoint)
    return config


def load_layers(
    family: LMFamily,
    checkpoint: CheckpointDir,
    indices: Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
    reader: SafetensorsReader | None = None,
    cache: LayerCache | None = None,
    final_norm: bool = False,
    size: LMSize | None = None,
) -> LoadedLayers:
    """Only ``indices``' tensors, strictly; remote sources go through ``cache`` if given.
    Given the registry's ``size``, the config must have its architecture (before any read)."""
    reader = reader or SafetensorsReader(checkpoint.open)
    fmt, config = _checked_config(family, checkpoint, indices, size)
    read = fmt.read_layers(family, checkpoint, config, indices, reader, final_norm=final_norm,
                           cache=cache)
    digest = hashlib.sha256()
    layers = []
    for i in indices:
        named = read.layers[i]
        for name in sorted(named):
            _hash_tensor(digest, name, named[name][1])
        state = dict(named.values())
        layers.append(_strict_layer(family, config, i, state, checkpoint).to(dtype))
    norm = None
    if read.final_norm is not None:
        norm = family.build_final_norm(config)
        try:
            norm.load_state_dict(read.final_norm, strict=True)
        except RuntimeError as e:
            raise CheckpointFormatError(f"{checkpoint.location}: final norm: {e}") from None
        norm = norm.to(dtype)
    tensors = [t for named in read.layers.values() for _, t in named.values()]
    tensors += list((read.final_norm or {}).values())
    return LoadedLayers(
        layers=layers,
        final_norm=norm,
        config=config,
        files_opened=list(reader.files_opened),
        bytes_read=reader.bytes_read,
        tensor_bytes=sum(t.numel() * t.element_size() for t in tensors),
        sha256=digest.hexdigest(),
        cache_hit=read.cache_hit,
        identity=read.identity,
        quantization=read.quantization,
    )


def _hash_tensor(digest, name: str, tensor: torch.Tensor) -> None:
    """Name and raw bytes into the layer's identity hash, without copying the bytes."""
    digest.update(name.encode())
    digest.update(memoryview(tensor.contiguous().view(torch.uint8).numpy()))


def _strict_layer(
    family: LMFamily,
    config: PretrainedConfig,
    index: int,
    state: dict[str, torch.Tensor],
    checkpoint: CheckpointDir,
) -> nn.Module:
    shapes = {name: tuple(t.shape) for name, t in state.items()}
    layer = _expected_layer(family, config, index, shapes, checkpoint)
    layer.load_state_dict(state, strict=True, assign=True)
    return layer


def _expected_layer(
    family: LMFamily,
    config: PretrainedConfig,
    index: int,
    shapes: dict[str, tuple[int, ...]],
    checkpoint: CheckpointDir,
) -> nn.Module:
    """The layer on the meta device, once the checkpoint's tensors (names -> shapes) are
    exactly the ones it has."""
    try:
        with torch.device("meta"):
            layer = family.build_layer(config, index)
    except Exception as e:  # noqa: BLE001  (a config transformers' layer cannot be built from)
        raise CheckpointFormatError(
            f"{checkpoint.location}: its config does not build a {family.layer_class.__name__} "
            f"({type(e).__name__}: {str(e)[:200]})") from None
    _match(layer, shapes, f"layer {index}", checkpoint)
    return layer


def _match(
    module: nn.Module, shapes: dict[str, tuple[int, ...]], what: str, checkpoint: CheckpointDir
) -> None:
    expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        raise CheckpointFormatError(
            f"{checkpoint.location}: {what} does not match {type(module).__name__}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for name, shape in shapes.items():
        if tuple(shape) != expected[name]:
            raise CheckpointFormatError(
                f"{checkpoint.location}: {what} tensor {name} has shape {tuple(shape)}, "
                f"config expects {expected[name]}"
            )


def random_layers(
    family: LMFamily,
    config: PretrainedConfig,
    indices: Sequence[int],
    seed: int,
    final_norm: bool = False,
) -> list[nn.Module]:
    """The paper's control: same architecture, the family's own initialisation, seeded.

    The family's PreTrainedModel is built on the meta device (free, even for a 66B config)
    only to borrow its ``_init_weights``, so the random block is initialised the way the LM
    was before pre-training, not with torch's default Linear init.
    """
    host_config = copy.deepcopy(config)
    host_config.num_hidden_layers = 1
    with torch.device("meta"):
        host = family.model_class(host_config)
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        layers = []
        for i in indices:
            layer = family.build_layer(config, i)
            layer.apply(host._init_weights)
            layers.append(layer)
        if final_norm:
            if family.build_final_norm is None:
                raise ValueError(f"family {family.name!r} has no final norm (post-LN)")
            norm = family.build_final_norm(config)
            norm.apply(host._init_weights)
            layers.append(norm)  # the caller splits it off: last element
    finally:
        torch.random.set_rng_state(gen_state)
    return layers
