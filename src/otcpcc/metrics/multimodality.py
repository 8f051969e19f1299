"""Multi-modality diagnostic: how many Gaussian modes each class has."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._arrays import _as_features, _as_labels, _to_numpy


def multimodality(
    features: Any,
    labels: Any,
    max_components: int = 5,
    seed: int = 0,
    max_per_class: int = 500,
    *,
    criterion: str = "aic",
) -> dict[str, Any]:
    """Count the modes of each class with Gaussian mixtures chosen by AIC.

    For each class ``c`` with ``n_c`` samples (a random subset of ``max_per_class`` when larger,
    drawn with ``seed``): centre the class's features, reduce them with a PCA fitted on that
    class alone to ``min(10, d, n_c - 1)`` dimensions (the within-class directions, where modes
    live; a global PCA would be dominated by between-class spread), rescale by the overall
    standard deviation (so ``reg_covar`` acts at a fixed relative scale), then fit diagonal
    :class:`sklearn.mixture.GaussianMixture` models with ``1..M_c`` components, where
    ``M_c = max(1, min(max_components, n_c // 2))`` (small classes try fewer components), and
    keep the count with the lowest AIC (``criterion="bic"``: lowest BIC, which penalises extra
    components more). A class of one sample, or of identical samples, counts as one component.
    Caveat: a Gaussian mixture also spends components on heavy tails or curved shapes, so a
    count above 1 means "not one Gaussian", most often, but not only, several modes.

    Returns:
        ``{"per_class": {class_id: n_components}, "mean_components": float,
        "frac_multimodal": float (fraction of classes with more than one component),
        "recommendation": str}``. The recommendation favours optimal-transport distances
        (``emd`` / ``fastft``) when ``frac_multimodal >= 0.5``, ``l2`` otherwise.
    """
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    if criterion not in ("aic", "bic"):
        raise ValueError(f"criterion must be 'aic' or 'bic', got {criterion!r}")
    x = _as_features(features, "features")
    a = _to_numpy(labels)
    if a.ndim != 1 or a.shape[0] != x.shape[0]:
        raise ValueError(f"labels must be 1-D with {x.shape[0]} entries, got shape {a.shape}")
    if x.shape[0] == 0:
        raise ValueError("features is empty; pass at least one sample")
    y = _as_labels(a, x.shape[0], int(np.max(a)) + 1 if a.size else 1)
    if (
        isinstance(max_components, bool)
        or not isinstance(max_components, (int, np.integer))
        or max_components < 1
    ):
        raise ValueError(f"max_components must be a positive integer, got {max_components!r}")
    if (
        isinstance(max_per_class, bool)
        or not isinstance(max_per_class, (int, np.integer))
        or max_per_class < 1
    ):
        raise ValueError(f"max_per_class must be a positive integer, got {max_per_class!r}")
    rng = np.random.default_rng(seed)
    per_class: dict[int, int] = {}
    for c in np.unique(y):
        xc = x[y == c]
        if xc.shape[0] > max_per_class:
            xc = xc[rng.choice(xc.shape[0], max_per_class, replace=False)]
        n = xc.shape[0]
        xc = xc - xc.mean(axis=0)
        scale = float(xc.std())
        m = max(1, min(int(max_components), n // 2))
        if n < 2 or scale == 0.0 or m == 1:
            per_class[int(c)] = 1
            continue
        xc = xc / scale
        dims = min(10, xc.shape[1], n - 1)
        if dims < xc.shape[1]:
            xc = PCA(n_components=dims, random_state=seed).fit_transform(xc)
        aics = []
        for comps in range(1, m + 1):
            gm = GaussianMixture(comps, covariance_type="diag", random_state=seed, n_init=2)
            gm.fit(xc)
            aics.append(gm.aic(xc) if criterion == "aic" else gm.bic(xc))
        per_class[int(c)] = int(np.argmin(aics)) + 1
    counts = np.array(list(per_class.values()), dtype=np.float64)
    mean_c = float(counts.mean())
    frac = float(np.mean(counts > 1))
    if frac >= 0.5:
        rec = (
            f"{frac:.0%} of classes are multi-modal (mean {mean_c:.2f} components): "
            f"use an OT distance (distance='emd' or 'fastft'); class means blur the modes"
        )
    else:
        rec = (
            f"only {frac:.0%} of classes are multi-modal (mean {mean_c:.2f} components): "
            f"distance='l2' (class means) should do as well as OT distances, and is cheaper"
        )
    return {
        "per_class": per_class,
        "mean_components": mean_c,
        "frac_multimodal": frac,
        "recommendation": rec,
    }
