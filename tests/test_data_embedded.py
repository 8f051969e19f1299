"""Embedded datasets: synthetic hierarchical mixture and scikit-learn digits (plus split helpers)."""

from __future__ import annotations

import itertools

import numpy as np
import ot
import pytest
import torch
from scipy.stats import pearsonr
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits as sk_load_digits
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import KNeighborsClassifier
from torch.utils.data import DataLoader

from otcpcc.data import get_dataset
from otcpcc.data.digits import DIGIT_TO_MID, digits_tree, load_digits
from otcpcc.data.synthetic import load_synthetic, synthetic_arrays, synthetic_tree
from otcpcc.data.tensors import stratified_split, tensor_dataset


def tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
    return ds.tensors[0], ds.tensors[1]


def tree_corr(rho: np.ndarray, d: np.ndarray) -> float:
    """Pearson correlation over pairs i < j between a distance matrix and tree distances."""
    iu = np.triu_indices(d.shape[0], 1)
    return float(pearsonr(rho[iu], d[iu])[0])


def mean_and_emd_distances(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class-mean l2 distances and exact EMD (POT) between class empirical distributions."""
    k = int(y.max()) + 1
    groups = [x[y == c] for c in range(k)]
    means = np.stack([g.mean(0) for g in groups])
    l2 = np.linalg.norm(means[:, None] - means[None], axis=-1)
    emd = np.zeros((k, k))
    for i, j in itertools.combinations(range(k), 2):
        cost = ot.dist(groups[i], groups[j], metric="euclidean")
        emd[i, j] = emd[j, i] = ot.emd2([], [], cost)
    return l2, emd


@pytest.fixture(scope="module")
def synth():
    return load_synthetic(seed=0)


# ------------------------------------------------------------------------------------ synthetic


def test_synthetic_shapes_counts_and_meta(synth):
    xtr, ytr = tensors(synth.train)
    xte, yte = tensors(synth.test)
    assert xtr.shape == (2000, 32) and xte.shape == (1000, 32)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    assert synth.input_shape == (32,) and synth.num_classes == 20 and synth.name == "synthetic"
    assert torch.equal(torch.bincount(ytr), torch.full((20,), 100))
    assert torch.equal(torch.bincount(yte), torch.full((20,), 50))
    # train statistics standardise the inputs
    assert torch.allclose(xtr.mean(0), torch.zeros(32), atol=1e-4)
    assert torch.allclose(xtr.std(0, unbiased=False), torch.ones(32), atol=1e-3)
    assert synth.meta["branching"] == [4, 5] and synth.meta["modes"] == 3
    assert synth.meta["seed"] == 0 and synth.meta["input_dim"] == 32
    x0, y0 = synth.train[0]
    assert x0.shape == (32,) and int(y0) == int(ytr[0])


def test_synthetic_deterministic_per_seed_and_differs_across_seeds(synth):
    again = get_dataset("synthetic", seed=0)
    other = load_synthetic(seed=1)
    for split in ("train", "test"):
        a, b, c = (tensors(getattr(bundle, split)) for bundle in (synth, again, other))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert not torch.allclose(a[0], c[0])
    # train and test are different draws
    assert not torch.allclose(tensors(synth.train)[0][:1000], tensors(synth.test)[0])


def test_synthetic_tree_two_levels(synth):
    tree = synth.tree
    assert tree.leaves[:6] == ["c0.f0", "c0.f1", "c0.f2", "c0.f3", "c0.f4", "c1.f0"]
    assert [lev.name for lev in tree.levels] == ["coarse"]
    np.testing.assert_array_equal(tree.levels[0].ids, np.arange(20) // 5)
    assert tree.levels[0].names == ["c0", "c1", "c2", "c3"]
    d = tree.distance_matrix()
    same = (np.arange(20)[:, None] // 5) == (np.arange(20)[None] // 5)
    expected = np.where(same, 2.0, 4.0)
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_array_equal(d, expected)


@pytest.mark.parametrize("branching", [(2, 3, 2), (2, 2, 2, 2)])
def test_synthetic_tree_deeper_matches_name_prefix_oracle(branching):
    tree = synthetic_tree(branching)
    depth = len(branching)
    assert tree.num_classes == int(np.prod(branching))
    names = {3: ["mid", "coarse"], 4: ["mid2", "mid1", "coarse"]}[depth]
    assert [lev.name for lev in tree.levels] == names
    # oracle: tree distance = 2 * (depth - length of the common dotted-name prefix)
    parts = [leaf.split(".") for leaf in tree.leaves]
    assert all(len(p) == depth for p in parts)
    k = tree.num_classes
    expected = np.zeros((k, k))
    for i, j in itertools.combinations(range(k), 2):
        common = next(
            (n for n in range(depth) if parts[i][n] != parts[j][n]), depth
        )
        expected[i, j] = expected[j, i] = 2 * (depth - common)
    np.testing.assert_array_equal(tree.distance_matrix(), expected)


def test_synthetic_deeper_bundle():
    b = load_synthetic(seed=3, branching=(2, 3, 2), train_per_class=10, test_per_class=4,
                       input_dim=8, latent_dim=6)  # fmt: skip
    assert b.num_classes == 12 and b.input_shape == (8,)
    assert tensors(b.train)[0].shape == (120, 8) and tensors(b.test)[0].shape == (48, 8)
    assert torch.equal(torch.bincount(tensors(b.test)[1]), torch.full((12,), 4))


def test_synthetic_class_means_are_the_offsets_and_modes_follow_the_tree():
    a = synthetic_arrays(seed=0)
    # every ring term sums to zero over the modes: each class's mode centers average to 0
    np.testing.assert_allclose(a.mode_centers.mean(axis=1), 0.0, atol=1e-5)
    # the mode assignment is balanced, so the latent class mean is delta_f up to sampling noise
    for c in range(20):
        zc = a.z_train[a.y_train == c]
        assert np.bincount(a.mode_train[a.y_train == c]).tolist() == [34, 33, 33]
        err = np.linalg.norm(zc.mean(0) - a.class_offsets[c])
        assert err < 4 * 0.8 * np.sqrt(16 / 100)  # 4 sigma of the mean of 100 noise draws
    # matched mode centers: siblings differ in the fine ring only, cousins in both rings. Random
    # planes are nearly orthogonal, so on average |mu_fk - mu_gk| ~ sqrt(2) r_2 for siblings and
    # sqrt(2 r_1^2 + 2 r_2^2) for cousins (r_1 = separation = 3, r_2 = decay * r_1 = 2.4)
    r1, r2 = 3.0, 2.4
    diff = np.linalg.norm(a.mode_centers[:, None] - a.mode_centers[None], axis=-1).mean(-1)
    coarse = np.arange(20) // 5
    same = coarse[:, None] == coarse[None]
    sib = np.where(same & ~np.eye(20, dtype=bool), diff, np.nan)
    cousin = np.where(~same, diff, np.nan)
    assert abs(np.nanmean(sib) / (np.sqrt(2) * r2) - 1) < 0.1
    assert abs(np.nanmean(cousin) / np.sqrt(2 * r1**2 + 2 * r2**2) - 1) < 0.1
    assert (np.nanmean(sib, axis=1) < np.nanmean(cousin, axis=1)).all()


def test_synthetic_classes_are_multimodal_and_the_control_is_not():
    multi = synthetic_arrays(seed=0)
    uni = synthetic_arrays(seed=0, modes=1)

    def aic_components(a, classes):
        best = []
        for c in classes:
            zc = a.z_train[a.y_train == c]
            aic = [
                GaussianMixture(k, covariance_type="spherical", random_state=0).fit(zc).aic(zc)
                for k in (1, 2, 3)
            ]
            best.append(int(np.argmin(aic)) + 1)
        return np.array(best)

    classes = range(0, 20, 2)
    assert (aic_components(multi, classes) > 1).all()
    assert (aic_components(uni, classes) == 1).mean() >= 0.7
    # the modes are recoverable: 3-means on a class's latent points finds the true modes
    for c in classes:
        zc = multi.z_train[multi.y_train == c]
        pred = KMeans(3, n_init=3, random_state=0).fit_predict(zc)
        assert adjusted_rand_score(multi.mode_train[multi.y_train == c], pred) > 0.9


def test_synthetic_class_means_mislead_but_transport_does_not(synth):
    """On the raw inputs, l2-of-means carries no hierarchy; exact EMD (POT) recovers it."""
    x, y = (t.numpy() for t in tensors(synth.test))
    d = synth.tree.distance_matrix()
    l2, emd = mean_and_emd_distances(x, y)
    r_l2, r_emd = tree_corr(l2, d), tree_corr(emd, d)
    assert r_l2 < 0.25 and r_emd > 0.55 and r_emd - r_l2 > 0.4
    # the mean of some class sits nearer to a class of another coarse group than to all siblings
    coarse = np.arange(20) // 5
    np.fill_diagonal(l2, np.inf)
    nearest = l2.argmin(1)
    assert (coarse[nearest] != coarse).sum() >= 5

    # control: with one mode per class, the class means do carry the hierarchy
    uni = load_synthetic(seed=0, modes=1)
    xu, yu = (t.numpy() for t in tensors(uni.test))
    l2u, _ = mean_and_emd_distances(xu, yu)
    assert tree_corr(l2u, d) > 0.5


def test_synthetic_is_learnable_but_not_linear_and_classes_overlap(synth):
    xtr, ytr = (t.numpy() for t in tensors(synth.train))
    xte, yte = (t.numpy() for t in tensors(synth.test))
    knn = KNeighborsClassifier(5).fit(xtr, ytr).score(xte, yte)
    linear = LinearDiscriminantAnalysis().fit(xtr, ytr).score(xte, yte)
    # far above chance (1/20), far below 1: the default's classes overlap (measured 0.69)
    assert 0.5 < knn < 0.85
    assert linear < knn - 0.2
    # kNN's mistakes land both on siblings and in other coarse groups
    pred = KNeighborsClassifier(5).fit(xtr, ytr).predict(xte)
    wrong = pred != yte
    far = (pred[wrong] // 5 != yte[wrong] // 5).mean()
    assert 0.2 < far < 0.79  # 0.79 = 15/19: mistakes spread uniformly over the other classes
    # the easier setting of noise 0.5 separates the classes almost perfectly
    easy = load_synthetic(seed=0, noise=0.5)
    xe, ye = (t.numpy() for t in tensors(easy.train))
    xt, yt = (t.numpy() for t in tensors(easy.test))
    assert KNeighborsClassifier(5).fit(xe, ye).score(xt, yt) > 0.9


@pytest.mark.parametrize(
    "options, match",
    [
        ({"modes": 0}, "modes must be an integer >= 1"),
        ({"modes": 2.5}, "modes must be an integer"),
        ({"branching": 4}, "branching must be a sequence"),
        ({"branching": (20,)}, "at least 2 levels"),
        ({"branching": (4, 0)}, "each branching factor"),
        ({"branching": (1, 1)}, "fewer than 2 fine classes"),
        ({"latent_dim": 1}, "latent_dim must be an integer >= 2"),
        ({"input_dim": True}, "input_dim"),
        ({"train_per_class": 0}, "train_per_class"),
        ({"noise": -0.1}, "noise must be a finite number >= 0"),
        ({"separation": 0.0}, "separation must be a finite number > 0"),
        ({"decay": float("nan")}, "decay"),
        ({"colour": "red"}, "unknown option.*colour.*valid options"),
    ],
)
def test_synthetic_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        load_synthetic(**options)


def test_bad_seed():
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        load_synthetic(seed=-1)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        load_digits(seed=1.5)


# ------------------------------------------------------------------------------------ digits


def test_digits_images_match_sklearn_and_split_is_stratified():
    b = get_dataset("digits", seed=0)
    raw = sk_load_digits()
    xtr, ytr = tensors(b.train)
    xte, yte = tensors(b.test)
    assert b.input_shape == (1, 8, 8) and xtr.shape[1:] == (1, 8, 8)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    assert len(b.train) + len(b.test) == 1797
    assert float(xtr.min()) == 0.0 and float(xtr.max()) == 1.0
    # every image is an sklearn row / 16 with its label: match rows by content
    rows = {(tuple(r), t) for r, t in zip((raw.data / 16).astype(np.float32).tolist(),
                                          raw.target.tolist(), strict=True)}  # fmt: skip
    for x, y in ((xtr, ytr), (xte, yte)):
        for xi, yi in zip(x.reshape(len(x), 64).tolist(), y.tolist(), strict=True):
            assert (tuple(xi), yi) in rows
    # stratified: each class loses round(0.2 n_c) samples to test
    n_c = np.bincount(raw.target)
    np.testing.assert_array_equal(np.bincount(yte.numpy()), np.round(0.2 * n_c))
    np.testing.assert_array_equal(np.bincount(ytr.numpy()), n_c - np.round(0.2 * n_c))
    assert b.meta["n_test"] == len(b.test)


def test_digits_determinism_flatten_and_fraction():
    a, b, c = load_digits(seed=0), load_digits(seed=0), load_digits(seed=1)
    assert torch.equal(tensors(a.test)[0], tensors(b.test)[0])
    assert not torch.equal(tensors(a.test)[0], tensors(c.test)[0])
    flat = load_digits(seed=0, flatten=True)
    assert flat.input_shape == (64,)
    assert torch.equal(tensors(flat.train)[0], tensors(a.train)[0].reshape(-1, 64))
    half = load_digits(seed=0, test_fraction=0.5)
    assert abs(len(half.test) - 1797 / 2) <= 10
    batch_x, batch_y = next(iter(DataLoader(a.train, batch_size=16)))
    assert batch_x.shape == (16, 1, 8, 8) and batch_y.dtype == torch.int64


def test_digits_tree():
    tree = load_digits().tree
    assert tree.leaves == [str(d) for d in range(10)]
    assert [lev.name for lev in tree.levels] == ["mid", "parity"]
    assert tree.levels[0].names == ["g024", "g68", "g135", "g79"]
    assert tree.levels[1].names == ["even", "odd"]
    d = tree.distance_matrix()
    assert d[0, 2] == 2 and d[0, 4] == 2 and d[6, 8] == 2 and d[1, 5] == 2 and d[7, 9] == 2
    assert d[0, 6] == 4 and d[2, 8] == 4 and d[3, 7] == 4
    assert d[0, 1] == 6 and d[8, 9] == 6
    groups = [{0, 2, 4}, {6, 8}, {1, 3, 5}, {7, 9}]
    for i, j in itertools.combinations(range(10), 2):
        same_mid = any(i in g and j in g for g in groups)
        want = 2 if same_mid else (4 if i % 2 == j % 2 else 6)
        assert d[i, j] == want, (i, j)
    np.testing.assert_array_equal(digits_tree().levels[0].ids, DIGIT_TO_MID)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"test_fraction": 0.0}, "test_fraction must be a number strictly between 0 and 1"),
        ({"test_fraction": 1.5}, "test_fraction"),
        ({"flatten": "yes"}, "flatten must be True or False"),
        ({"shuffle": True}, "unknown option.*shuffle"),
    ],
)
def test_digits_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        load_digits(**options)


# ------------------------------------------------------------------------------------ helpers


def test_stratified_split_properties():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 1 + [3] * 2)
    train, test = stratified_split(labels, 0.3, seed=4)
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(18))
    np.testing.assert_array_equal(np.bincount(labels[test], minlength=4), [3, 2, 0, 1])
    again = stratified_split(labels, 0.3, seed=4)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], test)
    other = [stratified_split(labels, 0.3, seed=s)[1] for s in range(5, 10)]
    assert any(not np.array_equal(o, test) for o in other)


def test_tensor_dataset_types_and_length_check():
    ds = tensor_dataset(np.zeros((3, 2), dtype=np.float64), np.array([0, 1, 2], dtype=np.int32))
    assert ds.tensors[0].dtype == torch.float32 and ds.tensors[1].dtype == torch.int64
    with pytest.raises(ValueError, match="one label per row"):
        tensor_dataset(np.zeros((3, 2)), np.zeros(2))
