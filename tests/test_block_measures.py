"""Bai et al.'s measures (``experiments/block_measures.py``) against independent oracles:
linear CKA against its kernel (HSIC) form, gradient coherence against ``torch.func``'s
per-sample gradients, and both as a trial reports them."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from encoders.lm.controls import build_block
from encoders.visual.vit import insert_after_last_block, small_vit
from experiments.block_measures import (
    block_measures,
    block_similarity,
    gradient_coherence,
    linear_cka,
)
from experiments.probe import spread_batch
from experiments.tasks.registry import get_task


def hsic_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """CKA in its kernel form (Kornblith et al., eq. 3): centred linear Gram matrices."""
    n = len(x)
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k, l_ = h @ (x.double() @ x.double().T) @ h, h @ (y.double() @ y.double().T) @ h
    return float((k * l_).sum() / torch.sqrt((k * k).sum() * (l_ * l_).sum()))


def test_linear_cka_is_the_kernel_form_and_has_its_invariances():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 12, generator=g)
    y = x @ torch.randn(12, 7, generator=g) + 0.5 * torch.randn(200, 7, generator=g)
    assert linear_cka(x, y) == pytest.approx(hsic_cka(x, y), rel=1e-9)
    assert linear_cka(x, x) == pytest.approx(1.0)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g))
    assert linear_cka(x, 3.0 * x @ q + 5.0) == pytest.approx(1.0)  # rotation, scale, shift
    noise = torch.randn(200, 7, generator=g)
    assert linear_cka(x, noise) < 0.15 < linear_cka(x, y)


def _per_sample_cosines(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The oracle: torch.func's vmap(grad) per-sample gradients, every pair's cosine."""
    from torch.func import functional_call, grad, vmap

    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}

    def loss(p, xi, yi):
        out = functional_call(model, {**p, **frozen}, (xi[None],))
        return nn.functional.cross_entropy(out, yi[None])

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    flat = torch.cat([g.flatten(1) for g in grads.values()], 1)
    unit = flat / flat.norm(dim=1, keepdim=True)
    pairs = [float(unit[i] @ unit[j]) for i, j in itertools.combinations(range(len(x)), 2)]
    return sum(pairs) / len(pairs)


def test_gradient_coherence_is_the_mean_pairwise_cosine_of_per_sample_gradients():
    torch.manual_seed(0)
    model = small_vit(img_size=8, in_chans=1, num_classes=10, embed_dim=16, depth=1,
                      num_heads=2).eval()
    model.patch_embed.requires_grad_(False)  # frozen parameters take no part
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    model.head.weight.grad = marker = torch.ones_like(model.head.weight)
    got = gradient_coherence(model, nn.functional.cross_entropy, x, y)
    assert got == pytest.approx(_per_sample_cosines(model, x, y), abs=1e-5)
    assert model.head.weight.grad is marker  # the optimizer's gradients untouched
    same = gradient_coherence(model, nn.functional.cross_entropy, x[:1].repeat(4, 1, 1, 1),
                              y[:1].repeat(4))
    assert same == pytest.approx(1.0, abs=1e-5)  # one sample four times: fully coherent
    assert gradient_coherence(model, nn.functional.cross_entropy, x[:1], y[:1]) is None


def test_similarity_is_between_the_block_s_input_and_output_and_none_without_one():
    torch.manual_seed(0)
    vit = small_vit(img_size=8, in_chans=1, num_classes=10)
    x = torch.randn(4, 1, 8, 8)
    assert block_similarity(vit, x) is None  # no inserted module
    insert_after_last_block(vit, nn.Identity())  # its output is its input: CKA 1
    assert block_similarity(vit, x) == pytest.approx(1.0)
    torch.manual_seed(0)
    block, _ = build_block(family="minilm", size="l6", layers=(5,), control="random", seed=0,
                           visual_dim=64)
    vit = insert_after_last_block(small_vit(img_size=8, in_chans=1, num_classes=10), block)
    seen = {}
    vit.blocks[-2].register_forward_hook(lambda m, a, o: seen.__setitem__("x", o))
    block.register_forward_hook(lambda m, a, o: seen.__setitem__("y", o))
    got = block_similarity(vit, x)
    assert got == pytest.approx(hsic_cka(seen["x"].flatten(0, 1), seen["y"].flatten(0, 1)),
                                rel=1e-6)


def test_the_probe_for_coherence_spans_the_classes_of_a_sorted_validation_set():
    from torch.utils.data import TensorDataset

    data = TensorDataset(torch.arange(30.0)[:, None], torch.arange(30) // 10)  # in class order
    x, y = spread_batch(data, 8)
    assert set(y.tolist()) == {0, 1, 2} and len(y) == 8 and x[0, 0] == 0 and x[-1, 0] == 29


def test_a_trial_s_measures_on_its_task_and_only_where_they_apply():
    digits, retrieval = get_task("digits"), get_task("shape-retrieval")
    torch.manual_seed(0)
    block, _ = build_block(family="minilm", size="l6", layers=(5,), control="random", seed=0,
                           visual_dim=digits.visual_dim)
    _, val = digits.build_data()
    probe = spread_batch(val, digits.probe_size)
    with_block = block_measures(digits.build_model(block), digits, probe, "_init")
    assert set(with_block) == {"block_cka_init", "grad_coherence_init"}
    assert 0 <= with_block["block_cka_init"] <= 1 and -1 <= with_block["grad_coherence_init"] <= 1
    assert set(block_measures(digits.build_model(None), digits, probe)) == {"grad_coherence"}
    # a contrastive loss has no per-sample gradient: no coherence, the similarity still
    block, _ = build_block(family="minilm", size="l6", layers=(5,), control="random", seed=0,
                           visual_dim=retrieval.visual_dim)
    _, val = retrieval.build_data()
    got = block_measures(retrieval.build_model(block), retrieval,
                         spread_batch(val, retrieval.probe_size))
    assert set(got) == {"block_cka"}
