"""The tensor table every checkpoint reader produces: name -> dtype, shape, absolute byte range.

safetensors files carry this table as their JSON header; ``torch.save`` zips carry it in a
pickle (``torch_zip.py`` turns it into the same table). Both readers, the layer cache and
the LM loaders speak these types, so neither reader needs the other's module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# safetensors dtype strings -> torch dtypes (the format's full list that torch supports).
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


# Bytes per element of each dtype: a tensor's byte range must be exactly numel x this.
ITEMSIZE: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}


def is_count(value: object) -> bool:
    """A non-negative integer as a checkpoint header means one (JSON's ``true`` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


class CheckpointFormatError(ValueError):
    """A checkpoint file is malformed, truncated or lacks a tensor; the message names the file.

    Always one line: text quoted from the file or from a parser's error can hold line
    breaks, which are escaped here so a terminal or a run tag gets exactly one line."""

    def __init__(self, message: str) -> None:
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"))


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # a SAFETENSORS_DTYPES key
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass
class TensorTable:
    """One file's tensors and where their bytes are."""

    path: str
    header_bytes: int  # safetensors: 8-byte length prefix + JSON; 0 for a torch zip
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
