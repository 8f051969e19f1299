"""The calibrated multi-modality test, the direct OT-effect measure and the diagnosis they make.

Constructed data, fixed seeds; the thresholds are the library's (never tuned per test)."""

import itertools

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from otcpcc import LabelTree, cpcc
from otcpcc.evaluation.ot_effect import GAIN_THRESHOLD, ot_effect, rank_agreement, recommend
from otcpcc.metrics import multimodality
from otcpcc.metrics.multimodality import split_statistic, split_threshold

COARSE, FINE = 4, 3


def _tree():
    return LabelTree.from_levels([np.repeat(np.arange(COARSE), FINE)])


def _unit(rng, d):
    v = rng.normal(size=d)
    return v / np.linalg.norm(v)


def gaussian_classes(d, n, seed):
    """Isotropic unit Gaussian classes whose means follow the tree (coarse + fine offsets)."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(COARSE, d)) * 2
    xs, ys = [], []
    for f in range(COARSE * FINE):
        mean = coarse[f // FINE] + rng.normal(size=d)
        xs.append(mean + rng.normal(size=(n, d)))
        ys.append(np.full(n, f))
    return np.concatenate(xs), np.concatenate(ys)


def two_mode_classes(d, n, seed):
    """Every class has mean 0 and two modes at ±m_f, m_f = 6 u_coarse + 3 u_fine (unit random
    directions): the means say nothing, the modes follow the tree."""
    rng = np.random.default_rng(seed)
    coarse = [_unit(rng, d) * 6 for _ in range(COARSE)]
    xs, ys = [], []
    for f in range(COARSE * FINE):
        m = coarse[f // FINE] + 3 * _unit(rng, d)
        sign = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)[:, None]
        xs.append(sign * m + rng.normal(size=(n, d)))
        ys.append(np.full(n, f))
    return np.concatenate(xs), np.concatenate(ys)


@pytest.mark.parametrize("d", [2, 16, 128, 512])
@pytest.mark.parametrize("n", [30, 100, 500])
def test_gaussian_classes_are_unimodal_and_need_no_ot(d, n):
    x, y = gaussian_classes(d, n, seed=d * 1000 + n)
    mm = multimodality(x, y)
    assert mm["mean_components"] <= 1.2, mm["per_class"]
    eff = ot_effect(x, y, _tree(), seed=0)
    assert eff["recommend"] == "l2", eff["rule"]


@pytest.mark.parametrize("d,n", [(8, 40), (64, 100), (512, 60)])
def test_two_mode_classes_following_the_tree_call_for_ot(d, n):
    x, y = two_mode_classes(d, n, seed=d + n)
    mm = multimodality(x, y)
    assert mm["frac_multimodal"] >= 0.8, mm["per_class"]
    assert all(v == 2 for v in mm["per_class"].values())
    eff = ot_effect(x, y, _tree(), seed=0)
    assert eff["recommend"] == "ot", eff["rule"]
    assert eff["cpcc_emd"] - eff["cpcc_l2"] >= GAIN_THRESHOLD


def test_rank_agreement_is_spearman_on_the_condensed_matrices():
    x, y = two_mode_classes(16, 40, seed=3)
    eff = ot_effect(x, y, _tree(), seed=1)
    l2, emd = eff["pairs"]["l2"], eff["pairs"]["emd"]
    assert len(l2) == len(list(itertools.combinations(range(COARSE * FINE), 2)))
    assert eff["rank_agreement_l2_emd"] == pytest.approx(spearmanr(l2, emd).statistic, abs=1e-12)
    tied_a, tied_b = [1, 2, 2, 3, 5, 5, 5], [3, 1, 4, 1, 5, 9, 2]
    assert rank_agreement(tied_a, tied_b) == pytest.approx(spearmanr(tied_a, tied_b).statistic)
    # the CPCC of each is otcpcc.cpcc on the same subsample (here every sample: 40 <= 100)
    for name in ("l2", "emd"):
        want = cpcc(torch.tensor(x), torch.tensor(y), _tree(), distance=name)
        assert eff[f"cpcc_{name}"] == pytest.approx(float(want), abs=1e-9)
    top = eff["disagreements"][0]
    assert abs(top["rank_l2"] - top["rank_emd"]) == pytest.approx(max(
        abs(d["rank_l2"] - d["rank_emd"]) for d in eff["disagreements"]))


def test_recommend_rule_thresholds():
    assert recommend(0.5, 0.5 + GAIN_THRESHOLD)[0] == "ot"
    assert recommend(0.5, 0.5 + GAIN_THRESHOLD - 1e-6)[0] == "l2"
    assert recommend(-0.2, 0.25)[0] == "l2"  # a gain, but the distributions barely follow the tree
    assert recommend(None, 0.9)[0] == "l2"
    # neither follows the tree: said so, not "the means carry as much hierarchy" (a new user's 0.04/-0.03)
    assert recommend(0.04, -0.03) == ("l2", "neither the means nor the distributions follow the tree "
                                      "here (CPCC l2 0.04, emd -0.03, both < 0.30), so OT shows no "
                                      "gain: l2, the cheaper")
    assert recommend(0.8, 0.82)[1].startswith("the means carry as much hierarchy")


def test_split_statistic_on_known_shapes():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(20000, 1))
    assert split_statistic(g, 5)[0] == pytest.approx(1 - 2 / np.pi, abs=0.01)  # one Gaussian
    two = np.concatenate([rng.normal(-2.5, 1, 10000), rng.normal(2.5, 1, 10000)])[:, None]
    assert split_statistic(two, 5)[0] == pytest.approx(0.135, abs=0.01)  # 5 sigma apart
    lap = rng.laplace(size=(20000, 1))
    assert split_statistic(lap, 5)[0] == pytest.approx(0.5, abs=0.02)  # heavy tails: no modes
    assert split_threshold(20) < split_threshold(50) <= split_threshold(10**4) == 0.2


def test_disagreements_list_only_pairs_whose_ranks_differ_and_their_markdown_escapes_pipes():
    """New-user finding: the "disagree most" table listed a pair ranked 1.00 by both. Classes of
    one repeated point have EMD = l2: no pair disagrees, none is listed; with two-mode classes the
    listed gaps are positive and largest first. Breaker finding: a '|' in a name split the row."""
    from otcpcc.study.diagnosis_report import diagnosis_markdown

    rng = np.random.default_rng(0)
    points = rng.normal(size=(COARSE * FINE, 5))
    y = np.repeat(np.arange(COARSE * FINE), 4)
    assert ot_effect(points[y], y, _tree(), seed=0)["disagreements"] == []
    x, y = two_mode_classes(16, 40, seed=3)
    names = [f"c|{i}\nx" for i in range(COARSE * FINE)]  # a line break must not split a row either
    eff = ot_effect(x, y, _tree(), names=names, seed=1)
    gaps = [abs(d["rank_l2"] - d["rank_emd"]) for d in eff["disagreements"]]
    assert gaps and min(gaps) > 0 and gaps == sorted(gaps, reverse=True)
    result = {"recommend": "ot", "dataset": "x", "source": "s", "n": len(y), "num_classes": COARSE * FINE,
              "per_class": {}, "reasons": [], "ot_effect": eff}
    rows = [line for line in diagnosis_markdown(result).splitlines() if line.startswith("| c\\|")]
    assert rows and all(line.replace("\\|", "").count("|") == 5 for line in rows), rows
