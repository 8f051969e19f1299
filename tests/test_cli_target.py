"""``--cpcc-target``: train against a cost matrix, keep it in the run, evaluate against it."""

from __future__ import annotations

import json

import numpy as np

from otcpcc.cli import main
from otcpcc.data import get_dataset

OPTS = {"train_per_class": 12, "test_per_class": 6, "branching": [2, 3]}
TINY = ["--data", "synthetic", "--data-opt", "train_per_class=12", "--data-opt",
        "test_per_class=6", "--data-opt", "branching=[2, 3]", "--model-opt", "hidden=[16]",
        "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--no-progress"]


def write_csv(path, names, c):
    rows = [",".join(["", *names])]
    rows += [",".join([n, *(repr(float(v)) for v in r)]) for n, r in zip(names, c, strict=True)]
    path.write_text("\n".join(rows) + "\n")


def test_asymmetric_cost_target_is_symmetrised_copied_and_evaluated(tmp_path, capsys):
    tree = get_dataset("synthetic", **OPTS).tree
    names = list(tree.leaves)
    d = np.asarray(tree.distance_matrix(), dtype=float)
    skew = np.triu(np.full(d.shape, 0.5), 1)
    c = d * (1 + skew - skew.T)  # asymmetric, but (C + C^T)/2 is exactly the tree distance
    write_csv(tmp_path / "cost.csv", names[::-1], c[::-1, ::-1])  # rows in another order
    out = tmp_path / "run"
    assert main(["train", *TINY, "--distance", "l2", "--cpcc-target",
                 str(tmp_path / "cost.csv"), "--out", str(out)]) == 0
    assert "is not symmetric; CPCC uses (C + C^T)/2" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["cpcc_target"] == str(tmp_path / "cost.csv")
    (tmp_path / "cost.csv").unlink()  # evaluation reads the run's own copy
    assert main(["evaluate", str(out)]) == 0
    res = json.loads((out / "eval.json").read_text())
    for name in ("l2", "emd"):
        assert res[f"test_cpcc_target_{name}"] == res[f"test_cpcc_{name}"]


def test_bad_cpcc_target_is_one_line_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text(",a,b\na,0,1\nb,1,0\n")
    code = main(["train", *TINY, "--distance", "l2", "--cpcc-target", str(bad),
                 "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("otcpcc: error:")
    assert "bad.csv" in err and "have no column" in err  # classes c0.f0 ... have no column
    assert not (tmp_path / "r" / "config.json").exists()


def test_near_constant_cpcc_target_trains_finite(tmp_path, capsys):
    """Distances 1 + 1e-12·(i + j): distinct in float64, equal in float32. The correlation is
    taken in float64, so the loss is finite (it was NaN and the CLI blamed the learning rate)."""
    names = list(get_dataset("synthetic", **OPTS).tree.leaves)
    k = len(names)
    c = np.array([[0.0 if i == j else 1 + 1e-12 * (i + j) for j in range(k)] for i in range(k)])
    write_csv(tmp_path / "near.csv", names, c)
    out = tmp_path / "run"
    code = main(["train", *TINY, "--distance", "l2", "--cpcc-target", str(tmp_path / "near.csv"),
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "learning rate" not in capsys.readouterr().err
