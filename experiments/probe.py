"""The information filtering hypothesis, measured on a trial's probe batch.

Pang et al. observe that a frozen LM block concentrates feature activation on the tokens that
carry the object. For a fixed probe batch of validation images this module measures, per
token, before and after the block:

- activation: the L2 norm of the token's features after centring (the sample's mean token
  subtracted, so a shared offset does not count as activation);
- frequency: the L2 norm of the phase angle of the token's features' Fourier transform
  (taken along the feature dimension);

and the class token's attention over the patches in the last encoder block. Where the task
knows which tokens are informative (digits: patches with ink), each map becomes one number,
the *concentration*: the share of the map's mass that lies on informative tokens, averaged
over the probe batch. "Before" is the output of the last visual block; "after" is the output
of the inserted block (for the ``none`` control the two are the same tokens).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from encoders.lm.frozen_block import FrozenLMBlock
from experiments.batches import Batch, to_device


def token_activation(tokens: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, D) -> (B, T): L2 norm of each token's features, centred over the tokens (over
    the ``real`` ones, (B, T) bool, when the sequence is padded)."""
    tokens = tokens.float()
    if real is None:
        return (tokens - tokens.mean(dim=1, keepdim=True)).norm(dim=-1)
    w = real.to(tokens.dtype)[..., None]  # (B, T, 1)
    mean = (tokens * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1)
    return (tokens - mean).norm(dim=-1)


def token_frequency(tokens: torch.Tensor) -> torch.Tensor:
    """(B, T, D) -> (B, T): L2 norm of the angle of the FFT of each token's features."""
    return torch.fft.fft(tokens.float(), dim=-1).angle().norm(dim=-1)


def concentration(values: torch.Tensor, informative: torch.Tensor) -> float:
    """Share of a non-negative (B, T) map's mass on the informative tokens, batch-averaged.

    A uniform map scores the informative tokens' share of the count; 1.0 means all of the
    mass is on informative tokens."""
    values = values.float().clamp_min(0)
    mask = informative.to(values.dtype)
    share = (values * mask).sum(-1) / values.sum(-1).clamp_min(1e-12)
    return float(share.mean())


@dataclass
class ProbeResult:
    """Per-token maps over the patches (B, n_patches) and their concentration scores."""

    maps: dict[str, torch.Tensor]
    scores: dict[str, float]

    def metrics(self) -> dict[str, float]:
        return {f"conc_{k}": v for k, v in self.scores.items()}

    def to_json(self, inputs, informative: torch.Tensor) -> dict:
        """Maps as lists; the inputs only when they are one tensor (an image is drawn next to
        its map; a multi-part input - image and question - is not stored)."""
        def rounded(t: torch.Tensor) -> list:
            return (t.float() * 1e4).round().div(1e4).tolist()

        return {
            "inputs": rounded(inputs.squeeze(1)) if isinstance(inputs, torch.Tensor) else None,
            "informative": informative.int().tolist(),
            **{k: rounded(v) for k, v in self.maps.items()},
        }


def _visual_blocks(vit: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(last visual block, the module whose output is 'after'): with a block inserted, the
    block is ``vit.blocks[-1]`` and the last visual block the one before it."""
    blocks = list(vit.blocks)
    if isinstance(blocks[-1], FrozenLMBlock):
        return blocks[-2], blocks[-1]
    return blocks[-1], blocks[-1]


@torch.no_grad()
def probe(vit: nn.Module, inputs, informative: torch.Tensor,
          prefix_tokens: int = 1, valid: torch.Tensor | None = None) -> ProbeResult:
    """Run ``inputs`` (a tensor, or a tuple passed as ``vit(*inputs)``) through an encoder
    with timm blocks in ``.blocks`` and measure around the block.

    ``informative``: (B, n_tokens) bool; ``prefix_tokens``: class/register tokens ahead of
    the others (excluded from the maps); ``valid``: (B, n_tokens) bool, False on padding,
    whose map values are zeroed. The first-token attention is read from timm's own attention
    (its softmax output, seen through the unfused path's ``attn_drop``)."""
    last, after_module = _visual_blocks(vit)
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        last.register_forward_hook(lambda m, a, out: seen.__setitem__("before", out)),
        after_module.register_forward_hook(lambda m, a, out: seen.__setitem__("after", out)),
        last.attn.attn_drop.register_forward_hook(
            lambda m, a, out: seen.__setitem__("attn", out)),
    ]
    fused, last.attn.fused_attn = last.attn.fused_attn, False
    was_training = vit.training
    vit.eval()
    try:
        vit(*inputs) if isinstance(inputs, tuple | list) else vit(inputs)
    finally:
        last.attn.fused_attn = fused
        vit.train(was_training)
        for h in hooks:
            h.remove()
    p = prefix_tokens
    real = None
    if valid is not None:  # the prefix tokens are always real
        real = torch.cat([valid.new_ones(valid.shape[0], p), valid.bool()], dim=1)
    maps = {
        "act_before": token_activation(seen["before"], real)[:, p:],
        "act_after": token_activation(seen["after"], real)[:, p:],
        "freq_before": token_frequency(seen["before"])[:, p:],
        "freq_after": token_frequency(seen["after"])[:, p:],
        "cls_attn": seen["attn"][:, :, 0, p:].float().mean(dim=1),  # heads averaged
    }
    if valid is not None:
        maps = {name: m * valid.to(m.dtype) for name, m in maps.items()}
    scores = {name: concentration(m, informative) for name, m in maps.items()}
    return ProbeResult(maps, scores)


def probe_batch(dataset: Dataset, size: int) -> Batch:
    """The first ``size`` validation inputs, collated (a tensor or a tuple of tensors)."""
    return default_collate([dataset[i][0] for i in range(min(size, len(dataset)))])


def probe_filtering(model: nn.Module, task, probe_x: Batch) -> dict[str, object]:
    """The measures of one trial's model (``task``: its ``experiments.tasks.registry.Task``)
    on the fixed probe batch: concentration scores as metrics (where the task knows its
    informative tokens) and the per-token maps, as JSON text, for the report's figures."""
    if task.informative_tokens is None or not hasattr(model, "blocks"):
        return {}
    cpu_x = to_device(probe_x, "cpu")
    informative = task.informative_tokens(cpu_x)
    valid = task.valid_tokens(cpu_x) if task.valid_tokens is not None else None
    device = next(model.parameters()).device
    result = probe(model, probe_x, informative.to(device), task.prefix_tokens,
                   valid=None if valid is None else valid.to(device))
    maps = result.to_json(cpu_x, informative)
    return {**result.metrics(), "probe_maps": json.dumps(maps, separators=(",", ":"))}
