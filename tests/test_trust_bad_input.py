"""Issue 9, items 17-20: every bad input gives one line and exit status 2 (CLI) or a one-line
ValueError (library); deep trees work; small inputs cannot allocate without bound."""

from __future__ import annotations

import io
import json
import pickle
import resource
import zipfile

import numpy as np
import pytest
import torch

from cli_errors import one_line_error
from fakes import dump_pickle, inat_category, write_cifar10, write_image_folder, write_inat2021
from otcpcc import CPCCLoss, LabelTree, class_distances
from otcpcc.cli import commands as cli
from otcpcc.cli import main
from otcpcc.data.cifar import load_cifar10
from otcpcc.data.features import load_features
from otcpcc.data.inat import load_inat2021
from otcpcc.data.safe_pickle import UnsafePickleError, safe_loads

TINY = ["--data", "synthetic", "--data-opt", "train_per_class=12", "--data-opt",
        "test_per_class=6", "--data-opt", "branching=[2, 3]", "--model-opt", "hidden=[16]",
        "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--no-progress"]
TREE = LabelTree.from_levels([[0, 0, 1, 1, 2, 2]])
Y = torch.arange(30) % 6


def max_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


# ----------------------------------------------------------------------------- library (18)
@pytest.mark.parametrize("call, needle", [
    (lambda: CPCCLoss(TREE)(torch.zeros(30, 0), Y), "0 dimensions"),
    (lambda: LabelTree.from_parents([("a", "b")]), "use LabelTree.from_edges"),
    (lambda: TREE.index(["x"]), "is a list; pass one name"),
    (lambda: class_distances(torch.randn(30, 4), Y, "swd", projections=[[1.0] * 4]),
     "projections must be a floating-point torch tensor"),
    (lambda: LabelTree.from_levels([[0, 10**12]]), "at most ids 0..1"),
    (lambda: CPCCLoss(TREE, "swd", n_projections=10**9), "above 100000: time and memory"),
])
def test_library_bad_input_is_a_one_line_value_error(call, needle):
    with pytest.raises(ValueError, match=needle) as info:
        call()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("distance", ["l2", "emd", "sinkhorn", "swd", "fastft"])
def test_distances_that_overflow_float32_are_one_line_errors(distance):
    """Finite float32 features whose distances (4e38) overflow: each distance says so in one line
    (emd returned NaN silently, sinkhorn blamed reg=nan)."""
    x = torch.tensor([[1e38] * 4, [1e38, 1e38, 1e38, 0.0], [-1e38] * 4, [-1e38, -1e38, -1e38, 0.0],
                      [0.0] * 4, [0.0, 0.0, 0.0, 1.0]])
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    if distance == "swd":  # projections onto unit directions: its values (≤ 2.3e38 here) fit
        assert torch.isfinite(class_distances(x, y, distance)[1]).all()
        return
    for call in (lambda: class_distances(x, y, distance),
                 lambda: CPCCLoss(LabelTree.from_levels([[0, 0, 1]]), distance)(x, y)):
        with pytest.raises(ValueError, match=f"^{distance} distances are not finite although the "
                                              "features are; .* normalise the features$"):
            call()


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32])
def test_any_integer_label_dtype_is_accepted(dtype):
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    expected = CPCCLoss(TREE, "fastft")(x, Y)
    assert float(CPCCLoss(TREE, "fastft")(x, Y.to(dtype))) == pytest.approx(float(expected))


# ----------------------------------------------------------------------------- deep trees (17)
def test_a_1200_level_chain_reads_writes_and_reads_back(tmp_path):
    edges = "\n".join(f"n{i} n{i + 1}" for i in range(1200)) + "\nn0 side\n"
    (tmp_path / "chain.txt").write_text(edges)
    tree = LabelTree.from_file(tmp_path / "chain.txt")
    assert tree.distance_matrix()[0, 1] == 1201
    for suffix in ("json", "txt", "nwk"):
        tree.to_file(tmp_path / f"out.{suffix}")
        back = LabelTree.from_file(tmp_path / f"out.{suffix}")
        assert back.leaves == tree.leaves
        np.testing.assert_array_equal(back.distance_matrix(), tree.distance_matrix())


def test_a_shallow_tree_is_still_written_nested(tmp_path):
    tree = LabelTree.from_parents({"cat": "mammal", "dog": "mammal", "trout": "animal",
                                   "mammal": "animal"})
    tree.to_file(tmp_path / "t.json")
    assert json.loads((tmp_path / "t.json").read_text()) == {
        "animal": {"mammal": {"cat": {}, "dog": {}}, "trout": {}}}


