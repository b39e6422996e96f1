"""Materialise only the requested layer(s) of a checkpoint, strictly, with transformers' classes.

The shard index (or the single file's header) tells which file holds which tensor; only the
files holding the requested layers are opened, and only those layers' byte ranges are read.
Layers are built on the ``meta`` device and the tensors assigned, so no memory is spent on a
throw-away random initialisation, then loaded with ``strict=True``: a missing or unexpected
tensor is an error naming the file, never a silently random weight.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from huggingface_hub.errors import EntryNotFoundError
from transformers import PretrainedConfig

from encoders.checkpoints import CheckpointDir
from encoders.registry import LMFamily
from encoders.safetensors_reader import CheckpointFormatError, SafetensorsReader

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


@dataclass
class LoadedLayers:
    layers: list[nn.Module]
    config: PretrainedConfig
    files_opened: list[str] = field(default_factory=list)
    bytes_read: int = 0
    tensor_bytes: int = 0
    sha256: str = ""  # of the layers' tensor names and bytes: the identity of what was loaded


def load_config(family: LMFamily, checkpoint: CheckpointDir) -> PretrainedConfig:
    path = checkpoint.file("config.json")
    if not path.is_file():
        raise CheckpointFormatError(f"{path}: missing config.json")
    config = family.config_class.from_pretrained(str(path.parent))
    config._attn_implementation = "sdpa"
    expected = family.config_class.model_type
    if config.model_type != expected:
        raise CheckpointFormatError(
            f"{path}: model_type {config.model_type!r} is not family {family.name!r} ({expected!r})"
        )
    return config


def tensor_locations(checkpoint: CheckpointDir, reader: SafetensorsReader) -> dict[str, Path]:
    """Tensor name -> file holding it, from the shard index or the single file's header."""
    for name in (INDEX_FILE, SINGLE_FILE):
        try:
            path = checkpoint.file(name)
        except EntryNotFoundError:  # a hub repo without this file
            continue
        if path.is_file():
            break
    else:
        raise CheckpointFormatError(
            f"{checkpoint.path}: no {SINGLE_FILE} and no {INDEX_FILE} (safetensors checkpoints only)"
        )
    if path.name == INDEX_FILE:
        weight_map = json.loads(path.read_text())["weight_map"]
        return {tensor: checkpoint.path / shard for tensor, shard in weight_map.items()}
    return dict.fromkeys(reader.read_header(path).tensors, path)


def select_layer_tensors(
    family: LMFamily, names: list[str], index: int
) -> dict[str, str]:
    """Checkpoint tensor name -> name inside the layer module, for one layer index."""
    pattern = re.compile(family.layer_key.format(index=index))
    ignore = re.compile(family.ignore) if family.ignore else None
    found = {name: m.group(1) for name in names if (m := pattern.match(name))}
    return {k: v for k, v in found.items() if not (ignore and ignore.match(v))}


def load_layers(
    family: LMFamily,
    checkpoint: CheckpointDir,
    indices: list[int] | tuple[int, ...],
    *,
    dtype: torch.dtype = torch.float32,
    reader: SafetensorsReader | None = None,
) -> LoadedLayers:
    reader = reader or SafetensorsReader()
    config = load_config(family, checkpoint)
    n_layers = config.num_hidden_layers
    for i in indices:
        if not 0 <= i < n_layers:
            raise IndexError(f"layer {i} out of range for {checkpoint.path} ({n_layers} layers)")
    locations = tensor_locations(checkpoint, reader)
    names = list(locations)

    wanted: dict[int, dict[str, str]] = {}
    by_file: dict[Path, list[str]] = defaultdict(list)
    for i in indices:
        wanted[i] = select_layer_tensors(family, names, i)
        if not wanted[i]:
            raise CheckpointFormatError(f"{checkpoint.path}: no tensors for layer {i}")
        for name in wanted[i]:
            by_file[locations[name]].append(name)

    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(by_file):
        real = checkpoint.file(path.name)
        if not real.is_file():
            raise CheckpointFormatError(f"{real}: listed in {INDEX_FILE} but missing")
        tensors.update(reader.read_tensors(real, by_file[path]))

    digest = hashlib.sha256()
    layers = []
    for i in indices:
        state = {local: tensors[full] for full, local in wanted[i].items()}
        for full in sorted(wanted[i]):
            digest.update(full.encode())
            digest.update(tensors[full].contiguous().view(torch.uint8).numpy().tobytes())
        layers.append(_strict_layer(family, config, i, state, checkpoint).to(dtype))
    return LoadedLayers(
        layers=layers,
        config=config,
        files_opened=list(reader.files_opened),
        bytes_read=reader.bytes_read,
        tensor_bytes=sum(t.numel() * t.element_size() for t in tensors.values()),
        sha256=digest.hexdigest(),
    )


def _strict_layer(
    family: LMFamily,
    config: PretrainedConfig,
    index: int,
    state: dict[str, torch.Tensor],
    checkpoint: CheckpointDir,
) -> nn.Module:
    with torch.device("meta"):
        layer = family.build_layer(config, index)
    expected = dict(layer.state_dict())
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointFormatError(
            f"{checkpoint.path}: layer {index} does not match {family.layer_class.__name__}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointFormatError(
                f"{checkpoint.path}: layer {index} tensor {name} has shape {tuple(tensor.shape)}, "
                f"config expects {tuple(expected[name].shape)}"
            )
    layer.load_state_dict(state, strict=True, assign=True)
    return layer


def random_layers(
    family: LMFamily, config: PretrainedConfig, indices: list[int] | tuple[int, ...], seed: int
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
    finally:
        torch.random.set_rng_state(gen_state)
    return layers
