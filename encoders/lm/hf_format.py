"""The Hugging Face layout: ``config.json`` + safetensors (single or sharded with an index),
or PyTorch zip shards ``pytorch_model-*.bin`` + their index (facebook/opt-66b is published so).

The shard index (or the single file's header) says which file holds which tensor; only the
files holding the requested layers are opened, and only those layers' byte ranges are read.
Remote sources go through the local layer cache when one is given.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from transformers import PretrainedConfig

from encoders.lm.formats import LayerShapes, LayerTensors, header_shape
from encoders.weights.checkpoint_dir import CheckpointDir, is_url
from encoders.weights.layer_cache import LayerCache, cache_key
from encoders.weights.safetensors_reader import SafetensorsReader
from encoders.weights.tensors import CheckpointFormatError, TensorTable

if TYPE_CHECKING:
    from encoders.lm.registry import LMFamily

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# PyTorch zip shards, read weights-only by byte range (encoders/weights/torch_zip.py)
BIN_INDEX_FILE = "pytorch_model.bin.index.json"
BIN_SINGLE_FILE = "pytorch_model.bin"


def tensor_locations(checkpoint: CheckpointDir, reader: SafetensorsReader) -> dict[str, str]:
    """Tensor name -> location of the file holding it, from the index or the single header."""
    for index, single in ((INDEX_FILE, SINGLE_FILE), (BIN_INDEX_FILE, BIN_SINGLE_FILE)):
        if checkpoint.exists(index):
            return {tensor: checkpoint.resolve(shard, named_by=index)
                    for tensor, shard in _weight_map(checkpoint, index).items()}
        if checkpoint.has_file(single):
            location = checkpoint.resolve(single)
            return dict.fromkeys(reader.read_header(location).tensors, location)
    raise CheckpointFormatError(
        f"{checkpoint.location}: no weights: none of {SINGLE_FILE}, {INDEX_FILE}, "
        f"{BIN_SINGLE_FILE}, {BIN_INDEX_FILE}"
    )


def _weight_map(checkpoint: CheckpointDir, index: str) -> dict[str, str]:
    where = checkpoint.resolve(index)
    try:
        weight_map = json.loads(checkpoint.read_text(index)).get("weight_map")
    except (ValueError, AttributeError) as e:
        raise CheckpointFormatError(f"{where}: not a shard index ({e})") from None
    if not isinstance(weight_map, dict) or not all(
            isinstance(v, str) for v in weight_map.values()):
        raise CheckpointFormatError(
            f"{where}: not a shard index; valid: {{\"weight_map\": {{tensor: file name}}}}")
    return weight_map


def _header(reader: SafetensorsReader, location: str) -> TensorTable:
    try:
        return reader.read_header(location)
    except FileNotFoundError:
        raise CheckpointFormatError(f"{location}: listed in the shard index but missing") from None


def select_layer_tensors(family: LMFamily, names: list[str], index: int) -> dict[str, str]:
    """Checkpoint tensor name -> name inside the layer module, for one layer index."""
    pattern = re.compile(family.layer_key.format(index=index))
    ignore = re.compile(family.ignore) if family.ignore else None
    found = {name: m.group(1) for name in names if (m := pattern.match(name))}
    return {k: v for k, v in found.items() if not (ignore and ignore.match(v))}


class HuggingFaceCheckpoint:
    """``WeightFormat`` of every family published on the Hugging Face hub."""

    marker = "config.json"

    def present(self, checkpoint: CheckpointDir) -> bool:
        return checkpoint.exists(self.marker)

    def config_location(self, checkpoint: CheckpointDir) -> str:
        return checkpoint.resolve(self.marker)

    def load_config(self, family: LMFamily, checkpoint: CheckpointDir) -> PretrainedConfig:
        where = checkpoint.resolve(self.marker)
        if not checkpoint.exists(self.marker):
            raise CheckpointFormatError(f"{where}: missing config.json")
        try:
            fields = json.loads(checkpoint.read_text(self.marker))
        except ValueError as e:
            raise CheckpointFormatError(f"{where}: not JSON ({e})") from None
        if not isinstance(fields, dict):
            raise CheckpointFormatError(f"{where}: not a config; valid: a JSON object")
        try:
            config = family.config_class.from_dict(fields)
        except Exception as e:  # noqa: BLE001  (transformers' strict fields raise their own types)
            raise CheckpointFormatError(
                f"{where}: not a valid {family.name} config ({type(e).__name__}: {str(e)[:200]})"
            ) from None
        config._attn_implementation = "sdpa"
        expected = family.config_class.model_type
        if config.model_type != expected:
            raise CheckpointFormatError(
                f"{where}: model_type {config.model_type!r} is not family {family.name!r} "
                f"({expected!r})"
            )
        return config

    def read_layers(
        self, family: LMFamily, checkpoint: CheckpointDir, config: PretrainedConfig,
        indices: Sequence[int], reader: SafetensorsReader, *, final_norm: bool,
        cache: LayerCache | None,
    ) -> LayerTensors:
        wanted, norm_names, by_file = _plan(family, checkpoint, indices, reader, final_norm)
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
        return LayerTensors(
            layers={i: {full: (local, tensors[full]) for full, local in wanted[i].items()}
                    for i in indices},
            final_norm={local: tensors[full] for full, local in norm_names.items()} or None,
            cache_hit=cache_hit,
        )

    def layer_shapes(
        self, family: LMFamily, checkpoint: CheckpointDir, config: PretrainedConfig,
        indices: Sequence[int], reader: SafetensorsReader, *, final_norm: bool,
    ) -> LayerShapes:
        """The index (or the single file's header), then the header of each file holding
        a requested tensor: no tensor data."""
        wanted, norm_names, by_file = _plan(family, checkpoint, indices, reader, final_norm)
        shapes = {name: header_shape(_header(reader, location), name)
                  for location, names in by_file.items() for name in names}
        return LayerShapes(
            layers={i: {local: shapes[full] for full, local in wanted[i].items()}
                    for i in indices},
            final_norm={local: shapes[full] for full, local in norm_names.items()} or None,
        )


def _plan(
    family: LMFamily, checkpoint: CheckpointDir, indices: Sequence[int],
    reader: SafetensorsReader, final_norm: bool,
) -> tuple[dict[int, dict[str, str]], dict[str, str], dict[str, list[str]]]:
    """Which tensors to read: per layer (checkpoint name -> name in the layer), the final
    norm's, and per file the checkpoint names it holds."""
    locations = tensor_locations(checkpoint, reader)
    names = list(locations)
    wanted: dict[int, dict[str, str]] = {}
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
    by_file: dict[str, list[str]] = defaultdict(list)
    for name in [*(n for w in wanted.values() for n in w), *norm_names]:
        by_file[locations[name]].append(name)
    return wanted, norm_names, by_file


def _cache_key(
    checkpoint: CheckpointDir, reader: SafetensorsReader, by_file: dict[str, list[str]]
) -> tuple[str, dict[str, tuple[str, tuple[int, ...]]]]:
    """The layer's cache key, and the dtype/shape of each tensor per the source's headers."""
    headers, expected = {}, {}
    for location, names in by_file.items():
        headers[location] = header = _header(reader, location)
        for name in names:
            if name not in header.tensors:
                raise CheckpointFormatError(f"{location}: missing tensor(s) {[name]}")
            expected[name] = (header.tensors[name].dtype, header.tensors[name].shape)
    stamps = {loc: checkpoint.stamp(loc) for loc in by_file}
    key = cache_key(f"{checkpoint.location}@{checkpoint.revision}", headers, stamps,
                    list(expected))
    return key, expected


HF_CHECKPOINT = HuggingFaceCheckpoint()
