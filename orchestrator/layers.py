"""Layer selections: which layer (or span of layers) each trial inserts.

Syntax, resolved per model size (``n`` layers):
- ``last`` -> the last layer; ``all`` -> every layer, one trial each;
- ``5`` / ``-1`` -> that layer (negative counts from the end);
- ``2..5`` -> layers 2, 3, 4, 5, one trial each (inclusive range; negatives allowed);
- ``3:5`` -> ONE trial inserting the span of consecutive layers 3 and 4 (Python slice).
"""

from __future__ import annotations

import re

from experiments.trial import Selection

_INT = r"-?\d+"
_RANGE = re.compile(rf"^({_INT})\.\.({_INT})$")
_SPAN = re.compile(rf"^({_INT}):({_INT})$")


class LayerSpecError(ValueError):
    pass


def _index(i: int, n: int, token: str, where: str) -> int:
    if not -n <= i < n:
        raise LayerSpecError(
            f"layer {token!r} out of range for {where} ({n} layers: valid {-n}..{n - 1})"
        )
    return i % n


def resolve_layers(tokens: list[str | int], n: int, where: str) -> list[Selection]:
    """Turn layer tokens into the ordered, de-duplicated selections for an ``n``-layer model."""
    out: list[Selection] = []
    for raw in tokens:
        token = str(raw).strip()
        if token == "last":
            sels = [(n - 1,)]
        elif token == "all":
            sels = [(i,) for i in range(n)]
        elif re.fullmatch(_INT, token):
            sels = [(_index(int(token), n, token, where),)]
        elif m := _RANGE.match(token):
            a, b = (_index(int(v), n, token, where) for v in m.groups())
            if a > b:
                raise LayerSpecError(f"empty layer range {token!r} for {where}")
            sels = [(i,) for i in range(a, b + 1)]
        elif m := _SPAN.match(token):
            a, b = (int(v) for v in m.groups())
            a = _index(a, n, token, where)
            b = n if b == n else _index(b, n, token, where)
            if b <= a:
                raise LayerSpecError(f"empty layer span {token!r} for {where}")
            sels = [tuple(range(a, b))]
        else:
            raise LayerSpecError(
                f"bad layer {token!r}; valid: last, all, an index (5, -1), "
                "a range of single layers (2..5) or a span inserted as one block (3:5)"
            )
        out.extend(s for s in sels if s not in out)
    return out
