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

import torch
from torch import nn
from transformers import PretrainedConfig

from encoders.checkpoints import CheckpointDir, is_url
from encoders.layer_cache import LayerCache, cache_key
from encoders.meta_llama import is_meta_checkpoint, load_meta_config, read_meta_tensors
from encoders.registry import LMFamily
from encoders.safetensors_reader import CheckpointFormatError, SafetensorsReader

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# PyTorch zip shards, read weights-only by byte range (encoders/torch_zip.py)
BIN_INDEX_FILE = "pytorch_model.bin.index.json"
BIN_SINGLE_FILE = "pytorch_model.bin"


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


def load_config(family: LMFamily, checkpoint: CheckpointDir) -> PretrainedConfig:
    if family.name == "llama" and is_meta_checkpoint(checkpoint):
        return load_meta_config(checkpoint)
    where = checkpoint.resolve("config.json")
    if not checkpoint.exists("config.json"):
        raise CheckpointFormatError(f"{where}: missing config.json")
    config = family.config_class.from_dict(json.loads(checkpoint.read_text("config.json")))
    config._attn_implementation = "sdpa"
    expected = family.config_class.model_type
    if config.model_type != expected:
        raise CheckpointFormatError(
            f"{where}: model_type {config.model_type!r} is not family {family.name!r} ({expected!r})"
        )
    return config


def tensor_locations(checkpoint: CheckpointDir, reader: SafetensorsReader) -> dict[str, str]:
    """Tensor name -> location of the file holding it, from the index or the single header."""
    for index, single in ((INDEX_FILE, SINGLE_FILE), (BIN_INDEX_FILE, BIN_SINGLE_FILE)):
        if checkpoint.exists(index):
            weight_map = json.loads(checkpoint.read_text(index))["weight_map"]
            return {tensor: checkpoint.resolve(shard) for tensor, shard in weight_map.items()}
        if checkpoint.has_file(single):
            location = checkpoint.resolve(single)
            return dict.fromkeys(reader.read_header(location).tensors, location)
    raise CheckpointFormatError(
        f"{checkpoint.location}: no weights: none of {SINGLE_FILE}, {INDEX_FILE}, "
        f"{BIN_SINGLE_FILE}, {BIN_INDEX_FILE}"
    )


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
    cache: LayerCache | None = None,
    final_norm: bool = False,
) -> LoadedLayers:
    """Only ``indices``' tensors, strictly; remote sources go through ``cache`` if given."""
    reader = reader or SafetensorsReader(checkpoint.open)
    config = load_config(family, checkpoint)
    n_layers = config.num_hidden_layers
    for i in indices:
        if not 0 <= i < n_layers:
            raise IndexError(f"layer {i} out of range for {checkpoint.location} ({n_layers} layers)")
    if family.name == "llama" and is_meta_checkpoint(checkpoint):
        return _load_meta(family, checkpoint, config, indices, dtype, reader, final_norm)
    locations = tensor_locations(checkpoint, reader)
    names = list(locations)

    wanted: dict[int, dict[str, str]] = {}
    by_file: dict[str, list[str]] = defaultdict(list)
    for i in indices:
        wanted[i] = select_layer_tensors(family, names, i)
        if not wanted[i]:
            raise CheckpointFormatError(f"{checkpoint.location}: no tensors for layer {i}")
    norm_names: dict[str, str] = {}
    if final_norm:
        if family.final_norm_key is None:
            raise CheckpointFormatError(f"family {family.name!r} has no final norm (post-LN)")
        pattern = re.compile(family.final_norm_key)
        norm_names = {n: m.group(1) for n in names if (m := pattern.match(n))}
        if not norm_names:
            raise CheckpointFormatError(
                f"{checkpoint.location}: no final norm tensors (a post-LN model has none)"
            )
    for name in [*(n for w in wanted.values() for n in w), *norm_names]:
        by_file[locations[name]].append(name)

    key = None
    tensors: dict[str, torch.Tensor] | None = None
    if cache is not None and any(is_url(loc) for loc in by_file):
        key, expected = _cache_key(checkpoint, reader, by_file)
        tensors = cache.get(key, expected)
    cache_hit = tensors is not None
    if tensors is None:
        tensors = {}
        for location in sorted(by_file):
            try:
                tensors.update(reader.read_tensors(location, by_file[location]))
            except FileNotFoundError:
                raise CheckpointFormatError(
                    f"{location}: listed in the shard index but missing"
                ) from None
        if key is not None:
            cache.put(key, tensors)

    digest = hashlib.sha256()
    layers = []
    for i in indices:
        state = {local: tensors[full] for full, local in wanted[i].items()}
        for full in sorted(wanted[i]):
            _hash_tensor(digest, full, tensors[full])
        layers.append(_strict_layer(family, config, i, state, checkpoint).to(dtype))
    norm = None
    if norm_names:
        norm = family.build_final_norm(config)
        state = {local: tensors[full] for full, local in norm_names.items()}
        try:
            norm.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise CheckpointFormatError(f"{checkpoint.location}: final norm: {e}") from None
        norm = norm.to(dtype)
    return LoadedLayers(
        layers=layers,
        final_norm=norm,
        config=config,
        files_opened=list(reader.files_opened),
        bytes_read=reader.bytes_read,
        tensor_bytes=sum(t.numel() * t.element_size() for t in tensors.values()),
        sha256=digest.hexdigest(),
        cache_hit=cache_hit,
    )


