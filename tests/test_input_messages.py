"""Bad-input and new-user trial: ``1e-3`` is a number in every YAML / KEY=VALUE value; cost-matrix
messages for classes named by numbers; all-zero costs refused; .npz range and format messages;
a misspelt tree leaf; "did you mean" for a mistyped flag. All fast (no training)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import yaml

from cli_errors import own_error as one_line_error
from otcpcc import LabelTree
from otcpcc.cli import main
from otcpcc.cli.args import config_from_args
from otcpcc.cli.commands import build_parser
from otcpcc.data.features import load_features
from otcpcc.evaluation.evaluate import resolve_cost_matrix
from otcpcc.metrics import load_cost_matrix
from otcpcc.objectives.target import load_cpcc_target
from otcpcc.runs.config import TrainConfig
from otcpcc.tree.matching import unmatched_classes
from otcpcc.yaml_values import load_value, load_yaml

DIGITS = [str(i) for i in range(10)]


# ----------------------------------------------------------------------------- 1: 1e-3 is a number
@pytest.mark.parametrize("text, value", [
    ("1e-3", 1e-3), ("1E5", 1e5), ("1e300", 1e300), ("-2e+10", -2e10), ("1.5e3", 1500.0),
    ("3", 3), ("0.5", 0.5), ("abc", "abc"), ("inf", "inf"), ("e5", "e5"), ("1e", "1e"),
])
def test_yaml_reads_exponents_without_a_point_as_floats(text, value):
    got = load_yaml(text)
    assert got == value and type(got) is type(value)
    assert load_yaml(".inf") == float("inf") and np.isnan(load_yaml(".nan"))  # as safe_load
    assert yaml.safe_load("1e-3") == "1e-3"  # the YAML 1.1 behaviour load_yaml corrects
    assert load_yaml("{tol: 1e-9, h: [1e2, 2]}") == {"tol": 1e-9, "h": [100.0, 2]}


def test_config_files_and_key_value_options_read_1e_3_as_a_number(tmp_path):
    y = tmp_path / "k.yaml"
    y.write_text("lr: 1e-3\nepochs: 1\ndata: synthetic\ndistance: sinkhorn\n"
                 "distance_options: {tol: 1e-9}\n")
    j = tmp_path / "k.json"
    j.write_text(json.dumps({"lr": 1e-3, "epochs": 1}).replace("0.001", "1e-3"))
    for path in (y, j):
        assert TrainConfig.from_args({"config": str(path)}).lr == 1e-3
    assert TrainConfig.from_args({"config": str(y)}).distance_options == {"tol": 1e-9}
    args = build_parser().parse_args([
        "train", "--config", str(y), "--out", str(tmp_path / "r"), "--distance", "sinkhorn",
        "--dist-opt", "tol=1e-9", "--data-opt", "noise=5e-1", "--model-opt", "dropout=1E-1"])
    cfg = config_from_args(args)
    assert cfg.lr == 1e-3 and cfg.distance_options == {"tol": 1e-9}
    assert cfg.data_options == {"noise": 0.5} and cfg.model_options == {"dropout": 0.1}


# ----------------------------------------------------------------------------- 2: numeric class names
def _csv(path, header, rows):
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n", encoding="utf-8")
    return path


def _unit_rows(names):
    return [[n, *("0" if n == m else "1" for m in names)] for n in names]


def test_cost_matrix_with_digit_class_names_names_the_missing_row_and_duplicate_column(tmp_path):
    rows = _unit_rows(DIGITS)
    with pytest.raises(ValueError, match=r"class '9' has no row; add a row for it"):
        load_cost_matrix(_csv(tmp_path / "m.csv", ["", *DIGITS], rows[:9]), DIGITS)
    header = ["", *DIGITS]
    header[2] = "7"  # ,0,7,2,...: '7' twice, '1' absent
    with pytest.raises(ValueError, match=r"class '7' appears in two columns; keep one$"):
        load_cost_matrix(_csv(tmp_path / "d.csv", header, rows), DIGITS)
    # a file of costs without the header row is still named as such (its cells repeat: 0,1,1,...)
    bare = tmp_path / "b.csv"
    bare.write_text("\n".join(",".join(r[1:]) for r in rows) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="the header row is missing"):
        load_cost_matrix(bare, DIGITS)
    good = load_cost_matrix(_csv(tmp_path / "g.csv", ["", *DIGITS], rows), DIGITS)
    assert np.array_equal(good, 1 - np.eye(10))


NUMBERS = ["seven", "eight", "nine"]


@pytest.mark.parametrize("where, expected", [
    ("row", "row 'eigth' is not one of the dataset's classes and class 'eight' has no row; did "
            "you mean 'eight' for 'eigth'?; fix the spelling (the file needs one row per class)"),
    ("column", "column 'nein' is not one of the dataset's classes and class 'nine' has no "
               "column; did you mean 'nine' for 'nein'?; fix the spelling (the file needs one "
               "column per class)"),
])
def test_a_misspelt_cost_matrix_name_is_named_beside_its_class(tmp_path, where, expected):
    header, rows = ["", *NUMBERS], _unit_rows(NUMBERS)
    if where == "row":
        rows[1][0] = "eigth"
    else:
        header[3] = "nein"
    path = _csv(tmp_path / "c.csv", header, rows)
    with pytest.raises(ValueError) as info:
        load_cost_matrix(path, NUMBERS)
    assert str(info.value) == f"{path}: {expected}"
    # a name with no close class gets no guess; several at once are all listed
    rows = _unit_rows(NUMBERS) + [["ten", "1", "1", "1"], ["zero", "1", "1", "1"]]
    with pytest.raises(ValueError) as info:
        load_cost_matrix(_csv(tmp_path / "x.csv", ["", *NUMBERS], rows), NUMBERS)
    assert str(info.value).endswith("rows 'ten', 'zero' are not among the dataset's classes; "
                                    "fix the spelling or remove the row")


# ----------------------------------------------------------------------------- 3: all-zero costs
def test_a_cost_matrix_where_every_mistake_costs_0_is_refused(tmp_path):
    tree = LabelTree.from_levels([[0, 0, 1, 1]], leaf_names=["a", "b", "c", "d"])
    names = list(tree.leaves)
    zeros = _csv(tmp_path / "zeros.csv", ["", *names], [[n, "0", "0", "0", "0"] for n in names])
    with pytest.raises(ValueError, match=r"zeros\.csv: every mistake costs 0 .*CRM decisions would "
                                         r"be meaningless; give positive costs for mistakes"):
        resolve_cost_matrix(str(zeros), tree)
    with pytest.raises(ValueError, match="every mistake costs 0"):
        resolve_cost_matrix(np.diag([1.0, 2, 3, 4]), tree)  # only correct predictions cost
    one = np.zeros((4, 4))
    one[0, 3] = 2.0  # one costly mistake is enough
    assert resolve_cost_matrix(one, tree)[0][0, 3] == 2.0
    # the same file as a CPCC target is refused too (a flat target: correlation undefined)
    with pytest.raises(ValueError, match=r"zeros\.csv: CPCC target matrix: every distance between "
                                         r"two classes is 0"):
        load_cpcc_target(zeros, names)


# ----------------------------------------------------------------------------- 4, 5: .npz files
def test_npz_features_beyond_float32_range_say_so_without_a_warning(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3))
    x[:, 0] *= 1e300  # finite float64, beyond float32 (3.4e38)
    path = tmp_path / "big.npz"
    np.savez(path, features=x, labels=np.arange(40) % 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the old cast printed "RuntimeWarning: overflow"
        with pytest.raises(ValueError, match=r"'features' has 40 values in 40 rows beyond "
                                             r"float32's range .*rescale them"):
            load_features(path)
    out = tmp_path / "x"
    err = one_line_error(capsys, main(["diagnose", "--data", "features", "--data-dir", str(path),
                                       "--out", str(out)]), "beyond float32's range")
    assert "non-finite" not in err and not out.exists()


@pytest.mark.parametrize("name, content", [("emb.csv", b"0.1,0.2\n0.3,0.4\n"),
                                           ("emb.npz", b"not a zip archive")])
def test_a_file_that_is_not_an_npz_says_what_features_takes(tmp_path, capsys, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"not an \.npz file .*'features' \[N, d\] and 'labels' "
                                         r"\[N\].*'class_names'.*numpy\.savez\("):
        load_features(path)
    one_line_error(capsys, main(["diagnose", "--data", "features", "--data-dir", str(path),
                                 "--out", str(tmp_path / "x")]), "--data features takes an .npz")
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- 6: misspelt tree leaf
def test_a_misspelt_tree_leaf_is_named_with_a_did_you_mean(tmp_path, capsys):
    names = ["owl", "hawk", "cat", "dog"]
    path = tmp_path / "emb.npz"
    y = np.arange(40) % 4
    np.savez(path, features=np.random.default_rng(0).standard_normal((40, 3)) + y[:, None],
             labels=y, class_names=np.array(names))
    tree = tmp_path / "tree.nwk"
    tree.write_text("((owll,hawk)birds,(cat,dog)pets)root;\n")
    err = one_line_error(capsys, main(["diagnose", "--data", "features", "--data-dir", str(path),
                                       "--tree", str(tree), "--out", str(tmp_path / "x")]),
                         "1 class(es) of", "are not leaves of the tree", ": 'owl'",
                         "the tree's leaves without a class: 'owll'", "did you mean 'owll' for 'owl'?")
    assert "folders" not in err and not (tmp_path / "x").exists()
    # long lists are cut with a count; no close leaf, no guess
    msg = unmatched_classes([f"c{i}" for i in range(9)], [f"leaf{i}" for i in range(7)], "d", "t")
    assert "'c4' ... (+4 more)" in msg and "'leaf4' ... (+2 more)" in msg
    assert "did you mean" not in msg and "\n" not in msg
    assert unmatched_classes(["a"], ["a", "b"], "d", "t") is None


# ----------------------------------------------------------------------------- 7: mistyped flag
@pytest.mark.parametrize("argv, needle", [
    (["train", "--distnce", "fastft"], "unrecognized arguments: --distnce fastft; did you mean --distance?"),
    (["train", "--lamb=3"], "did you mean --lam?"),
    (["evaluate", "run", "--cost-matrx", "c.csv"], "did you mean --cost-matrix?"),
])
def test_a_mistyped_flag_gets_a_did_you_mean(capsys, argv, needle):
    one_line_error(capsys, main(argv), needle)


def test_an_unlike_flag_gets_no_guess(capsys):
    err = one_line_error(capsys, main(["train", "--zzzz"]), "unrecognized arguments: --zzzz")
    assert "did you mean" not in err


# ----------------------------------------------------------------------------- YAML 1.1 leftovers
@pytest.mark.parametrize("text", ["1:00", "1:30", "-1:30.5", "12:00:00", "010"])
def test_sexagesimal_and_octal_yaml_numbers_stay_text(text):
    assert yaml.safe_load(text) != text  # YAML 1.1 reads these as numbers (60, 90, ..., 8)
    assert load_yaml(text) == text and load_value(text) == text
    assert load_yaml("[0, 10, 0x1f, 1_000]") == [0, 10, 31, 1000]


@pytest.mark.parametrize("text, lines", [("lr: 0.1\nlr: 0.2\n", "lines 1 and 2"),
                                         ("a: {b: 1, b: 2}\n", "line 1")])
def test_a_repeated_yaml_key_is_refused(text, lines):
    key = "lr" if "lr" in text else "b"
    with pytest.raises(yaml.YAMLError, match=f"key '{key}' is given twice \\({lines}\\); keep one"):
        load_yaml(text)


def test_key_value_block_yaml_stays_the_typed_text():
    assert [load_value(t) for t in ("-", "- 3", "a: 1", "[4, 5]", "{a: 1}", "x: [")] == \
        ["-", "- 3", "a: 1", [4, 5], {"a": 1}, "x: ["]


@pytest.mark.parametrize("config, flags, needle", [
    ("batch_size: 1:00\n", [], "batch_size must be a positive integer, got '1:00'"),
    ("lr: 0.1\nlr: 0.2\n", [], "key 'lr' is given twice (lines 4 and 5); keep one"),
    ("", ["--data-opt", "train_per_class=1:30"], "train_per_class must be an integer >= 1, got '1:30'"),
    ("", ["--data-opt", "noise=-"], "noise must be a finite number >= 0, got '-'"),
])
def test_yaml_leftovers_are_refused_by_the_cli(tmp_path, capsys, config, flags, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: synthetic\nepochs: 1\ndevice: cpu\n" + config)
    one_line_error(capsys, main(["train", "--config", str(cfg), *flags, "--no-progress",
                                 "--out", str(tmp_path / "r")]), needle)
    assert not (tmp_path / "r").exists()


def test_a_repeated_json_config_key_is_refused(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text('{"data": "synthetic", "lr": 0.1, "lr": 0.2}')
    one_line_error(capsys, main(["train", "--config", str(cfg), "--out", str(tmp_path / "r")]),
                   "key 'lr' is given twice; keep one")


@pytest.mark.parametrize("argv, needle", [
    (["train", "--läm", "2"], "unrecognized arguments: --läm 2; did you mean --lam?; see otcpcc train --help"),
    (["train", "--=x"], "unrecognized arguments: --=x; see otcpcc train --help"),
    (["train", "-=x"], "unrecognized arguments: -=x; see otcpcc train --help"),
    (["evaluate", "run", "--zzzz"], "unrecognized arguments: --zzzz; see otcpcc evaluate --help"),
])
def test_an_unknown_flag_points_to_its_subcommands_help(capsys, argv, needle):
    """Not "see otcpcc --help", and "--=x" is not "ambiguous: could match --help, --version"."""
    one_line_error(capsys, main(argv), needle)
