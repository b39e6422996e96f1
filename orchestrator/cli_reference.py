"""The command-line reference page, written from the argparse parsers themselves.

The documentation site's CLI page (``docs/cli.md``) holds only a marker; ``docs/hooks.py``
replaces it at build time with :func:`reference`, so adding or changing a flag updates the
page: there is one source of truth, the parser ``lmblocks-sweep --help`` prints. The two
argparse-to-Markdown packages on the registry (``mkdocs-argparse``, ``argdown``) are 0.0.1
releases; this is the page's layout on argparse's own formatter (usage) and its actions.

Argparse exposes its argument groups only as ``_action_groups`` (what ``sphinx-argparse``
reads too); nothing else here reaches into it.
"""

from __future__ import annotations

import argparse
import functools
import html

WIDTH = 88  # usage lines wrap here (the page's code width), whatever the terminal


def _metavar(action: argparse.Action) -> str:
    if action.nargs == 0:  # store_true, version, help
        return ""
    name = action.metavar or (action.dest if not action.option_strings else action.dest.upper())
    if isinstance(name, tuple):
        return " ".join(name)
    if action.nargs is None or action.nargs == 1:
        return name
    if action.nargs == "?":
        return f"[{name}]"
    if action.nargs == "+":
        return f"{name} [{name} ...]"
    if action.nargs == "*":
        return f"[{name} ...]"
    if isinstance(action.nargs, int):
        return " ".join([name] * action.nargs)
    return name


def _help(action: argparse.Action, prog: str) -> str:
    """The help text as ``--help`` prints it (``%(default)s`` and the like filled in)."""
    text = action.help or ""
    if "%" in text:
        params = dict(vars(action), prog=prog)
        text = text % {k: getattr(v, "__name__", v) for k, v in params.items()}
    return " ".join(text.split())


def _term(action: argparse.Action) -> str:
    names = action.option_strings or [action.dest]
    metavar = _metavar(action) if action.option_strings else ""
    shown = ", ".join(f"`{name}`" for name in names)
    return f"{shown} `{metavar}`" if metavar else shown


def _anchor(parser: argparse.ArgumentParser) -> str:
    return parser.prog.replace(" ", "-")


def parser_section(parser: argparse.ArgumentParser, heading: str = "##") -> str:
    """One program: its usage, description, each argument group as a definition list."""
    parser.formatter_class = functools.partial(argparse.HelpFormatter, width=WIDTH)
    lines = [f"{heading} `{parser.prog}` {{#{_anchor(parser)}}}", ""]
    if parser.description:
        lines += [parser.description, ""]
    lines += ["```text", parser.format_usage().strip(), "```", ""]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.help != argparse.SUPPRESS]
        if not actions:
            continue
        title = group.title or "arguments"
        lines += [f"{heading}# {title[0].upper()}{title[1:]}", ""]
        if group.description:
            lines += [group.description, ""]
        for action in actions:
            # Help texts hold <, > and & ("a number >= 0"): escaped so the page keeps them.
            lines += [_term(action), f":   {html.escape(_help(action, parser.prog), quote=False)}",
                      ""]
    if parser.epilog:
        lines += [parser.epilog, ""]
    return "\n".join(lines)


def parsers() -> list[argparse.ArgumentParser]:
    """lmblocks' programs, in the page's order: the sweep, then the report."""
    from orchestrator.options import build_parser as sweep_parser
    from results.report import build_parser as report_parser

    return [sweep_parser(), report_parser()]


def reference(programs: list[argparse.ArgumentParser] | None = None) -> str:
    """The whole reference: one section per program (every flag, every group)."""
    return "\n".join(parser_section(p) for p in (programs or parsers()))
