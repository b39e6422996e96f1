"""scikit-learn's digits written out as an ImageFolder tree of PNG files: real images to try
the ``images`` task on (``--tasks images --data-dir DIR --encoder ...``) with no dataset to
download, and what the tests sweep.

    python -m experiments.datasets.digits_folder DIR [--per-class N] [--size PX]

``DIR/train/<digit>/*.png`` and ``DIR/val/<digit>/*.png``: the digits task's own seeded
80/20 split, each 8x8 image scaled up (nearest neighbour) to ``--size`` pixels, grey.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments.datasets.digits import build_digits


def save_digits_folder(root: str | Path, per_class: int | None = None, size: int = 32,
                       classes: int = 10) -> Path:
    """Write the tree; ``per_class``: at most this many training images per class (a fifth
    as many for validation); ``classes``: the first this many digits."""
    from PIL import Image

    root = Path(root)
    train, val = build_digits()
    (x_tr, y_tr), (x_va, y_va) = train.tensors, val.tensors
    for split, xs, ys, cap in (("train", x_tr, y_tr, per_class),
                               ("val", x_va, y_va, None if per_class is None
                                else max(1, per_class // 4))):
        counts: dict[int, int] = {}
        for i, (x, y) in enumerate(zip(xs, ys.tolist(), strict=True)):
            if y >= classes or (cap is not None and counts.get(y, 0) >= cap):
                continue
            counts[y] = counts.get(y, 0) + 1
            folder = root / split / str(y)
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (x[0] * 255).clamp(0, 255).byte().numpy()
            Image.fromarray(pixels, mode="L").resize((size, size), Image.NEAREST).save(
                folder / f"{i:04d}.png")
    return root


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir")
    p.add_argument("--per-class", type=int, help="training images per class (default: all)")
    p.add_argument("--size", type=int, default=32, help="pixels (default 32)")
    p.add_argument("--classes", type=int, default=10, help="the first N digits (default 10)")
    args = p.parse_args(argv)
    root = save_digits_folder(args.dir, args.per_class, args.size, args.classes)
    n = sum(1 for _ in root.rglob("*.png"))
    print(f"{n} PNG images in {root}/train and {root}/val")


if __name__ == "__main__":
    main()
