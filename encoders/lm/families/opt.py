"""OPT (Zhang et al., 2022): every public size, numbers from the published config.json files.

opt-350m is the odd one: post-LN (``do_layer_norm_before=False``) and its decoder runs at
1024 wide while embeddings are 512 (``word_embed_proj_dim``); the projections live outside
the layers, so an OPT-350m block is 1024 wide.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from encoders.lm.registry import HF_FORMAT, LMFamily, LMSize, register_family, with_counts

if TYPE_CHECKING:
    from torch import nn
    from transformers import OPTConfig

MODELING = "transformers.models.opt.modeling_opt"
_F16 = "float16"
# name: (hidden, layers, heads, ffn)
_SIZES = {
    "125m": (768, 12, 12, 3072),
    "350m": (1024, 24, 16, 4096),
    "1.3b": (2048, 24, 32, 8192),
    "2.7b": (2560, 32, 32, 10240),
    "6.7b": (4096, 32, 32, 16384),
    "13b": (5120, 40, 40, 20480),
    "30b": (7168, 48, 56, 28672),
    "66b": (9216, 64, 72, 36864),
}


def _size(name: str, hidden: int, layers: int, heads: int, ffn: int) -> LMSize:
    post_ln = name == "350m"
    extra = {
        "do_layer_norm_before": not post_ln,
        "word_embed_proj_dim": 512 if post_ln else hidden,
    }
    return LMSize(name, f"facebook/opt-{name}", hidden, layers, heads, ffn, _F16, extra)


def make_config(size: LMSize) -> OPTConfig:
    from transformers import OPTConfig

    return OPTConfig(
        hidden_size=size.hidden_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        ffn_dim=size.ffn_dim,
        do_layer_norm_before=size.extra["do_layer_norm_before"],
        word_embed_proj_dim=size.extra["word_embed_proj_dim"],
        vocab_size=50272,
        dropout=0.1,
        attention_dropout=0.0,
    )


def final_norm(c: OPTConfig) -> nn.Module:
    from torch import nn

    return nn.LayerNorm(c.hidden_size, elementwise_affine=c.layer_norm_elementwise_affine)


# name: (one layer's parameters, the whole checkpoint's), as transformers counts them
PARAMS = {
    "125m": (7_087_872, 125_239_296),
    "350m": (12_596_224, 331_196_416),
    "1.3b": (50_358_272, 1_315_758_080),
    "2.7b": (78_676_480, 2_651_596_800),
    "6.7b": (201_379_840, 6_658_473_984),
    "13b": (314_639_360, 12_853_473_280),
    "30b": (616_655_872, 29_974_540_288),
    "66b": (1_019_335_680, 65_719_701_504),
}


OPT = register_family(
    LMFamily(
        name="opt",
        sizes=with_counts({n: _size(n, *dims) for n, dims in _SIZES.items()}, PARAMS),
        default_size="125m",
        layer=f"{MODELING}:OPTDecoderLayer",
        model=f"{MODELING}:OPTModel",
        config="transformers.models.opt.configuration_opt:OPTConfig",
        layer_key=r"^(?:.*\.)?decoder\.layers\.{index}\.(.+)$",
        make_config=make_config,
        formats=(HF_FORMAT,),
        description="Meta OPT decoder layers (facebook/opt-*)",
        final_norm_key=r"^(?:.*\.)?decoder\.final_layer_norm\.(.+)$",
        build_final_norm=final_norm,
        arch_fields=("do_layer_norm_before",),  # norm placement: pre-LN, or post-LN (350m)
    )
)
