"""The byte-range reader against safetensors' own writer."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from encoders.weights.safetensors_reader import CheckpointFormatError, SafetensorsReader


def test_reads_exactly_the_requested_tensors(tmp_path):
    tensors = {
        "a": torch.randn(3, 4),
        "b": torch.arange(10, dtype=torch.int64),
        "c": torch.randn(100, 100).to(torch.bfloat16),
        "d": torch.randn(5).half(),
    }
    path = tmp_path / "x.safetensors"
    save_file(tensors, str(path))
    reader = SafetensorsReader()
    header = reader.read_header(path)
    got = reader.read_tensors(path, ["a", "d", "b"])
    for k in ("a", "b", "d"):
        torch.testing.assert_close(got[k], tensors[k])
    wanted = sum(header.tensors[k].nbytes for k in ("a", "b", "d"))
    assert reader.bytes_read == header.header_bytes + wanted  # header read once, cached
    assert reader.bytes_read < path.stat().st_size - 100 * 100 * 2 + 1


def test_errors_name_the_file(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"a": torch.randn(64)}, str(path))
    with pytest.raises(CheckpointFormatError, match=r"x\.safetensors: missing tensor"):
        SafetensorsReader().read_tensors(path, ["zz"])
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointFormatError, match=r"x\.safetensors: truncated"):
        SafetensorsReader().read_tensors(path, ["a"])
    path.write_bytes(b"\xff" * 16)
    with pytest.raises(CheckpointFormatError, match="not a safetensors file"):
        SafetensorsReader().read_header(path)
