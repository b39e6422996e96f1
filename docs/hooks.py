"""MkDocs hooks (``mkdocs.yml``'s ``hooks:``): the CLI page is written from the parsers.

``docs/cli.md`` holds the marker below; at build time it becomes
``orchestrator.cli_reference.reference()``, so the page lists exactly the flags
``lmblocks-sweep --help`` and ``lmblocks-report --help`` accept. The checkout's root goes on
``sys.path`` first: ``mkdocs build`` works from a clone that was never installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

MARKER = "<!-- cli-reference -->"


def on_config(config, **kwargs):
    root = str(Path(config.config_file_path).resolve().parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    return config


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    if MARKER not in markdown:
        return markdown
    from orchestrator.cli_reference import reference

    return markdown.replace(MARKER, reference())
