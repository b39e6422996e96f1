"""The lowest floor: what a trial's model is made of. Three packages, imports one way:
``weights/`` (checkpoint bytes) <- ``lm/`` (LM families, the frozen block, the controls)
<- ``visual/`` (the visual backbones the block is appended to)."""
