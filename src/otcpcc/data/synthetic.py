"""A hierarchical Gaussian mixture whose fine classes are multi-modal and whose class means mislead.

Geometry (latent space R^q, q = ``latent_dim``). The tree has ``len(branching)`` levels below the
root; ``branching = (b_1, ..., b_L)`` is read top-down (b_1 coarse classes, each with b_2 children,
...), so there are K = b_1 * ... * b_L fine classes. Every non-root node a, at depth l(a), owns a
random plane (orthonormal u_a, v_a) and a random phase phi_a. With M = ``modes`` and radii
r_l = ``separation`` * ``decay`` ** (l - 1), mode k = 0..M-1 of fine class f is

    mu_{f,k} = sum over the ancestors a of f (f included, root excluded) of
               r_{l(a)} * (cos(2 pi k / M + phi_a) u_a + sin(2 pi k / M + phi_a) v_a)

and a sample of class f is  z = mu_{f,k} + delta_f + noise * N(0, I_q),  with k cycling through
the modes (equal counts) and delta_f ~ N(0, mean_spread^2 / q * I_q) a class offset.

* For M >= 2 each ring term sums to zero over k, so the class mean is exactly delta_f: a random
  point unrelated to the tree, so the mean of one class can sit next to the mean of a class from
  another coarse group, and l2-of-means distances carry no hierarchy.
* The modes of classes f and g agree (for equal k) in every term above their lowest common
  ancestor and differ in every term below it, so the optimal-transport distance between the two
  class distributions is about sqrt(2 * sum_{l > depth(lca)} r_l^2): it grows with tree distance.
* M = 1 is the control case: one mode per class at a hierarchical position, where class means work.

Input space. The latent points are standardised by their train RMS and pushed through a fixed
random two-layer tanh map x = B tanh(A z / s + c) (A [hidden, q], B [input_dim, hidden]; weights
drawn from the seed), then every input feature is standardised with the train mean and std.

Defaults: branching (4, 5) -> 20 fine classes, 3 modes, 100 train + 50 test samples per class
(2000 + 1000), latent_dim 16, input_dim 32, separation 3, decay 0.8, noise 0.8. Everything is
drawn from ``numpy.random.default_rng(seed)`` streams (never the global RNG): same seed, same
tensors.

Difficulty of the default. The noise (0.8 per latent coordinate) is large against the ring radii
(r_1 = 3, r_2 = 2.4), so the classes overlap: fine classes are genuinely confusable, and a
mistake can land on a sibling (tree distance 2) or on a class of another coarse group (tree
distance 4). On seed 0: 5-nearest-neighbour accuracy on the inputs 0.69, linear discriminant
0.30; the default MLP trained with plain cross-entropy (15 epochs) reaches fine accuracy 0.76
and coarse accuracy 0.89, and 44% of its mistakes fall outside the true coarse group (uniformly
random mistakes would give 15/19 = 79%). ``noise=0.5`` (the earlier default) gives an easy
set: fine 0.95, coarse 0.99, where no method can lower the cost of mistakes much.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np

from ..tree import LabelTree
from .bundle import DataBundle
from .tensors import check_float, check_int, check_seed, reject_unknown, tensor_dataset

MAX_NUMBERS = 10**9  # numbers the synthetic arrays (and the K x K tree distances) may hold


@dataclass(frozen=True)
class SyntheticParams:
    """The options of :func:`load_synthetic` (validated)."""

    branching: tuple[int, ...] = (4, 5)
    modes: int = 3
    latent_dim: int = 16
    input_dim: int = 32
    hidden: int = 64
    train_per_class: int = 100
    test_per_class: int = 50
    separation: float = 3.0
    decay: float = 0.8
    noise: float = 0.8
    mean_spread: float = 1.0

    @classmethod
    def from_options(cls, **options: Any) -> SyntheticParams:
        valid = list(cls.__dataclass_fields__)
        reject_unknown("synthetic", {k: v for k, v in options.items() if k not in valid}, valid)
        merged = {**asdict(cls()), **options}
        branching = merged["branching"]
        if isinstance(branching, (int, np.integer)) or not hasattr(branching, "__len__"):
            raise ValueError(
                f"branching must be a sequence of ints (top-down, e.g. (4, 5)), got {branching!r}"
            )
        branching = tuple(check_int("each branching factor", b) for b in branching)
        if len(branching) < 2:
            raise ValueError(
                f"branching needs at least 2 levels (coarse, fine), got {branching!r}; e.g. (4, 5)"
            )
        if int(np.prod(branching)) < 2:
            raise ValueError(f"branching {branching!r} gives fewer than 2 fine classes")
        params = cls(
            branching=branching,
            modes=check_int("modes", merged["modes"]),
            latent_dim=check_int("latent_dim", merged["latent_dim"], minimum=2),
            input_dim=check_int("input_dim", merged["input_dim"]),
            hidden=check_int("hidden", merged["hidden"]),
            train_per_class=check_int("train_per_class", merged["train_per_class"]),
            test_per_class=check_int("test_per_class", merged["test_per_class"]),
            separation=check_float("separation", merged["separation"], positive=True),
            decay=check_float("decay", merged["decay"], positive=True),
            noise=check_float("noise", merged["noise"]),
            mean_spread=check_float("mean_spread", merged["mean_spread"]),
        )
        params.check_size()
        return params

    def check_size(self) -> None:
        """Refuse options whose arrays would exceed ``MAX_NUMBERS`` numbers (before allocating)."""
        k = self.num_classes
        n = k * (self.train_per_class + self.test_per_class)
        numbers = (n * (self.input_dim + self.latent_dim + self.hidden)
                   + k * self.modes * self.latent_dim + k * k)  # samples, modes, tree distances
        if numbers > MAX_NUMBERS:
            raise ValueError(
                f"synthetic data with branching {list(self.branching)} ({k:,} classes, {n:,} "
                f"samples) would hold {numbers:,} numbers (samples x dims, and K^2 tree "
                f"distances), over the limit of {MAX_NUMBERS:,} (~8 GB); lower branching, "
                "*_per_class or the dimensions"
            )

    @property
    def num_classes(self) -> int:
        return int(np.prod(self.branching))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["branching"] = list(self.branching)
        return d


class SyntheticArrays(NamedTuple):
    """Raw arrays behind :func:`load_synthetic` (numpy; x float32, ids int64).

    ``z_*`` are the latent points [N, latent_dim], ``x_*`` the inputs [N, input_dim], ``y_*`` the
    fine class ids, ``mode_*`` the mode index k of each sample; ``mode_centers`` [K, M, q] holds
    mu_{f,k} and ``class_offsets`` [K, q] holds delta_f.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    mode_train: np.ndarray
    z_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    mode_test: np.ndarray
    z_test: np.ndarray
    mode_centers: np.ndarray
    class_offsets: np.ndarray
    params: SyntheticParams


def ancestor_ids(branching: tuple[int, ...]) -> list[np.ndarray]:
    """For each depth l = 1..L, the id (0..b_1*...*b_l - 1) of every fine class's depth-l ancestor.

    The last entry (depth L) is ``arange(K)``: the fine classes themselves.
    """
    k = int(np.prod(branching))
    fine = np.arange(k, dtype=np.int64)
    return [fine // int(np.prod(branching[l:])) for l in range(1, len(branching) + 1)]


def synthetic_tree(branching: tuple[int, ...] = (4, 5)) -> LabelTree:
    """The label tree of the synthetic data for ``branching`` (top-down).

    Nodes are named by their path: coarse ``c0``, middle levels ``c0.m1`` (``m`` at every middle
    depth), fine ``c0.f1`` / ``c0.m1.f2``. Coarse levels, bottom-up, are named ``coarse`` (two
    levels), ``mid, coarse`` (three), ``mid{L-2}, ..., mid1, coarse`` (more).
    """
    branching = tuple(int(b) for b in branching)
    depth = len(branching)
    anc = ancestor_ids(branching)
    # names per depth: node id at depth l -> name
    names: list[list[str]] = []
    for l in range(depth):
        prefix = "c" if l == 0 else ("f" if l == depth - 1 else "m")
        count = int(np.prod(branching[: l + 1]))
        level_names = []
        for node in range(count):
            local = f"{prefix}{node % branching[l]}"
            level_names.append(local if l == 0 else f"{names[l - 1][node // branching[l]]}.{local}")
        names.append(level_names)
    n_coarse = depth - 1
    if n_coarse == 1:
        level_labels = ["coarse"]
    elif n_coarse == 2:
        level_labels = ["mid", "coarse"]
    else:
        level_labels = [f"mid{d}" for d in range(n_coarse - 1, 0, -1)] + ["coarse"]
    levels = [anc[l] for l in range(depth - 2, -1, -1)]  # bottom-up: depth L-1 ... 1
    node_names = [names[l] for l in range(depth - 2, -1, -1)]
    return LabelTree.from_levels(
        levels, leaf_names=names[-1], level_names=level_labels, node_names=node_names
    )


def _random_plane(rng: np.random.Generator, q: int) -> np.ndarray:
    """Two orthonormal vectors in R^q, as a [2, q] array."""
    basis, _ = np.linalg.qr(rng.standard_normal((q, 2)))
    return basis.T


def synthetic_arrays(seed: int = 0, **options: Any) -> SyntheticArrays:
    """Draw the synthetic data (see the module docstring); options as :func:`load_synthetic`."""
    p = SyntheticParams.from_options(**options)
    seed = check_seed(seed)
    geo_rng, map_rng, train_rng, test_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )
    q, m, k = p.latent_dim, p.modes, p.num_classes
    anc = ancestor_ids(p.branching)

    # geometry: one plane and phase per non-root node, depth by depth
    angles = 2.0 * np.pi * np.arange(m) / m  # [M]
    centers = np.zeros((k, m, q))
    for l, ids in enumerate(anc):
        n_nodes = int(ids.max()) + 1
        planes = np.stack([_random_plane(geo_rng, q) for _ in range(n_nodes)])  # [n, 2, q]
        phases = geo_rng.uniform(0.0, 2.0 * np.pi, size=n_nodes)
        radius = p.separation * p.decay**l
        theta = angles[None, :] + phases[ids][:, None]  # [K, M]
        ring = np.cos(theta)[..., None] * planes[ids][:, None, 0, :] + np.sin(theta)[
            ..., None
        ] * planes[ids][:, None, 1, :]
        centers += radius * ring
    offsets = geo_rng.standard_normal((k, q)) * (p.mean_spread / np.sqrt(q))

    def sample(rng: np.random.Generator, per_class: int) -> tuple[np.ndarray, ...]:
        y = np.repeat(np.arange(k, dtype=np.int64), per_class)
        mode = np.tile(np.arange(per_class, dtype=np.int64) % m, k)
        z = centers[y, mode] + offsets[y] + p.noise * rng.standard_normal((y.size, q))
        order = rng.permutation(y.size)
        return z[order], y[order], mode[order]

    z_train, y_train, mode_train = sample(train_rng, p.train_per_class)
    z_test, y_test, mode_test = sample(test_rng, p.test_per_class)

    # fixed random non-linear map latent -> input, standardised with train statistics
    scale = float(np.sqrt(np.mean(z_train**2))) or 1.0
    a = map_rng.standard_normal((p.hidden, q)) / np.sqrt(q)
    c = map_rng.uniform(-0.5, 0.5, size=p.hidden)
    b = map_rng.standard_normal((p.input_dim, p.hidden)) / np.sqrt(p.hidden)

    def embed(z: np.ndarray) -> np.ndarray:
        return np.tanh(z / scale @ a.T + c) @ b.T

    x_train, x_test = embed(z_train), embed(z_test)
    mu, sd = x_train.mean(0), x_train.std(0)
    sd[sd < 1e-12] = 1.0
    x_train, x_test = (x_train - mu) / sd, (x_test - mu) / sd

    f32 = np.float32
    return SyntheticArrays(
        x_train.astype(f32), y_train, mode_train, z_train.astype(f32),
        x_test.astype(f32), y_test, mode_test, z_test.astype(f32),
        centers.astype(f32), offsets.astype(f32), p,
    )  # fmt: skip


def load_synthetic(data_dir: str | None = None, seed: int = 0, **options: Any) -> DataBundle:
    """The synthetic hierarchical mixture as a :class:`DataBundle` (``data_dir`` is ignored).

    Options (defaults): ``branching=(4, 5)`` top-down children per level (K = product fine
    classes); ``modes=3`` modes per fine class (1 = unimodal control); ``latent_dim=16``;
    ``input_dim=32``; ``hidden=64`` width of the random tanh map; ``train_per_class=100``;
    ``test_per_class=50``; ``separation=3.0`` radius of the coarse rings; ``decay=0.8`` radius
    ratio from one level to the next; ``noise=0.8`` latent Gaussian std; ``mean_spread=1.0`` norm
    scale of the random class-mean offsets. Items are ``(x float32 [input_dim], y int64)``.
    """
    arrays = synthetic_arrays(seed=seed, **options)
    p = arrays.params
    return DataBundle(
        name="synthetic",
        train=tensor_dataset(arrays.x_train, arrays.y_train),
        test=tensor_dataset(arrays.x_test, arrays.y_test),
        tree=synthetic_tree(p.branching),
        input_shape=(p.input_dim,),
        meta={"seed": seed, **p.as_dict()},
    )


__all__ = ["SyntheticArrays", "SyntheticParams", "load_synthetic", "synthetic_arrays", "synthetic_tree"]
