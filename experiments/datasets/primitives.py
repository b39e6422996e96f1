"""Surfaces of primitive solids, sampled as points: what the embedded 3D datasets are made of
(``point_shapes`` classifies them, ``rooms3d`` stands them in a room)."""

from __future__ import annotations

import numpy as np

PRIMITIVES = ("sphere", "cube", "cylinder", "cone", "torus", "pyramid")


def surface(shape: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """n points on the unit-sized surface of a primitive."""
    u, v = rng.random(n), rng.random(n)
    if shape == "sphere":
        z = 2 * u - 1
        r = np.sqrt(1 - z**2)
        return np.stack([r * np.cos(2 * np.pi * v), r * np.sin(2 * np.pi * v), z], 1)
    if shape == "cube":
        p = rng.uniform(-1, 1, (n, 3))
        face = rng.integers(0, 3, n)
        p[np.arange(n), face] = rng.choice([-1.0, 1.0], n)
        return p * 0.8
    if shape == "cylinder":
        t = 2 * np.pi * u
        return np.stack([0.7 * np.cos(t), 0.7 * np.sin(t), 2 * v - 1], 1)
    if shape == "cone":
        h = np.sqrt(v)  # uniform over the lateral surface
        t = 2 * np.pi * u
        return np.stack([0.8 * h * np.cos(t), 0.8 * h * np.sin(t), 1 - 2 * h], 1)
    if shape == "torus":
        a, b = 2 * np.pi * u, 2 * np.pi * v
        return np.stack([(0.7 + 0.3 * np.cos(b)) * np.cos(a),
                         (0.7 + 0.3 * np.cos(b)) * np.sin(a), 0.3 * np.sin(b)], 1)
    if shape == "pyramid":  # four triangular faces over a square base, apex up
        s, t = rng.random(n), rng.random(n)
        flip = s + t > 1
        s[flip], t[flip] = 1 - s[flip], 1 - t[flip]
        corners = np.array([[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1]], float) * 0.8
        apex = np.array([0, 0, 1.0])
        face = rng.integers(0, 4, n)
        a, b = corners[face], corners[(face + 1) % 4]
        return a + s[:, None] * (b - a) + t[:, None] * (apex - a)
    raise ValueError(f"unknown shape {shape!r}; valid: {', '.join(PRIMITIVES)}")


def rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3D rotation matrix (QR of a Gaussian matrix, signs fixed, det +1)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q
