"""Importing this package registers every shipped LM family (one module each)."""

from encoders.families import minilm, opt  # noqa: F401
