"""The block's option names, as plain data: the plan validates a sweep against them without
importing torch (``frozen_block.py`` builds what they name)."""

ADAPTER_INITS = ("default", "xavier", "orthogonal")  # how the two linear maps start
FINAL_NORMS = ("none", "unit-rms", "lm")  # what follows the LM layers (see frozen_block.py)
