"""The registry tests as functions, for lmblocks' own tests and a plugin author's alike: every
task with every control on the task's ``example`` batch, every LM family against its own
transformers layer. A plugin's tests parametrize them over what it registers::

    from experiments.registry_checks import (check_task_with_control, list_controls,
                                             plugin_registrations)

    REGISTERED = plugin_registrations("my_plugin")  # imports it, records its names

    @pytest.mark.parametrize("control", list_controls())
    @pytest.mark.parametrize("task", REGISTERED.tasks)
    def test_my_task_with_every_control(task, control):
        check_task_with_control(task, control)

Each check raises AssertionError saying what failed (plain asserts: pytest shows them).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

import encoders.lm.families  # noqa: F401  (the built-in families)
from encoders.lm.auxiliary import AuxiliaryBranch, with_auxiliary_loss
from encoders.lm.controls import build_block, get_control, list_controls
from encoders.lm.frozen_block import FrozenLMBlock, bidirectional_mask, lm_layer_parameters
from encoders.lm.inserted import MLPBlock, VisualBlockSlot
from encoders.lm.layer_loading import load_layers
from encoders.lm.registry import LMFamily, LMSize, get_family
from encoders.weights.checkpoint_dir import CheckpointDir
from encoders.weights.safetensors_reader import SafetensorsReader
from experiments.batches import forward
from experiments.objectives.classification import CLASSIFICATION
from experiments.registrations import Registrations, plugin_registrations
from experiments.tasks.registry import get_task

__all__ = ["Registrations", "check_cost_row", "check_family_builds_its_layer",
           "check_family_matches_its_own_model", "check_loaded_layer_is_the_models_own",
           "check_task_declares_what_checks_need", "check_task_with_control",
           "check_task_with_every_control", "list_controls", "plugin_registrations",
           "tiny_checkpoint", "tiny_size"]

BATCH = 2


def _output(out) -> torch.Tensor:
    """The first tensor of a model's output (logits, or trajectories, or image embeddings)."""
    return out[0] if isinstance(out, tuple) else out


def control_block(control: str, visual_dim: int):
    """The control's arm and its module for MiniLM's last layer (seeded), at ``visual_dim``."""
    arm = get_control(control)
    torch.manual_seed(0)
    block, info = build_block(family="minilm", size="l6",
                              layers=(5,) if arm.layers != "none" else (), control=control,
                              seed=0, visual_dim=visual_dim)
    return arm, block, info


def check_task_declares_what_checks_need(task_name: str) -> None:
    task = get_task(task_name)
    assert task.example is not None, f"task {task_name!r} has no example batch"
    assert task.mode in ("max", "min"), task_name
    assert task.metric.startswith("val_"), task_name


def check_task_with_every_control(task_name: str) -> None:
    """``check_task_with_control`` for every registered control, one after another."""
    for control in list_controls():
        check_task_with_control(task_name, control)


