"""The information filtering hypothesis, measured on a trial's probe batch.

Pang et al. observe that a frozen LM block concentrates feature activation on the tokens that
carry the object. For a fixed probe batch of validation images this module measures, per
token, before and after the block:

- activation: the L2 norm of the token's features after centring (the sample's mean token
  subtracted, so a shared offset does not count as activation);
- centred frequency (``freq_centred_*``, the paper's App. A): the L2 norm of the phase angle
  of the Fourier transform of the token's features (along the feature dimension) after the
  sample's mean phase (over its tokens) is subtracted;
- frequency (``freq_*``, kept for runs logged before the centred one): the same, uncentred;

and the class token's attention over the patches (heads averaged), read twice: in the last
visual block (``cls_attn``) and in the LM block's last layer (``lm_cls_attn``; absent without
LM layers: ``none``, ``adapters``, ``mlp``, ``visual-block``). "Before" is the tokens
entering the inserted module, wherever ``--positions`` put it (at ``end``: the last visual
block's output); "after" is its output (for ``none`` both are the last block's output). The
visual attention is its neighbour's: the encoder block before it, at ``start`` the one after.

Where the task knows which tokens are informative (digits: patches with ink), each map
becomes two numbers, averaged over the probe batch:

- the *concentration* (``conc_<map>``): the share of the map's mass on informative tokens;
- the paper's *best-threshold IoU* (``miou_<map>``): per image the map is min-max normalised,
  thresholded (``>= t``) at every one of its values, and the IoU of each thresholded set with
  the informative-token mask taken; the best is the image's score, the mean over images the
  metric. Images with no informative token are left out (and the metric with them when none
  has one); tasks without informative tokens log neither number.

Where this departs from the paper: the masks are the task's informative tokens at token
resolution (digits: 2x2 patches holding ink; point clouds: object patches; ...), not
ImageNet-S-50 pixel masks, and the probe batch is a trial's first 8 validation samples, not
the ImageNet-S validation set; the best threshold is exact (every distinct value of the map),
which no fixed grid can beat; with several LM layers the attention is the last one's; for
tasks with no class token (``prefix_tokens=0``) "class token" means the first token.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from encoders.lm.auxiliary import observing
from encoders.lm.frozen_block import FrozenLMBlock
from encoders.visual.placement import inserted_index
from experiments.batches import Batch, to_device


def token_activation(tokens: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, D) -> (B, T): L2 norm of each token's features, centred over the tokens (over
    the ``real`` ones, (B, T) bool, when the sequence is padded)."""
    tokens = tokens.float()
    return (tokens - _token_mean(tokens, real)).norm(dim=-1)


