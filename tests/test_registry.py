"""Family registry: real architecture numbers, meta-device counts, registry behaviour."""

from __future__ import annotations

import pytest

from encoders.lm.registry import LMFamily, get_family, list_families, register_family
from experiments.registry_checks import check_family_builds_its_layer

OPT_PUBLISHED = {  # hidden, layers, heads, ffn: from each facebook/opt-* config.json
    "125m": (768, 12, 12, 3072),
    "350m": (1024, 24, 16, 4096),
    "1.3b": (2048, 24, 32, 8192),
    "2.7b": (2560, 32, 32, 10240),
    "6.7b": (4096, 32, 32, 16384),
    "13b": (5120, 40, 40, 20480),
    "30b": (7168, 48, 56, 28672),
    "66b": (9216, 64, 72, 36864),
}


def test_opt_has_every_public_size_with_real_numbers():
    opt = get_family("opt")
    assert list(opt.sizes) == list(OPT_PUBLISHED)
    for name, dims in OPT_PUBLISHED.items():
        s = opt.size(name)
        assert (s.hidden_size, s.num_layers, s.num_heads, s.ffn_dim) == dims
        assert s.repo_id == f"facebook/opt-{name}" and s.dtype == "float16"
    assert opt.size("350m").extra == {"do_layer_norm_before": False, "word_embed_proj_dim": 512}
    assert opt.size("125m").extra["do_layer_norm_before"] is True


def test_layer_params_match_the_transformer_formula():
    # OPT layer: 4 attention projections with bias, fc1/fc2 with bias, 2 LayerNorms
    opt = get_family("opt")
    for name, (h, _, _, f) in OPT_PUBLISHED.items():
        assert opt.layer_params(name) == 4 * (h * h + h) + (h * f + f) + (f * h + h) + 4 * h
    assert get_family("minilm").layer_params("l6") == 1_774_464


@pytest.mark.parametrize("family", list_families())
def test_every_family_builds_its_transformers_layer(family):
    check_family_builds_its_layer(family)  # experiments/registry_checks.py


def test_unknown_names_list_the_valid_ones_and_duplicates_raise():
    with pytest.raises(KeyError, match=f"valid: {', '.join(list_families())}\""):
        get_family("gpt9")
    with pytest.raises(KeyError, match=f"valid: {', '.join(get_family('opt').sizes)}\""):
        get_family("opt").size("7b")
    with pytest.raises(ValueError, match="already registered"):
        register_family(get_family("opt"))
    assert isinstance(get_family("opt"), LMFamily)
