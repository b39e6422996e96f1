"""The optimizer's parameter groups, as the paper's recipes (DeiT's, the official code's) make
them: each group's weight decay and learning-rate scale.

Three roles, each split by timm's ``param_groups_weight_decay`` into a decayed and a
non-decayed part:
- ``adapter``: the inserted block's two linear maps (``FrozenLMBlock.proj_in``/``proj_out``),
  at ``lr x adapter_lr_scale``, decayed unless ``adapter_decay`` is off (the official
  point-cloud code: 0.5x, no decay);
- ``lm``: the LM layers when a control trains them (``finetuned``, ``random-trained``), at
  ``lr x lm_lr_scale``;
- ``rest``: everything else that trains (the visual encoder, its head), whose non-decayed
  part may take ``norm_lr_scale`` (the official point-cloud code: 0.1x).
No weight decay, in every role, on 1-D parameters (norms' gains), biases, position
embeddings and class tokens (``NO_DECAY_PATTERNS``, plus whatever a submodule's timm-style
``no_weight_decay()`` names). Frozen parameters are in no group. Each group carries its
``lr_scale`` (the schedule multiplies it in, as timm's schedulers do) and a ``name``.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from encoders.lm.frozen_block import FrozenLMBlock
from experiments.trial import Hyperparameters

# fnmatch patterns over full parameter names: the Parameter itself, not a module named so
# (a point encoder's ``pos_embed`` MLP is ``pos_embed.0.weight``: decayed, as in Point-BERT)
NO_DECAY_PATTERNS = ("pos_embed", "*.pos_embed", "cls_token", "*.cls_token", "cls_pos",
                     "*.cls_pos", "*.pos")
ROLES = ("adapter", "lm", "rest")


class _Named:
    """What ``param_groups_weight_decay`` reads of a model: ``named_parameters()``."""

    def __init__(self, named: list[tuple[str, nn.Parameter]]) -> None:
        self.named = named

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return iter(self.named)


def declared_no_decay(model: nn.Module) -> set[str]:
    """Full names a submodule's ``no_weight_decay()`` lists (timm's ViT: pos_embed,
    cls_token, dist_token), so a wrapped timm model keeps its own exclusions."""
    out: set[str] = set()
    for prefix, module in model.named_modules():
        method = getattr(module, "no_weight_decay", None)
        if callable(method):
            out |= {f"{prefix}.{n}" if prefix else n for n in method()}
    return out


def role_of(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> ``adapter`` or ``lm`` for the inserted blocks' parameters."""
    roles: dict[int, str] = {}
    for module in model.modules():
        if isinstance(module, FrozenLMBlock):
            for proj in (module.proj_in, module.proj_out):
                roles.update({id(p): "adapter" for p in proj.parameters()})
            roles.update({id(p): "lm" for p in module.layers.parameters()})
    return roles


def param_groups(model: nn.Module, hp: Hyperparameters) -> list[dict]:
    """AdamW parameter groups of ``model``'s trainable parameters (see the module's doc)."""
    from timm.optim import param_groups_weight_decay

    roles = role_of(model)
    patterns = (*NO_DECAY_PATTERNS, *sorted(declared_no_decay(model)))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    scale = {"adapter": hp.adapter_lr_scale, "lm": hp.lm_lr_scale, "rest": 1.0}
    groups: list[dict] = []
    for role in ROLES:
        mine = [(n, p) for n, p in named if roles.get(id(p), "rest") == role]
        if not mine:
            continue
        # a weight decay of 1 only to learn timm's split (with 0 it puts all in one group)
        for g in param_groups_weight_decay(_Named(mine), weight_decay=1.0,
                                           no_weight_decay_list=patterns):
            excluded = g["weight_decay"] == 0
            decays = not excluded and (role != "adapter" or hp.adapter_decay)
            lr_scale = scale[role] * (hp.norm_lr_scale if excluded and role == "rest" else 1.0)
            groups.append({"params": g["params"], "name": f"{role}/{'decay' if decays else 'no_decay'}",
                           "weight_decay": hp.weight_decay if decays else 0.0,
                           "lr_scale": lr_scale, "lr": hp.lr * hp.size_lr_scale * lr_scale})
    return groups


def group_names(model: nn.Module, groups: list[dict]) -> dict[str, str]:
    """Parameter name -> its group's name (tests and the record of a run's groups)."""
    where = {id(p): g["name"] for g in groups for p in g["params"]}
    return {n: where[id(p)] for n, p in model.named_parameters() if id(p) in where}
