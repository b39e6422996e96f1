"""A timm encoder's starting weights from a file (``--encoder-weights``), and freezing them
(``--encoder-train frozen``).

The paper trains every visual encoder from scratch; its official repository's issue 11 asks
for a frozen pretrained ViT with trained adapters, and users bring their own checkpoints. The
file is read weights-only through lmblocks' own readers (safetensors, or a ``torch.save`` zip:
no pickled code runs), from a local path or an fsspec URL, never the hub. Then what timm's
``load_checkpoint`` does, with timm's own helpers: the usual wrappers unwrapped (a
``state_dict`` or ``model`` entry, a ``module.`` prefix), the model's own
``checkpoint_filter_fn`` applied (position embeddings resampled to the model's grid with
``resample_abs_pos_embed``, patch embeddings likewise, other layouts converted), the
classifier left re-initialised when its class count differs. Anything else missing,
unexpected or of another shape is an error naming the keys, in one line.
"""

from __future__ import annotations

import hashlib
import io
import sys
from collections.abc import Mapping
from typing import BinaryIO

import torch
from timm.models import clean_state_dict
from torch import nn

from encoders.visual.timm_encoder import EncoderChoiceError
from encoders.weights.checkpoint_dir import is_url
from encoders.weights.safetensors_reader import SafetensorsReader
from encoders.weights.tensors import CheckpointFormatError

WRAPPERS = ("state_dict.", "model.")  # entries of a training checkpoint, flattened by readers
HEAD_REINITIALISED, HEAD_LOADED, NO_HEAD = "reinitialised", "loaded", "none"
FORMATS = "a safetensors file or a torch.save state dict (.pt/.pth/.bin zip)"


def _open(location: str) -> BinaryIO:
    if is_url(location):
        import fsspec

        return fsspec.open(location, "rb").open()
    return open(location, "rb")


def _cannot_read(location: str, e: Exception) -> EncoderChoiceError:
    return EncoderChoiceError(f"--encoder-weights {location!r}: cannot read it "
                              f"({type(e).__name__}: {e}); valid: {FORMATS}, a local path "
                              "or an fsspec URL")


def file_sha256(location: str) -> str:
    """The file's identity: the run's ``encoder.checkpoint`` and part of the cell's key
    (streamed: the pre-flight reads no tensor)."""
    digest = hashlib.sha256()
    try:
        with _open(location) as f:
            while chunk := f.read(1 << 23):
                digest.update(chunk)
    except (OSError, ValueError) as e:
        raise _cannot_read(location, e) from None
    return digest.hexdigest()


def _reader(opener=_open) -> SafetensorsReader:
    return SafetensorsReader(opener=opener)


def _format_error(location: str, e: Exception) -> EncoderChoiceError:
    return EncoderChoiceError(f"--encoder-weights {location!r}: {str(e).splitlines()[0][:240]}; "
                              f"valid: {FORMATS}")


def read_shapes(location: str) -> dict[str, tuple[int, ...]]:
    """Every tensor's name and shape from the file's header (no tensor data read)."""
    try:
        table = _reader().read_header(location)
    except (CheckpointFormatError, OSError, ValueError) as e:
        raise _format_error(location, e) from None
    return {name: tuple(info.shape) for name, info in table.tensors.items()}


