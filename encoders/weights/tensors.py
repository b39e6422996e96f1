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


class CheckpointFormatError(ValueError):
    """A checkpoint file is malformed, truncated or lacks a tensor; the message names the file."""


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
