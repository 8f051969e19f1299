"""CPCC against a class-distance matrix instead of a tree: same values for the tree's own matrix,
SciPy's pearsonr for any other, one-line errors for matrices that are not distances."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr

from oracles import oracle_distances
from otcpcc import CPCCLoss, LabelTree, cpcc
from otcpcc.objectives.target import load_cpcc_target

TREE = LabelTree.from_levels([np.arange(8) // 2, np.arange(8) // 4])


def data(seed=0, n=60, d=4, k=8):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    return torch.tensor(rng.normal(size=(n, d)) + 3 * rng.normal(size=(k, d))[y]), torch.tensor(y)


@pytest.mark.parametrize("name", ["l2", "fastft"])
@pytest.mark.parametrize("as_type", [np.asarray, torch.tensor, lambda a: a.tolist()])
def test_tree_matrix_as_target_gives_the_tree_cpcc_exactly(name, as_type):
    x, y = data()
    mat = as_type(np.asarray(TREE.distance_matrix(), dtype=np.float64))
    assert cpcc(x, y, mat, name) == cpcc(x, y, TREE, name)
    xg = x.clone().requires_grad_(True)
    a, b = CPCCLoss(TREE, name)(xg, y), CPCCLoss(mat, name)(xg, y)
    assert a.item() == b.item()
    ga = torch.autograd.grad(a, xg)[0]
    gb = torch.autograd.grad(b, xg)[0]
    assert torch.equal(ga, gb)


def test_any_matrix_target_matches_pearsonr():
    x, y = data(1)
    rng = np.random.default_rng(3)
    c = rng.uniform(1, 5, size=(8, 8))
    c = (c + c.T) / 2
    np.fill_diagonal(c, 0)
    classes = np.unique(y.numpy())
    t = [c[i, j] for i, j in itertools.combinations(classes, 2)]
    rho = oracle_distances("l2", x.numpy(), y.numpy())
    assert cpcc(x, y, c, "l2") == pytest.approx(pearsonr(t, rho)[0], abs=1e-12)


@pytest.mark.parametrize("mat,msg", [
    (np.ones((3, 4)), "must be square"),
    ([[0, 1], [2, 0]], "not symmetric.*symmetrise"),
    ([[0, -1], [-1, 0]], "must be >= 0"),
    ([[1, 1], [1, 0]], "on its diagonal"),
    ([[0, np.nan], [np.nan, 0]], "must be finite"),
    ("costs.csv", "is a path; load it first"),
    ({"a": "b"}, "expected a LabelTree"),
])
def test_invalid_matrices_are_one_line_errors(mat, msg):
    with pytest.raises(ValueError, match=msg) as e:
        CPCCLoss(mat)
    assert "\n" not in str(e.value)


def test_labels_beyond_the_matrix_are_an_error():
    with pytest.raises(ValueError, match="label 3 is not a leaf id"):
        cpcc(torch.randn(4, 2), torch.tensor([0, 1, 2, 3]), np.array([[0, 1, 2], [1, 0, 2], [2, 2, 0.0]]))


def test_a_constant_target_is_refused():
    """Every pair at the same distance: the correlation is undefined (breaker finding)."""
    with pytest.raises(ValueError, match="every distance between two classes is 1"):
        CPCCLoss(np.ones((4, 4)) - np.eye(4))


def test_load_cpcc_target_symmetrises_a_cost_csv(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text(",a,b,c\na,0,1,4\nb,3,0,2\nc,4,2,0\n")
    t, asym = load_cpcc_target(p, ["c", "a", "b"])
    assert asym
    np.testing.assert_array_equal(t, [[0, 4, 2], [4, 0, 2], [2, 2, 0]])
    p.write_text(",a,b\na,0,1\nb,1,0\n")
    assert load_cpcc_target(p, ["a", "b"])[1] is False
    p.write_text(",a,b\na,1,1\nb,1,0\n")
    with pytest.raises(ValueError, match="c.csv: CPCC target matrix has 1.0 on its diagonal"):
        load_cpcc_target(p, ["a", "b"])