def _hash_tensor(digest, name: str, tensor: torch.Tensor) -> None:
    """Name and raw bytes into the layer's identity hash, without copying the bytes."""
    digest.update(name.encode())
    digest.update(memoryview(tensor.contiguous().view(torch.uint8).numpy()))


def _load_meta(family, checkpoint, config, indices, dtype, reader, final_norm) -> LoadedLayers:
    states = read_meta_tensors(checkpoint, config, indices, reader, final_norm)
    digest = hashlib.sha256()
    layers = []
    for i in indices:
        for name in sorted(states[i]):
            _hash_tensor(digest, f"layers.{i}.{name}", states[i][name])
        layers.append(_strict_layer(family, config, i, states[i], checkpoint).to(dtype))
    norm = None
    if final_norm:
        norm = family.build_final_norm(config)
        norm.load_state_dict(states["norm"], strict=True)
        norm = norm.to(dtype)
    tensor_bytes = sum(t.numel() * t.element_size() for s in states.values() for t in s.values())
    return LoadedLayers(layers, config, list(reader.files_opened), reader.bytes_read,
                        tensor_bytes, digest.hexdigest(), final_norm=norm)


def _cache_key(
    checkpoint: CheckpointDir, reader: SafetensorsReader, by_file: dict[str, list[str]]
) -> tuple[str, dict[str, tuple[str, tuple[int, ...]]]]:
    """The layer's cache key, and the dtype/shape of each tensor per the source's headers."""
    headers, expected = {}, {}
    for location, names in by_file.items():
        try:
            headers[location] = header = reader.read_header(location)
        except FileNotFoundError:
            raise CheckpointFormatError(f"{location}: listed in the shard index but missing") from None
        for name in names:
            if name not in header.tensors:
                raise CheckpointFormatError(f"{location}: missing tensor(s) {[name]}")
            expected[name] = (header.tensors[name].dtype, header.tensors[name].shape)
    stamps = {loc: checkpoint.stamp(loc) for loc in by_file}
    key = cache_key(f"{checkpoint.location}@{checkpoint.revision}", headers, stamps,
                    list(expected))
    return key, expected


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
            f"{checkpoint.location}: layer {index} does not match {family.layer_class.__name__}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointFormatError(
                f"{checkpoint.location}: layer {index} tensor {name} has shape {tuple(tensor.shape)}, "
                f"config expects {tuple(expected[name].shape)}"
            )
    layer.load_state_dict(state, strict=True, assign=True)
    return layer


def random_layers(
    family: LMFamily,
    config: PretrainedConfig,
    indices: list[int] | tuple[int, ...],
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