def check_task_with_control(task_name: str, control: str) -> None:
    """On the task's ``example`` batch: the block is appended after the encoder's last block
    and is on the path (changing its weights changes the output), a training step runs
    forward and backward to a finite loss, the gradient reaches the encoder below the block,
    the trainable weights move and the frozen ones do not."""
    task = get_task(task_name)
    arm, block, info = control_block(control, task.visual_dim)
    assert info.weights_source == arm.weights_source
    if isinstance(block, AuxiliaryBranch):
        if not task.num_classes:  # its head needs classes: the plan refuses such a sweep
            return
        block.attach_head(task.num_classes, task.prefix_tokens)
    model = task.build_model(block)
    x, y = task.example(BATCH)

    if block is None:
        assert not any(isinstance(m, FrozenLMBlock) for m in model.modules())
    else:
        assert model.blocks[-1] is block, "the block must follow the encoder's last block"
        if isinstance(block, FrozenLMBlock):
            assert arm.adapters
            assert len(block.layers) == (1 if arm.layers != "none" else 0)
            perturbed = block.layers[0] if len(block.layers) else block.proj_out
        elif isinstance(block, AuxiliaryBranch):  # a side branch: off the evaluated path
            assert arm.training_only and arm.adapters
            perturbed = block.side.layers[0]
        elif isinstance(block, VisualBlockSlot):  # one more of the encoder's own blocks
            assert type(block.block) is type(model.blocks[-2]) and not arm.adapters
            assert block.visual_params > 0 and block.lm_params > 0
            perturbed = block.block
        else:
            assert isinstance(block, MLPBlock) and not arm.adapters
            perturbed = block.proj_out
        # on the path: perturbing the block's own weights (the LM layer's, else the
        # adapters', the MLP's or the visual block's) changes what the model outputs
        model.eval()
        with torch.no_grad():
            before = _output(forward(model, x)).clone()
            saved = {k: v.clone() for k, v in perturbed.state_dict().items()}
            for p in perturbed.parameters():
                p.add_(torch.randn_like(p) * p.detach().float().std().clamp_min(0.02))
            after = _output(forward(model, x))
            perturbed.load_state_dict(saved)
        on_path = not torch.allclose(after, before, atol=1e-5)
        assert on_path is not arm.training_only, (
            "the block is not on the path" if not arm.training_only
            else "a training-only branch changed the evaluated output")

    model.train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    start = {n: p.detach().clone() for n, p in trainable.items()}
    lm = block.side if isinstance(block, AuxiliaryBranch) else block
    lm_frozen = isinstance(lm, FrozenLMBlock) and not arm.trains_lm
    assert len(frozen) == (sum(1 for _ in lm.layers.parameters()) if lm_frozen else 0)
    opt = torch.optim.AdamW(trainable.values(), lr=1e-3)
    loss_fn = (task.objective or CLASSIFICATION).loss
    if isinstance(block, AuxiliaryBranch):  # the branch's loss, as a trial adds it
        loss_fn = with_auxiliary_loss(loss_fn, block, 1.0)
    loss = loss_fn(forward(model, x), y)
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    # the gradient flows through the block to the encoder below it
    below = model.blocks[-2] if block is not None else model.blocks[-1]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in below.parameters()), (
        "no gradient reaches the encoder's block below the inserted one")
    opt.step()
    moved = [n for n, p in trainable.items() if not torch.equal(p, start[n])]
    assert len(moved) > len(trainable) // 2, f"only {len(moved)} of {len(trainable)} moved"
    if isinstance(block, FrozenLMBlock | MLPBlock | AuxiliaryBranch):  # the two adapters
        assert sum(n.endswith(("proj_in.weight", "proj_out.weight")) for n in moved) == 2
    if arm.trains_lm:  # and so are the LM layer's weights
        layer = {n for n, _ in lm_layer_parameters(model)}
        assert layer and len(layer & set(moved)) > len(layer) // 2
    if isinstance(block, VisualBlockSlot):
        assert all(p.requires_grad for p in block.parameters())
        assert any(n.startswith(f"blocks.{len(model.blocks) - 1}.block.") for n in moved)
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen {n} moved"


def check_family_builds_its_layer(family_name: str) -> None:
    """The family's default size builds its transformers layer class (meta device), with the
    registry's hidden and FFN widths."""
    fam = get_family(family_name)
    size = fam.size(fam.default_size)
    config = fam.make_config(size)
    with torch.device("meta"):
        layer = fam.build_layer(config, 0)
    assert isinstance(layer, fam.layer_class)
    widths = {p.shape[-1] for p in layer.parameters() if p.ndim == 2}
    assert size.hidden_size in widths and size.ffn_dim in widths, (
        f"{family_name}: layer widths {sorted(widths)} lack hidden {size.hidden_size} or FFN "
        f"{size.ffn_dim}")


def tiny_size(family: str) -> LMSize:
    """The family's default size shrunk to 32 wide, 3 layers, 4 heads (2 key/value heads where
    it has grouped-query attention)."""
    fam = get_family(family)
    real = fam.size(fam.default_size)
    extra = dict(real.extra)
    if "num_key_value_heads" in extra:
        extra["num_key_value_heads"] = 2  # 4 query heads share 2 kv heads: GQA
    if "word_embed_proj_dim" in extra:
        extra["word_embed_proj_dim"] = 32
    return dataclasses.replace(
        real, name="tiny", repo_id=f"tiny/{family}", hidden_size=32, num_layers=3,
        num_heads=4, ffn_dim=64, extra=extra,
    )