def read_tensors(location: str, data: bytes | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of the file (``data``: its bytes, already read)."""
    reader = _reader(_open if data is None else lambda _: io.BytesIO(data))
    try:
        names = list(reader.read_header(location).tensors)
        return reader.read_tensors(location, names)
    except (CheckpointFormatError, OSError, ValueError) as e:
        raise _format_error(location, e) from None


def unwrap(state: Mapping[str, object], model: nn.Module) -> dict[str, object]:
    """The model's entries of a training checkpoint (``{"model": ...}``, ``{"state_dict":
    ...}``: the readers give ``model.blocks.0...``) without the ``module.`` prefix of
    DataParallel (timm's ``clean_state_dict``); a model's own top-level names are kept."""
    own = {name.split(".")[0] for name in model.state_dict()}
    state = dict(state)
    while True:
        for wrapper in WRAPPERS:
            if wrapper[:-1] not in own and any(k.startswith(wrapper) for k in state):
                state = {k[len(wrapper):]: v for k, v in state.items() if k.startswith(wrapper)}
                break
        else:
            return clean_state_dict(state)


def _prefix_of(model: nn.Module, module: nn.Module | None) -> str | None:
    if module is None:
        return None
    return next((name for name, m in model.named_modules() if m is module), None)


def head_of(model: nn.Module) -> nn.Module | None:
    """The classifier timm's ``get_classifier`` names (a Linear, or nothing: Identity)."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    return head if isinstance(head, nn.Module) and any(True for _ in head.parameters()) else None


def adapt(state: dict[str, torch.Tensor], model: nn.Module
          ) -> tuple[dict[str, torch.Tensor], str]:
    """``state`` as ``model`` names and shapes it: unwrapped, through the model module's
    ``checkpoint_filter_fn`` (where timm has one), the classifier's entries dropped (left at
    the model's fresh initialisation) when their shapes differ. Returns it and what became
    of the head: ``reinitialised``, ``loaded`` or ``none`` (the file has none)."""
    state = unwrap(state, model)
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if callable(filter_fn):
        state = filter_fn(state, model)
    own = model.state_dict()
    prefix = _prefix_of(model, head_of(model))
    head_keys = [k for k in own if prefix and k.startswith(prefix + ".")]
    if not any(k in state for k in head_keys):
        return state, NO_HEAD
    if all(k in state and tuple(state[k].shape) == tuple(own[k].shape) for k in head_keys):
        return state, HEAD_LOADED
    return {k: v for k, v in state.items() if k not in head_keys}, HEAD_REINITIALISED


def _names(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def check_keys(state: Mapping[str, torch.Tensor], model: nn.Module, block: nn.Module | None,
               location: str, head: str) -> None:
    """Strict but for the inserted block (not the encoder's) and a re-initialised head:
    anything missing, unexpected or of another shape, named in one line."""
    own = model.state_dict()
    skip = [p + "." for p in (_prefix_of(model, block),) if p]
    if head == HEAD_REINITIALISED or head == NO_HEAD:
        skip += [p + "." for p in (_prefix_of(model, head_of(model)),) if p]
    missing = [k for k in own if k not in state and not k.startswith(tuple(skip))]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state
              if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = [f"{len(v)} {what}: {_names(v)}" for what, v in
                (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes))
                if v]
    if problems:
        raise EncoderChoiceError(
            f"--encoder-weights {location!r} does not fit {type(model).__name__}: "
            f"{'; '.join(problems)}; valid: a state dict of the same model (timm's names), "
            "optionally under 'model'/'state_dict' or 'module.'")


def check_file(location: str, model: nn.Module) -> str:
    """The sweep's pre-flight, on ``model`` built on the meta device: the file's header
    alone, adapted and checked as a trial will. Returns what becomes of the head."""
    shapes = read_shapes(location)
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    try:
        state, head = adapt(state, model)
    except Exception as e:  # noqa: BLE001 -- timm's filters assume tensors of known layouts
        raise EncoderChoiceError(f"--encoder-weights {location!r}: timm cannot adapt it to "
                                 f"{type(model).__name__} ({type(e).__name__}: {e})") from None
    check_keys(state, model, None, location, head)
    return head


def load_weights(model: nn.Module, block: nn.Module | None, location: str,
                 sha256: str = "") -> dict[str, str]:
    """Load the file into ``model`` (the block already inserted: its own keys are not the
    file's); with ``sha256``, the file must still be the one the sweep planned with."""
    try:  # read once: the identity and the tensors from the same bytes (a URL: one download)
        with _open(location) as f:
            data = f.read()
    except (OSError, ValueError) as e:
        raise _cannot_read(location, e) from None
    found = hashlib.sha256(data).hexdigest()
    if sha256 and found != sha256:
        raise EncoderChoiceError(f"--encoder-weights {location!r} changed since the sweep was "
                                 f"planned: sha256 {found[:12]}, planned {sha256[:12]}")
    state, head = adapt(read_tensors(location, data), model)
    del data
    check_keys(state, model, block, location, head)
    model.load_state_dict(state, strict=False)
    return {"encoder_checkpoint": found, "encoder_head": head}


def freeze_encoder(model: nn.Module, block: nn.Module | None) -> int:
    """The encoder's own parameters out of training (no gradient kept for them, none in the
    optimizer): all but the inserted block's (whatever its control trains) and the
    classifier's. Returns how many parameters were frozen."""
    keep = {id(p) for m in (block, head_of(model)) if m is not None for p in m.parameters()}
    frozen = 0
    for p in model.parameters():
        if id(p) not in keep and p.requires_grad:
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen
