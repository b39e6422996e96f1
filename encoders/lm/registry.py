"""The LM family registry: which language models a sweep can take a block from.

Every size carries its real architecture numbers, and its parameter counts, as plain data,
so that planning (``--dry-run``, block parameter counts, bytes to read) needs no download
and imports neither torch nor transformers (issue 16: a bad flag is answered in under a
second). The counts are checked against transformers' own classes: ``count_layer_params``
and ``count_model_params`` build the config from the registry and instantiate the layer
(or model) on the ``meta`` device; ``tests/test_registry_data.py`` compares every size,
and a size that gives no counts is counted that way when planned.

A family names its transformers classes and its weight formats by reference
(``"package.module:Name"``), imported on first use: registering every family imports no
torch or transformers code, and a trial imports only its own family's (each modeling module
pulls in a large part of transformers).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the plan path reads a family's numbers without torch or transformers
    import torch
    from torch import nn
    from transformers import PretrainedConfig

    from encoders.lm.formats import WeightFormat
    from encoders.lm.positions import LayerKwargs
    from encoders.weights.checkpoint_dir import CheckpointDir

# Bytes per element of the published weights' dtypes (``LMSize.dtype``).
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}
# The shipped weight formats, by reference (``LMFamily.formats``).
HF_FORMAT = "encoders.lm.hf_format:HF_CHECKPOINT"
META_LLAMA_FORMAT = "encoders.lm.meta_llama:META_LLAMA"
GGUF_LLAMA_FORMAT = "encoders.lm.gguf_format:GGUF_LLAMA"
GGUF_MISTRAL_FORMAT = "encoders.lm.gguf_format:GGUF_MISTRAL"
GGUF_QWEN2_FORMAT = "encoders.lm.gguf_format:GGUF_QWEN2"


@cache
def resolve(ref: str) -> Any:
    """``"package.module:Name"`` -> the object, imported on first use (then cached)."""
    module, sep, name = ref.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"bad reference {ref!r}; valid: 'package.module:Name'")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class LMSize:
    """One public checkpoint of a family, with the numbers that shape its layers."""

    name: str
    repo_id: str
    hidden_size: int
    num_layers: int
    num_heads: int
    ffn_dim: int
    dtype: str  # dtype of the published weights on disk: a key of ITEMSIZE
    extra: dict[str, object] = field(default_factory=dict)  # family-specific config fields
    # Parameters of one layer and of the whole published checkpoint (base model + untied LM
    # head), as transformers' classes count them (``count_layer_params``); None: counted on
    # the meta device when needed (imports torch and the family's modeling module).
    layer_params: int | None = None
    model_params: int | None = None
    # Bytes a weight takes in the published file when it is quantised (a Q4_1 GGUF: 20 bytes
    # a block of 32, norms in float32: 0.626); ``dtype`` is then what the layers are
    # dequantised to. Only the bytes to read use it: memory is planned at ``dtype``.
    disk_itemsize: float | None = None

    def __post_init__(self) -> None:
        if self.dtype not in ITEMSIZE:
            raise ValueError(f"size {self.name!r}: dtype {self.dtype!r}; "
                             f"valid: {', '.join(ITEMSIZE)}")

    @property
    def itemsize(self) -> int:
        """Bytes per element of the weights as loaded (the published dtype, or what a
        quantised file is dequantised to)."""
        return ITEMSIZE[self.dtype]

    @property
    def disk_bytes_per_param(self) -> float:
        """Bytes per weight read from the published file."""
        return self.disk_itemsize or ITEMSIZE[self.dtype]

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.dtype)


@dataclass(frozen=True)
class LMFamily:
    """How to plan, build and load one block of a family of LMs.

    ``layer_key`` is a regular expression with an ``{index}`` slot; it must match the full
    tensor name of a layer's weight in a checkpoint and capture the name inside the layer,
    whatever prefix the checkpoint uses (``model.decoder.`` vs ``decoder.``).

    ``layer``, ``model`` and ``config`` are references (``"package.module:Name"``) to the
    family's transformers classes, read through ``layer_class``, ``model_class`` and
    ``config_class``; ``make_config`` and ``build_final_norm`` import what they use when
    called.
    """

    name: str
    sizes: dict[str, LMSize]
    default_size: str
    layer: str  # its transformers layer class
    model: str  # its PreTrainedModel, whose _init_weights is reused
    config: str  # its PretrainedConfig subclass
    layer_key: str
    make_config: Callable[[LMSize], PretrainedConfig]
    # The checkpoint layouts it is published in (``encoders/lm/formats.py``), by reference, in
    # order of preference: a checkpoint is read by the first whose marker file it has.
    formats: tuple[str, ...] = ()
    description: str = ""
    # Where weights come from when not a Hugging Face repo (e.g. shipped in a package).
    locate: Callable[[LMSize], str] | None = None
    # Rotary families get identity cos/sin (see encoders/lm/positions.py).
    rotary: bool = False
    # Names inside a layer that checkpoints may hold but are not parameters (old mask or
    # rotary buffers): skipped, never read.
    ignore: str | None = None
    # The LM's final norm (after its last layer): tensor-name regex capturing the name inside
    # the norm, and its module. None for post-LN models, which have no final norm.
    final_norm_key: str | None = None
    build_final_norm: Callable[[PretrainedConfig], nn.Module] | None = None
    # Config fields beyond the numbers every family has (``architecture_numbers``) that
    # change what a layer computes, e.g. OPT's norm placement ``do_layer_norm_before``: a
    # checkpoint's value must equal the registry's (``make_config``). Families whose norm
    # placement is fixed by their layer class (BERT post-LN, GPT-2 and LLaMA pre-LN) have
    # no such field to contradict it.
    arch_fields: tuple[str, ...] = ()

    @property
    def layer_class(self) -> type[nn.Module]:
        return resolve(self.layer)

    @property
    def model_class(self) -> type[nn.Module]:
        return resolve(self.model)

    @property
    def config_class(self) -> type[PretrainedConfig]:
        return resolve(self.config)

    def size(self, name: str) -> LMSize:
        if name not in self.sizes:
            raise KeyError(
                f"unknown size {name!r} for family {self.name!r}; valid: {', '.join(self.sizes)}"
            )
        return self.sizes[name]

    @property
    def weight_formats(self) -> tuple[WeightFormat, ...]:
        return tuple(resolve(ref) for ref in self.formats)

    def format_for(self, checkpoint: CheckpointDir) -> WeightFormat:
        """The first of the family's formats present in the checkpoint (its marker file)."""
        from encoders.weights.tensors import CheckpointFormatError

        formats = self.weight_formats
        for fmt in formats:
            if fmt.present(checkpoint):
                return fmt
        markers = " or ".join(f.marker for f in formats)
        raise CheckpointFormatError(f"{checkpoint.location}: missing {markers}")

    def build_layer(self, config: PretrainedConfig, index: int) -> nn.Module:
        return self.layer_class(config, layer_idx=index)

    def layer_kwargs(self, config: PretrainedConfig) -> LayerKwargs:
        """Extra keyword arguments each layer call needs so that no position is encoded."""
        from encoders.lm.positions import identity_rotary, no_extra_kwargs

        return identity_rotary(config) if self.rotary else no_extra_kwargs

    def architecture(self, config: PretrainedConfig) -> dict[str, object]:
        """``architecture_numbers(config)`` plus the family's own ``arch_fields``."""
        return {**architecture_numbers(config),
                **{name: getattr(config, name, None) for name in self.arch_fields}}

    def check_config(self, size: LMSize, config: PretrainedConfig, where: str) -> None:
        """The checkpoint's config (read from ``where``) has every architectural number of the
        registry's ``size``: hidden size, layers, attention and key/value heads, head size,
        FFN width and the family's ``arch_fields`` (norm placement); else one line naming
        each mismatched field with the checkpoint's and the registry's value."""
        from encoders.weights.tensors import CheckpointFormatError

        want = self.architecture(self.make_config(size))
        try:
            got = self.architecture(config)
        except (TypeError, ValueError, ZeroDivisionError, AttributeError) as e:
            raise CheckpointFormatError(  # e.g. "hidden_size": "big", or 0 heads
                f"{where}: not a valid {self.name} config ({type(e).__name__}: {e})") from None
        wrong = [f"{name} {got[name]!r} (registry: {want[name]!r})"
                 for name in want if got[name] != want[name]]
        if wrong:
            raise CheckpointFormatError(
                f"{where}: not the registry's {self.name}/{size.name}: {', '.join(wrong)}")

    def layer_params(self, size: str) -> int:
        """Parameters of one layer of ``size``: the registry's number, else counted."""
        n = self.size(size).layer_params
        return count_layer_params(self.name, size) if n is None else n

    def model_params(self, size: str) -> int:
        """Parameters of the whole published checkpoint (base model + untied LM head)."""
        n = self.size(size).model_params
        return count_model_params(self.name, size) if n is None else n