def test_json_nested_3000_deep_is_one_line(tmp_path):
    (tmp_path / "deep.json").write_text('{"a":' * 3000 + "{}" + "}" * 3000)
    with pytest.raises(ValueError, match="deeper than Python's parser allows.*flat form"):
        LabelTree.from_file(tmp_path / "deep.json")


# ----------------------------------------------------------------------------- iNat (17)
def _inat(tmp_path):
    cats = [inat_category(i, "Animalia", "Chordata", "Aves", "O", "F", f"G{i}", "x")
            for i in range(2)]
    write_inat2021(tmp_path, cats, train_per_class=1, val_per_class=1)
    return json.loads((tmp_path / "train_mini.json").read_text())


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d["categories"][0].update(id=[0]), "category id [0] is a list"),
    (lambda d: d["categories"][0].update(id="0"), "category id '0' is a str"),
    (lambda d: d["annotations"][0].update(category_id=[0]), "category_id [0] is a list"),
    (lambda d: d["annotations"][0].update(image_id={"a": 1}), "image_id {'a': 1} is a dict"),
    (lambda d: d["images"][0].update(file_name=5), "has file_name 5"),
    (lambda d: d["images"][0].update(file_name=None), "has file_name None"),
])
def test_inat_field_types(tmp_path, edit, needle):
    data = _inat(tmp_path)
    edit(data)
    (tmp_path / "train_mini.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        load_inat2021(tmp_path)


def test_inat_deep_json(tmp_path):
    _inat(tmp_path)
    (tmp_path / "train_mini.json").write_text('{"images": ' + "[" * 3000 + "]" * 3000 + "}")
    with pytest.raises(ValueError, match="train_mini.json: JSON nested deeper"):
        load_inat2021(tmp_path)


# ----------------------------------------------------------------------------- npz (17, 20)
def _npz(path, **arrays):
    base = {"features": np.zeros((10, 3), np.float32), "labels": np.array([0, 1] * 5)}
    np.savez(path, **{**base, **arrays})
    return path


@pytest.mark.parametrize("arrays, needle", [
    ({"labels": np.array([0] * 9 + [2**62])}, "implies 4611686018427387905 classes for 10"),
    ({"levels": np.array([[0, 1e11]])}, "'levels': level 'level1' has id 100000000000"),
    ({"class_names": np.array(["a", "a"])}, "'class_names' lists 'a' twice"),
    ({"tree_parents": np.array('{"a":' * 3000 + "1" + "}" * 3000)}, "nested too deeply"),
])
def test_npz_bad_arrays(tmp_path, arrays, needle):
    with pytest.raises(ValueError, match=needle):
        load_features(_npz(tmp_path / "f.npz", **arrays))


def test_npz_with_a_lying_npy_header_is_refused_before_allocating(tmp_path):
    buf = io.BytesIO()
    np.save(buf, np.arange(10))
    raw = buf.getvalue()
    text = "{'descr': '<i8', 'fortran_order': False, 'shape': (10000000000,), }".ljust(117)
    with zipfile.ZipFile(tmp_path / "f.npz", "w") as z:
        z.writestr("labels.npy", raw[:10] + (text + "\n").encode() + raw[128:])
        feats = io.BytesIO()
        np.save(feats, np.zeros((10, 3), np.float32))
        z.writestr("features.npy", feats.getvalue())
    with pytest.raises(ValueError, match=r"'labels' header claims shape \(10000000000,\)"):
        load_features(tmp_path / "f.npz")


# ----------------------------------------------------------------------------- CIFAR (17, 19, 20)
@pytest.mark.parametrize("names, needle", [
    (5, "'label_names' must be a list of names"),
    (["airplane", "airplane"] + [f"c{i}" for i in range(8)], "lists 'airplane' twice"),
    ([b"\xff\xfe"] + [f"c{i}".encode() for i in range(9)], r"batches.meta: label_names\[0\]"),
])
def test_cifar_label_names(tmp_path, names, needle):
    write_cifar10(tmp_path)
    meta = tmp_path / "cifar-10-batches-py" / "batches.meta"
    dump_pickle({b"label_names": names}, meta, py2=False)
    with pytest.raises(ValueError, match=needle):
        load_cifar10(tmp_path)


def test_a_32_byte_pickle_cannot_build_a_3_gb_bytearray():
    data = b"\x80\x02c__builtin__\nbytearray\n\x8a\x05\x00^\xd0\xb2\x00\x85R."
    before = max_rss_gb()
    with pytest.raises(UnsafePickleError, match="an integer would allocate"):
        safe_loads(data)
    assert max_rss_gb() - before < 1.0


def test_a_dtype_state_cannot_set_object_flags():
    raw = bytearray(pickle.dumps(np.arange(3.0), protocol=2))
    i = raw.index(b"X\x02\x00\x00\x00f8")
    raw[i + 5:i + 7] = b"V8"
    raw[raw.index(b"J\xff\xff\xff\xffK\x00t") + 6] = 63  # flags: NPY_OBJECT's
    with pytest.raises(UnsafePickleError, match="object or pointer dtypes are not allowed"):
        safe_loads(bytes(raw))


def test_safe_pickle_still_loads_numpy_arrays():
    obj = {b"data": np.arange(12, dtype=np.uint8).reshape(3, 4), b"labels": [1, 2],
           b"rec": np.zeros(2, dtype=[("a", "f4"), ("b", "U3")]), b"ba": bytearray(b"xy")}
    for proto in (2, 4):
        back = safe_loads(pickle.dumps(obj, protocol=proto))
        np.testing.assert_array_equal(back[b"data"], obj[b"data"])
        assert back[b"rec"].dtype == obj[b"rec"].dtype and back[b"ba"] == b"xy"


# ----------------------------------------------------------------------------- CLI (17, 19, 20)
@pytest.mark.parametrize("content, needle", [
    ("tree: 5\n", "tree must be a path"),
    ("weights: 5\n", "weights must be a path"),
    ("data_dir: [1, 2]\n", "data_dir must be a path"),
    ("data: [synthetic]\n", "data must be a string"),
])
def test_config_file_field_types(tmp_path, capsys, content, needle):
    (tmp_path / "c.yaml").write_text(content)
    code = main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r")])
    one_line_error(capsys, code, needle)
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("trust") / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


def test_bad_types_in_a_runs_config_on_resume_and_evaluate(tiny_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "tree": 5}))
    one_line_error(capsys, main(["train", "--out", str(run), "--resume", "--no-progress"]),
                   "tree must be a path")
    one_line_error(capsys, main(["evaluate", str(run)]), "tree must be a path")


