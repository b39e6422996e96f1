"""The documentation: the site builds strictly, its CLI page is the parsers', the README stays short.

``mkdocs build --strict`` fails on a broken link, a missing anchor or a page left out of the
nav; building it here is how CI runs it (the README's test command).
"""

from __future__ import annotations

import argparse
import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli_reference import parser_section, parsers, reference

ROOT = Path(__file__).resolve().parents[1]


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def test_reference_lists_every_flag_of_both_programs():
    text = reference()
    programs = parsers()
    assert [p.prog for p in programs] == ["lmblocks-sweep", "lmblocks-report"]
    for parser in programs:
        missing = {o for o in _options(parser) if f"`{o}`" not in text}
        assert not missing, f"{parser.prog}: {sorted(missing)}"
    # the valid values come from the registries, as --help prints them
    assert "opt" in text and "digits-convstem" in text and "random-trained" in text


def test_a_new_flag_is_on_the_page_with_its_group_and_help():
    parser = parsers()[0]
    group = parser.add_argument_group("test group", "flags only this test adds")
    group.add_argument("--brand-new", nargs="+", metavar="X", help="does a thing, %(default)s")
    text = parser_section(parser)
    assert "### Test group" in text and "flags only this test adds" in text
    assert "`--brand-new` `X [X ...]`\n:   does a thing, None" in text
    assert "[--brand-new X [X ...]]" in text  # the usage block is argparse's own


def test_help_text_is_escaped_for_the_page():
    parser = argparse.ArgumentParser(prog="p")
    parser.add_argument("--n", help="a number >= 0 & <5")
    assert "a number &gt;= 0 &amp; &lt;5" in parser_section(parser)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(out)], check=False, cwd=ROOT, capture_output=True, text=True,
                          timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_site_builds_strictly_with_every_page(site: Path):
    for page in ("getting-started", "concepts", "sweeps", "paper", "bring-your-own",
                 "weights", "cluster", "report", "benchmarks", "cli"):
        assert (site / page / "index.html").is_file(), page
    assert (site / "index.html").is_file()


def test_built_cli_page_has_every_flag(site: Path):
    page = html.unescape(re.sub(r"<[^>]+>", "", (site / "cli" / "index.html").read_text()))
    for parser in parsers():
        missing = {o for o in _options(parser) if o not in page}
        assert not missing, f"{parser.prog}: {sorted(missing)}"
    assert "a number >= 0" in page  # help text survives the Markdown


def test_built_site_asks_nothing_of_the_network(site: Path):
    """Offline: no web fonts or CDN scripts (the theme's fonts are turned off)."""
    index = (site / "index.html").read_text()
    assert "fonts.googleapis.com" not in index and "fonts.gstatic.com" not in index
    assert not re.search(r'<script[^>]+src="https?://', index)


def test_readme_is_short_with_the_two_setup_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    assert "pip install -e . && python sweep.py" in readme
    assert 'pip install -e ".[dev]" && python -m pytest' in readme
    assert "mkdocs serve" in readme
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).is_file(), link