def with_counts(sizes: dict[str, LMSize], counts: dict[str, tuple[int, int]]
                ) -> dict[str, LMSize]:
    """``sizes`` with their (layer, whole-checkpoint) parameter counts: a family's plain-data
    numbers, checked against transformers' classes by ``tests/test_registry_data.py``."""
    return {name: dataclasses.replace(size, layer_params=counts[name][0],
                                      model_params=counts[name][1])
            for name, size in sizes.items()}


# Where configs keep the FFN width: transformers names it per family.
FFN_FIELDS = ("intermediate_size", "ffn_dim", "n_inner")


def architecture_numbers(config: PretrainedConfig) -> dict[str, int]:
    """The numbers that shape every family's layer, read the same way from any config."""
    hidden, heads = config.hidden_size, config.num_attention_heads
    ffn_field = next((f for f in FFN_FIELDS if hasattr(config, f)), None)
    ffn = getattr(config, ffn_field) if ffn_field else None
    return {
        "hidden size": hidden,
        "layers": config.num_hidden_layers,
        "attention heads": heads,
        "key/value heads": getattr(config, "num_key_value_heads", None) or heads,
        "head size": getattr(config, "head_dim", None) or hidden // heads,
        "FFN width": 4 * hidden if ffn is None else ffn,  # None: 4 x hidden (GPT-2's n_inner)
    }


