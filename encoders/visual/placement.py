"""Where in the encoder the inserted module runs: the ``--positions`` axis.

Every encoder keeps its transformer blocks in one list, ``blocks`` (an ``nn.Sequential`` or
``nn.ModuleList``), and every task builds its model with the inserted module appended to it
(``encoders.visual.vit.insert_after_last_block``). A position moves that module to another
place in the same list, so the encoder's own forward (timm's ``Sequential`` call, or
``encoders.visual.masked_blocks.run_blocks`` with its padding masks) runs it there: one
mechanism for every task, plugins' included. An encoder with ``n`` blocks has ``n + 1``
places, numbered by how many of its blocks run before the inserted module (0..n).

The positions, as the paper's Table D names three of them (``../shared/PAPER.md``: "at the
end 75.84; middle 75.55; start 72.66"). The text we hold does not say which block "middle"
follows, so lmblocks defines:
- ``end``: after the last block (place n): the paper's method, and every cell's position
  before this axis existed;
- ``start``: before the first block, right after the token embedding and the encoder's own
  positions (place 0);
- ``middle``: after block ``n // 2 - 1`` (place n // 2): half of the blocks before, half
  after (ViT-S's 12: after its 6th block);
- ``i`` (0-based): after encoder block i; ``-k``: after block n - k (``-1`` is ``end``);
- ``all``: every place: ``start``, after each block, ``end``.
A place is named once, whatever the words that reach it: the name a cell keys by is ``end``
for place n, ``start`` for place 0, ``middle`` when asked for as such, else the index of the
block it follows. For multimodal encoders the list is the joint one (``blocks``), not the
image-only ``visual_blocks`` before it.

The module is found by the mark ``insert_after_last_block`` leaves on it (``INSERTED``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

END, START, MIDDLE, ALL = "end", "start", "middle", "all"
POSITION_WORDS = (END, MIDDLE, START, ALL)
VALID_POSITIONS = "end, middle, start, an index i (after encoder block i, 0-based), -k (k from the end), all"
INSERTED = "lmblocks_inserted"  # attribute set on the inserted module


class PositionError(ValueError):
    """A position that names no place; the message names it and the valid choices."""


def check_position_words(values: tuple[str, ...] | list[str]) -> None:
    """The syntax alone (no encoder needed): the plan's first check, before any model."""
    if not values:
        raise PositionError(f"empty --positions; valid: {VALID_POSITIONS}")
    for v in values:
        if v not in POSITION_WORDS and not _is_index(v):
            raise PositionError(f"unknown position {v!r}; valid: {VALID_POSITIONS}")


def _is_index(text: str) -> bool:
    body = text.removeprefix("-")
    return body.isdigit() and text != "-0"


def place_of(position: str, depth: int) -> int:
    """The place (0..depth: encoder blocks before the module) a position names."""
    if depth < 1:
        raise PositionError(f"position {position!r}: the encoder has no blocks to place the "
                            "module between; valid: end")
    if position == END:
        return depth
    if position == START:
        return 0
    if position == MIDDLE:
        return depth // 2
    if not _is_index(position):
        raise PositionError(f"unknown position {position!r}; valid: {VALID_POSITIONS}")
    i = int(position)
    if not -depth <= i < depth:
        raise PositionError(f"position {position!r} is outside the encoder's {depth} blocks; "
                            f"valid: 0..{depth - 1}, -1..-{depth}, end, middle, start")
    return (i % depth) + 1


def name_of(position: str, depth: int) -> str:
    """The one name a place keys by (see the module's docstring)."""
    place = place_of(position, depth)
    if place == depth:
        return END
    if place == 0:
        return START
    return MIDDLE if position == MIDDLE else str(place - 1)


def resolve_positions(values: tuple[str, ...] | list[str], depth: int | None,
                      where: str = "the encoder") -> list[str]:
    """The named places ``values`` ask for in an encoder of ``depth`` blocks (None: it has
    no block list, only ``end`` is possible), in order; PositionError on a place asked for
    twice (``end`` and ``-1``) or one that does not exist."""
    check_position_words(values)
    if depth is None:
        other = [v for v in values if v != END]
        if other:
            raise PositionError(f"position {other[0]!r}: {where} keeps no list of blocks to "
                                "place the module between; valid: end")
        return [END]
    asked = [w for v in values for w in (_every_place(depth) if v == ALL else [v])]
    words: dict[int, str] = {}  # place -> the word that first asked for it
    names: dict[int, str] = {}
    for v in asked:
        place = place_of(v, depth)
        if place in words and words[place] != v:
            raise PositionError(f"positions {words[place]!r} and {v!r} are the same place in "
                                f"{where} ({place} of its {depth} blocks before it); valid: "
                                "each place once")
        words[place], names[place] = v, name_of(v, depth)
    return list(names.values())


def _every_place(depth: int) -> list[str]:
    return [START, *(str(i) for i in range(depth - 1)), END]


def mark_inserted(module: nn.Module) -> None:
    setattr(module, INSERTED, True)


def inserted_index(blocks) -> int | None:
    """The index of the inserted module in ``blocks`` (None: none there)."""
    found = [i for i, b in enumerate(blocks) if getattr(b, INSERTED, False)]
    return found[-1] if found else None


def place_block(model: nn.Module, position: str, task: str = "the task") -> int | None:
    """Move the inserted module within ``model.blocks`` to ``position``; returns its place
    (None when the model has no inserted module: the ``none`` control, for which positions
    do not exist). ``end`` leaves every model as built, whatever its shape."""
    blocks = getattr(model, "blocks", None)
    index = inserted_index(blocks) if blocks is not None else None
    if index is None:
        if position != END and blocks is None:
            raise PositionError(f"position {position!r}: {task}'s encoder keeps no list of "
                                "blocks to place the module between; valid: end")
        return None
    depth = len(blocks) - 1
    place = place_of(position, depth)
    if place != index:
        module = blocks[index]
        del blocks[index]
        blocks.insert(place, module)
    return place