def _token_mean(values: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
    """(B, T, D) -> (B, 1, D): the mean over the tokens (the ``real`` ones, when given)."""
    if real is None:
        return values.mean(dim=1, keepdim=True)
    w = real.to(values.dtype)[..., None]  # (B, T, 1)
    return (values * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1)


def token_frequency(tokens: torch.Tensor) -> torch.Tensor:
    """(B, T, D) -> (B, T): L2 norm of the angle of the FFT of each token's features
    (uncentred; the paper's measure is :func:`token_frequency_centred`)."""
    return torch.fft.fft(tokens.float(), dim=-1).angle().norm(dim=-1)


def token_frequency_centred(tokens: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, D) -> (B, T): the paper's frequency: the phase angle of the FFT of each token's
    features (along D), minus the sample's mean phase over its tokens (its ``real`` ones,
    (B, T) bool, when padded), L2 norm over D. Phases are not re-wrapped after centring.
    The DC bin (and for even D the Nyquist bin) of a real signal is real: its imaginary
    rounding noise is dropped, so its phase is exactly 0 or pi, not +-pi by the noise's sign."""
    spectrum = torch.fft.fft(tokens.float(), dim=-1)
    d = tokens.shape[-1]
    imag = spectrum.imag.clone()
    imag[..., [0, d // 2] if d % 2 == 0 else [0]] = 0.0
    phase = torch.atan2(imag, spectrum.real)  # (B, T, D)
    return (phase - _token_mean(phase, real)).norm(dim=-1)


def concentration(values: torch.Tensor, informative: torch.Tensor) -> float:
    """Share of a non-negative (B, T) map's mass on the informative tokens, batch-averaged.

    A uniform map scores the informative tokens' share of the count; 1.0 means all of the
    mass is on informative tokens."""
    values = values.float().clamp_min(0)
    mask = informative.to(values.dtype)
    share = (values * mask).sum(-1) / values.sum(-1).clamp_min(1e-12)
    return float(share.mean())


def minmax_normalise(values: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) -> (B, T) in [0, 1] per row, min and max over the ``real`` tokens (padding is
    set to 0); a constant row becomes all zeros."""
    values = values.float()
    real = torch.ones_like(values, dtype=torch.bool) if real is None else real.bool()
    lo = values.masked_fill(~real, float("inf")).amin(-1, keepdim=True)
    hi = values.masked_fill(~real, float("-inf")).amax(-1, keepdim=True)
    out = (values - lo) / (hi - lo).clamp_min(1e-12)
    return out.masked_fill(~real, 0.0).clamp(0, 1)


def best_threshold_iou(values: torch.Tensor, informative: torch.Tensor,
                       real: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) map and mask -> (B,) the best IoU, over thresholds ``t`` at each of the
    min-max normalised map's values, of ``{map >= t}`` with the mask; padding (not ``real``)
    is never predicted nor informative. NaN for an image with no informative token."""
    real = torch.ones_like(values, dtype=torch.bool) if real is None else real.bool()
    mask = (informative.bool() & real).float()
    v = minmax_normalise(values, real).masked_fill(~real, float("-inf"))
    v, order = v.sort(dim=-1, descending=True)
    hits = mask.gather(-1, order).cumsum(-1)  # informative tokens among the top k
    k = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=hits.dtype)
    total = mask.sum(-1, keepdim=True)
    iou = hits / (k + total - hits).clamp_min(1)
    # a threshold can only cut between distinct values, and only above padding
    nxt = torch.cat([v[:, 1:], v.new_full((v.shape[0], 1), float("-inf"))], dim=-1)
    cut = (v > nxt) & torch.isfinite(v)
    best = iou.masked_fill(~cut, -1.0).amax(-1)
    return best.masked_fill(total[:, 0] == 0, float("nan"))


def mean_iou(values: torch.Tensor, informative: torch.Tensor,
             real: torch.Tensor | None = None) -> float | None:
    """The best-threshold IoU averaged over the images that have an informative token
    (None when none has)."""
    ious = best_threshold_iou(values, informative, real)
    ious = ious[~ious.isnan()]
    return float(ious.mean()) if len(ious) else None


@dataclass
class ProbeResult:
    """Per-token maps over the patches (B, n_patches), their concentration scores and their
    best-threshold mIoU (maps whose images have no informative token have none)."""

    maps: dict[str, torch.Tensor]
    scores: dict[str, float]
    ious: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        return {**{f"conc_{k}": v for k, v in self.scores.items()},
                **{f"miou_{k}": v for k, v in self.ious.items()}}

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


def around_block(vit: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(the encoder block next to the inserted module, the inserted module): the module
    ``insert_after_last_block`` marked (the LM block, or a control's MLP or extra-block
    slot), wherever ``--positions`` put it (``encoders.visual.placement``); its neighbour
    is the encoder block before it, or at ``start`` the one after it. A model built
    otherwise is read as before positions existed: an inserted module is the last one in
    ``blocks`` that is an LM block or lacks an ``attn``. Without an inserted module (the
    ``none`` control) both are the last encoder block."""
    blocks = list(vit.blocks)
    index = inserted_index(blocks)
    if index is None and (isinstance(blocks[-1], FrozenLMBlock)
                          or not hasattr(blocks[-1], "attn")):
        index = len(blocks) - 1
    if index is None:
        return blocks[-1], blocks[-1]
    return blocks[index - 1] if index > 0 else blocks[index + 1], blocks[index]


def hook_around(vit: nn.Module, seen: dict[str, torch.Tensor]) -> list:
    """Hooks that store the tokens entering the inserted module as ``seen["before"]`` and
    those leaving it as ``seen["after"]`` (without one: the last block's output, both);
    the caller removes them."""
    neighbour, module = around_block(vit)
    if neighbour is not module:  # an auxiliary branch: its block (run while ``observing``)
        module = getattr(module, "side", module)
    after = module.register_forward_hook(lambda m, a, out: seen.__setitem__("after", out))
    if neighbour is module:
        return [after, module.register_forward_hook(
            lambda m, a, out: seen.__setitem__("before", out))]
    return [after, module.register_forward_pre_hook(
        lambda m, args: seen.__setitem__("before", args[0]))]


def _lm_attention_module(module: nn.Module) -> nn.Module | None:
    """The attention of the LM block's last layer (a transformers attention module: it has
    a ``config`` and returns ``(output, weights)``), or None without LM layers."""
    if not isinstance(module, FrozenLMBlock):
        return None
    found = [m for m in module.layers.modules()
             if hasattr(m, "config") and type(m).__name__.endswith("Attention")]
    return found[-1] if found else None


@contextmanager
def lm_block_attention(module: nn.Module, seen: dict[str, torch.Tensor]) -> Iterator[bool]:
    """While open, a forward through ``module`` (a FrozenLMBlock) stores its last layer's
    attention probabilities (B, heads, T, T) in ``seen["lm_attn"]``. SDPA computes no
    weights, so the layers' (shared) config is switched to transformers' eager attention
    for the duration and switched back after; the block's own code is untouched. Yields
    whether there is an LM attention to read."""
    attn = _lm_attention_module(module)
    if attn is None:
        yield False
        return
    config, impl = attn.config, attn.config._attn_implementation

    def keep(m, args, out):
        if isinstance(out, tuple) and len(out) > 1 and isinstance(out[1], torch.Tensor):
            seen["lm_attn"] = out[1]

    hook = attn.register_forward_hook(keep)
    config._attn_implementation = "eager"
    try:
        yield True
    finally:
        config._attn_implementation = impl
        hook.remove()


@torch.no_grad()
def probe(vit: nn.Module, inputs, informative: torch.Tensor,
          prefix_tokens: int = 1, valid: torch.Tensor | None = None) -> ProbeResult:
    """Run ``inputs`` (a tensor, or a tuple passed as ``vit(*inputs)``) through an encoder
    with timm blocks in ``.blocks`` and measure around the block.

    ``informative``: (B, n_tokens) bool; ``prefix_tokens``: class/register tokens ahead of
    the others (excluded from the maps); ``valid``: (B, n_tokens) bool, False on padding,
    whose map values are zeroed. The first-token attention is read from timm's own attention
    (its softmax output, seen through the unfused path's ``attn_drop``) and from the LM
    block's last layer (:func:`lm_block_attention`)."""
    last, after_module = around_block(vit)
    seen: dict[str, torch.Tensor] = {}
    hooks = [*hook_around(vit, seen), last.attn.attn_drop.register_forward_hook(
        lambda m, a, out: seen.__setitem__("attn", out))]
    fused, last.attn.fused_attn = last.attn.fused_attn, False
    was_training = vit.training
    vit.eval()
    try:
        with lm_block_attention(getattr(after_module, "side", after_module), seen), \
                observing(vit):
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
        "freq_centred_before": token_frequency_centred(seen["before"], real)[:, p:],
        "freq_centred_after": token_frequency_centred(seen["after"], real)[:, p:],
        "cls_attn": seen["attn"][:, :, 0, p:].float().mean(dim=1),  # heads averaged
    }
    if "lm_attn" in seen:
        maps["lm_cls_attn"] = seen["lm_attn"][:, :, 0, p:].float().mean(dim=1)
    if valid is not None:
        maps = {name: m * valid.to(m.dtype) for name, m in maps.items()}
    scores = {name: concentration(m, informative) for name, m in maps.items()}
    ious = {name: mean_iou(m, informative, valid) for name, m in maps.items()}
    return ProbeResult(maps, scores, {k: v for k, v in ious.items() if v is not None})


def probe_batch(dataset: Dataset, size: int) -> Batch:
    """The first ``size`` validation inputs, collated (a tensor or a tuple of tensors)."""
    return default_collate([dataset[i][0] for i in range(min(size, len(dataset)))])


def spread_batch(dataset: Dataset, size: int) -> tuple[Batch, Batch]:
    """(inputs, targets) of ``size`` validation samples evenly spaced over the set: a
    validation set in class order gives its first samples one class, and gradients of one
    class agree for that reason alone (Bai et al.'s coherence is across samples)."""
    n = len(dataset)
    picks = sorted({round(i * (n - 1) / max(1, size - 1)) for i in range(min(size, n))})
    inputs, target = default_collate([dataset[i] for i in picks])
    return (tuple(inputs) if isinstance(inputs, list) else inputs), target


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