@pytest.mark.parametrize("argv, needle", [
    (["evaluate", "RUN", "--device", "xyz"], "unknown device 'xyz'"),
    (["diagnose", "--max-per-class", "0"], "expected an integer >= 1"),
    (["train", *TINY, "--out", ""], "empty path"),
    (["train", *TINY, "--data-opt", "branching=[1000,1000]", "--out", "OUT"],
     "over the limit of 1,000,000,000"),
])
def test_cli_bad_flags(tiny_run, tmp_path, capsys, argv, needle):
    argv = [str(tiny_run) if a == "RUN" else str(tmp_path / "o") if a == "OUT" else a
            for a in argv]
    one_line_error(capsys, main(argv), needle)


def test_a_worker_traceback_becomes_one_short_line(tmp_path, capsys):
    write_image_folder(tmp_path / "imgs", ["a", "b"], train_per_class=2, val_per_class=1)
    (tmp_path / "imgs" / "train" / "a" / "a_0.JPEG").write_bytes(b"not a jpeg")
    code = main(["train", "--data", "folder", "--data-dir", str(tmp_path / "imgs"),
                 "--epochs", "1", "--distance", "none", "-b", "2", "-j", "1", "--arch", "cnn", "--device", "cpu",
                 "--no-progress", "--out", str(tmp_path / "r")])
    err = one_line_error(capsys, code, "a_0.JPEG")
    assert len(err) < 400, err


def test_one_line_keeps_the_original_error_of_a_worker():
    e = ValueError("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most "
                   "recent call last):\n  File \"x.py\", line 1, in f\n    g()\nValueError: "
                   "bad image /d/a.jpg (cannot identify image file)")
    assert cli._one_line(e) == "bad image /d/a.jpg (cannot identify image file)"


def test_ctrl_c_during_imports_is_one_line(monkeypatch, capsys):
    def interrupted(argv):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "_main", interrupted)
    assert main(["train"]) == 130
    assert capsys.readouterr().err == "otcpcc: interrupted\n"


def test_importing_the_cli_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, otcpcc.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
