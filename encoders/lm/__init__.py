"""The LM block library: the family registry (``families/`` registers them), their weight formats,
checkpoint lookup, layer-only loading, positions removed, the frozen block, and the controls
table with its builders."""
