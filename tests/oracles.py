"""Independent per-pair oracles (POT, brute force) shared by the distance and loss tests."""

from __future__ import annotations

import itertools

import numpy as np
import ot


def nw_walk(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Brute-force north-west-corner rule: the plan as a dense [n, m] matrix."""
    a, b = a.astype(float).copy(), b.astype(float).copy()
    P = np.zeros((a.size, b.size))
    i = j = 0
    while i < a.size and j < b.size:
        f = min(a[i], b[j])
        P[i, j] += f
        a[i] -= f
        b[j] -= f
        if a[i] <= 1e-15 and i < a.size - 1:
            i += 1
        elif b[j] <= 1e-15:
            j += 1
        else:
            i += 1
    return P


def sorted_nw_plan(A: np.ndarray, B: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Brute force of FastFT order="sorted": sort A and B along mean(B) - mean(A) (the pooled
    first principal direction where the means coincide), walk the NW corner, undo the sort."""
    theta = B.mean(0) - A.mean(0)
    if np.linalg.norm(theta) <= 1e-9 * max(np.abs(A).max(), np.abs(B).max()):
        pooled = np.vstack([A, B])
        theta = np.linalg.svd(pooled - pooled.mean(0), full_matrices=False)[2][0]
    oa, ob = np.argsort(A @ theta, kind="stable"), np.argsort(B @ theta, kind="stable")
    P = np.zeros((len(A), len(B)))
    P[np.ix_(oa, ob)] = nw_walk(a[oa], b[ob])
    return P


def pair_plan(name: str, A: np.ndarray, B: np.ndarray, a=None, b=None, reg: float = 10.0):
    """The reference plan of a distance for one pair (None for l2/swd)."""
    a = np.full(len(A), 1 / len(A)) if a is None else a
    b = np.full(len(B), 1 / len(B)) if b is None else b
    M = ot.dist(A, B, metric="euclidean")
    if name == "emd":
        return ot.emd(a, b, M)
    if name == "sinkhorn":
        return ot.sinkhorn(a, b, M, reg)
    if name == "fastft":
        return nw_walk(a, b)
    if name == "fastft_sorted":
        return sorted_nw_plan(A, B, a, b)
    return None


def oracle_distances(name, x, y, projections=None, weights=None, reg=10.0):
    """[k(k-1)/2] distances for every pair of present classes, in combinations order."""
    classes = np.unique(y)
    out = []
    for i, j in itertools.combinations(classes, 2):
        A, B = x[y == i], x[y == j]
        if name == "l2":
            out.append(np.linalg.norm(A.mean(0) - B.mean(0)))
        elif name == "swd":
            out.append(ot.sliced_wasserstein_distance(A, B, n_projections=projections.shape[1], p=2,
                                                      projections=projections))
        else:
            a = b = None
            if weights is not None:
                a, b = weights[y == i], weights[y == j]
            P = pair_plan(name, A, B, a, b, reg)
            out.append(float((P * ot.dist(A, B, metric="euclidean")).sum()))
    return np.array(out)


def softmax_weights(x, y, sign):
    """Per-class softmax of sign * distance to the class mean (the 'near'/'far' weightings)."""
    w = np.zeros(len(y))
    for c in np.unique(y):
        idx = y == c
        d = np.linalg.norm(x[idx] - x[idx].mean(0), axis=1)
        e = np.exp(sign * d - (sign * d).max())
        w[idx] = e / e.sum()
    return w


def plan_gradient(name, x, y, coef, weights=None, reg=10.0):
    """Constant-plan gradient of sum_t coef_t rho_t: sum_b P_ab (x_a - x_b)/||x_a - x_b||, 0/0 := 0."""
    grad = np.zeros_like(x)
    classes = np.unique(y)
    for t, (i, j) in enumerate(itertools.combinations(classes, 2)):
        ia, ib = np.flatnonzero(y == i), np.flatnonzero(y == j)
        a = b = None
        if weights is not None:
            a, b = weights[ia], weights[ib]
        P = pair_plan(name, x[ia], x[ib], a, b, reg)
        for r, s in zip(*np.nonzero(P), strict=True):
            diff = x[ia[r]] - x[ib[s]]
            nrm = np.linalg.norm(diff)
            if nrm > 0:
                g = coef[t] * P[r, s] * diff / nrm
                grad[ia[r]] += g
                grad[ib[s]] -= g
    return grad