class DuplicateNameError(ValueError):
    """A registry (LM families, controls, tasks, the task catalog) refusing a name it already
    has: a plugin's clash, told apart from its other errors (``orchestrator/plugins.py``)."""

    def __init__(self, kind: str, name: str, message: str = "") -> None:
        self.kind, self.name = kind, name
        super().__init__(message or f"{kind} {name!r} is already registered")


_FAMILIES: dict[str, LMFamily] = {}


def register_family(family: LMFamily) -> LMFamily:
    if family.name in _FAMILIES:
        raise DuplicateNameError("LM family", family.name)
    if not family.formats:
        raise ValueError(f"family {family.name!r} declares no weight formats")
    if family.default_size not in family.sizes:
        raise ValueError(f"family {family.name!r}: default size {family.default_size!r} unknown")
    for ref in (family.layer, family.model, family.config, *family.formats):
        if ref.count(":") != 1:  # checked here; imported only when a trial needs it
            raise ValueError(f"family {family.name!r}: bad class reference {ref!r}; "
                             "valid: 'package.module:Name'")
    _FAMILIES[family.name] = family
    return family


def list_families() -> list[str]:
    return sorted(_FAMILIES)


def get_family(name: str) -> LMFamily:
    if name not in _FAMILIES:
        raise KeyError(f"unknown LM family {name!r}; valid: {', '.join(list_families())}")
    return _FAMILIES[name]


@cache
def count_model_params(family: str, size: str) -> int:
    """The whole checkpoint's parameters as transformers' model class has them (meta device,
    no memory), plus the LM head when it is not tied to the embeddings."""
    import torch

    fam = get_family(family)
    config = fam.make_config(fam.size(size))
    with torch.device("meta"):
        model = fam.model_class(config)
    n = sum(p.numel() for p in model.parameters())
    if not getattr(config, "tie_word_embeddings", True):
        n += config.vocab_size * config.hidden_size  # the separate LM head
    return n


@cache
def count_layer_params(family: str, size: str) -> int:
    """One layer's parameters as transformers' layer class has them (meta device)."""
    import torch

    fam = get_family(family)
    config = fam.make_config(fam.size(size))
    with torch.device("meta"):
        layer = fam.build_layer(config, 0)
    return sum(p.numel() for p in layer.parameters())