def tiny_checkpoint(family: str, folder: str | Path
                    ) -> tuple[LMFamily, torch.nn.Module, list[torch.nn.Module], CheckpointDir]:
    """A tiny checkpoint of the family saved by transformers' own model class (sharded
    safetensors in ``folder``): (family, model, its 3 layers, the checkpoint)."""
    fam = get_family(family)
    config = fam.make_config(tiny_size(family))
    config.vocab_size = 64
    torch.manual_seed(0)
    model = fam.model_class(config).eval()
    model.save_pretrained(folder, max_shard_size="30KB")
    layers = [m for m in model.modules() if isinstance(m, fam.layer_class)]
    assert len(layers) == 3, f"{family}: {len(layers)} layers of {fam.layer_class.__name__}"
    return fam, model, layers, CheckpointDir(Path(folder), "weights-dir", f"tiny/{fam.name}")


def check_loaded_layer_is_the_models_own(fam: LMFamily, own_layers: list[torch.nn.Module],
                                         ckpt: CheckpointDir) -> None:
    """Layer 1 loaded from the checkpoint computes what the model's own layer 1 does (same
    input, bidirectional mask, identity positions), not what layer 2 does, and only its
    tensors were read."""
    loaded = load_layers(fam, ckpt, [1], reader=SafetensorsReader())
    layer = loaded.layers[0].eval()
    assert type(layer) is fam.layer_class
    x = torch.randn(2, 6, 32)
    mask = bidirectional_mask(None, 2, 6, x.dtype, x.device)
    extra = fam.layer_kwargs(loaded.config)(x)
    with torch.no_grad():
        expected = own_layers[1](x, attention_mask=mask, **extra)
        got = layer(x, attention_mask=mask, **extra)
        other = own_layers[2](x, attention_mask=mask, **extra)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, other, atol=1e-4), "must be layer 1, not another layer"
    # only layer 1's tensors were read (plus headers)
    assert loaded.tensor_bytes == sum(p.numel() * 4 for p in layer.parameters())
    if hasattr(loaded.config, "num_key_value_heads") and fam.rotary:
        assert loaded.config.num_key_value_heads == 2


def check_family_matches_its_own_model(family_name: str, folder: str | Path) -> None:
    """``check_family_builds_its_layer``, then a tiny checkpoint of the family (in
    ``folder``) loaded layer by layer against the family's own transformers model."""
    check_family_builds_its_layer(family_name)
    fam, _, layers, ckpt = tiny_checkpoint(family_name, folder)
    check_loaded_layer_is_the_models_own(fam, layers, ckpt)


def check_cost_row(task_name: str, inputs=None) -> None:
    """The task's catalog cost row is its model's own: forward GFLOPs per sample without a
    block (FlopCounterMode, on the meta device: shapes only), the token counts of the
    sequences the block runs over (a probe in its place) and the width. ``inputs``: a batch
    of 2 (default: the task's ``example``)."""
    from encoders.visual.vit import insert_after_last_block
    from experiments.cost import count_flops
    from experiments.tasks.catalog import CATALOG

    row, task = CATALOG[task_name].cost, get_task(task_name)
    assert row is not None, f"task {task_name!r} has no cost row"
    x = task.example(2)[0] if inputs is None else inputs
    x = x.to("meta") if hasattr(x, "to") else tuple(v.to("meta") for v in x)
    lengths: list[int] = []

    class Probe(torch.nn.Module):
        def forward(self, h, *args, **kwargs):
            lengths.append(h.shape[1])  # (B, T, width)
            assert h.shape[2] == row.width, f"width {h.shape[2]}, the row says {row.width}"
            return h

    with torch.device("meta"):
        model = task.build_model(None).eval()
        probed = insert_after_last_block(task.build_model(None), Probe()).eval()
    flops = count_flops(model, x, None, lambda out, _: torch.zeros(()))
    forward(probed, x)
    got = flops.forward_per_sample / 1e9
    assert abs(got - row.encoder_gflops) <= 0.01 * row.encoder_gflops, (
        f"task {task_name!r}: {got:.4g} GFLOPs a sample, the row says {row.encoder_gflops}")
    assert tuple(lengths) == row.sequences, f"sequences {tuple(lengths)}, row {row.sequences}"
    assert row.width == task.visual_dim
