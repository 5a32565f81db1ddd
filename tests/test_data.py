"""Loading, splitting and standardizing the real UCI files; corrupted copies; user CSVs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from flowsweep.data import DataError, Dataset, load_dataset, standardized

SHAPES = {  # name: (n_train + n_valid, n_test, d); hold-out n_test = round(0.1 * n), n_valid = round(0.1 * n_train)
    "magic": (17118, 1902, 10),
    "turbine": (22191, 14542, 10),
    "sonar": (187, 21, 60),
    "yeast": (1336, 148, 8),
}
FIRST_COLUMNS = {
    "magic": ("fLength", "fWidth", "fSize"),
    "turbine": ("AT", "AP", "AH", "AFDP"),
    "sonar": ("Attribute1", "Attribute2"),
    "yeast": ("mcg", "gvh", "alm"),
}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Never read or fill the user's real cache.
    monkeypatch.setenv("FLOWSWEEP_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shapes_and_columns(name, data_dir, dataset_cfg):
    data = load_dataset(dataset_cfg(name), str(data_dir))
    n_train, n_test, d = SHAPES[name]
    n_valid = round(0.1 * n_train)
    assert isinstance(data, Dataset) and data.name == name
    assert data.train.shape == (n_train - n_valid, d) and data.valid.shape == (n_valid, d)
    assert data.test.shape == (n_test, d) and data.d == d
    assert data.train.dtype == torch.float32 and data.test.dtype == torch.float32
    assert torch.isfinite(data.train).all() and torch.isfinite(data.test).all()
    assert len(data.columns) == d and data.columns[: len(FIRST_COLUMNS[name])] == FIRST_COLUMNS[name]
    assert data.log_det == 0.0


def test_hold_out_size_rule(dataset_cfg, data_dir):
    for name, n in (("magic", 19020), ("sonar", 208), ("yeast", 1484)):
        assert SHAPES[name][1] == round(0.1 * n) and sum(SHAPES[name][:2]) == n
    data = load_dataset(dataset_cfg("sonar", test_fraction=0.25, validation_fraction=0), str(data_dir))
    assert (len(data.train), len(data.valid), len(data.test)) == (156, 0, 52)


def test_turbine_columns_and_fixed_split(dataset_cfg, data_dir):
    data = load_dataset(dataset_cfg("turbine", validation_fraction=0), str(data_dir))
    assert data.columns == ("AT", "AP", "AH", "AFDP", "GTEP", "TIT", "TAT", "TEY", "CDP", "CO")
    raw_2011 = np.loadtxt(data_dir / "turbine" / "gt_2011.csv", delimiter=",", skiprows=1, max_rows=3)
    assert np.allclose(data.train[:3].numpy(), raw_2011[:, :10])
    raw_2015 = np.loadtxt(data_dir / "turbine" / "gt_2015.csv", delimiter=",", skiprows=1)
    assert np.allclose(data.test[-len(raw_2015) :].numpy(), raw_2015[:, :10])
    # split_seed plays no part in a fixed split
    other = load_dataset(dataset_cfg("turbine", split_seed=7, validation_fraction=0), str(data_dir))
    assert torch.equal(data.train, other.train)
    by_position = load_dataset(dataset_cfg("turbine", columns=[0, 10]), str(data_dir))
    assert by_position.columns == ("AT", "NOX") and by_position.test.shape == (14542, 2)
    by_name = load_dataset(dataset_cfg("turbine", columns=["NOX", "AFDP "]), str(data_dir))
    assert by_name.columns == ("NOX", "AFDP")


@pytest.mark.parametrize("name", ["magic", "sonar", "yeast"])
def test_split_is_seeded(name, dataset_cfg, data_dir):
    a = load_dataset(dataset_cfg(name, split_seed=0), str(data_dir))
    b = load_dataset(dataset_cfg(name, split_seed=0), str(data_dir))
    c = load_dataset(dataset_cfg(name, split_seed=1), str(data_dir))
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert not torch.equal(a.test, c.test)
    # Same rows either way, only partitioned differently.

    def rows(ds):
        return np.sort(torch.cat([ds.train, ds.valid, ds.test]).numpy(), axis=0)

    assert np.array_equal(rows(a), rows(c))
    assert len(a.valid) and not torch.equal(a.valid, c.valid)


def test_validation_split_is_cut_from_the_training_rows(dataset_cfg, data_dir):
    whole = load_dataset(dataset_cfg("yeast", validation_fraction=0), str(data_dir))
    cut = load_dataset(dataset_cfg("yeast", validation_fraction=0.25), str(data_dir))
    assert torch.equal(cut.test, whole.test) and len(cut.valid) == round(0.25 * len(whole.train))

    def rows(*parts):
        return np.sort(torch.cat(parts).numpy(), axis=0)

    assert np.array_equal(rows(cut.train, cut.valid), rows(whole.train))
    with pytest.raises(DataError, match=r"dataset\.validation_fraction: 0\.9999 of the 1336 training rows"):
        load_dataset(dataset_cfg("yeast", validation_fraction=0.9999), str(data_dir))


def test_last_validation_rows_are_the_latest_training_rows(dataset_cfg, data_dir):
    whole = load_dataset(dataset_cfg("turbine", validation_fraction=0), str(data_dir))
    cut = load_dataset(dataset_cfg("turbine", validation_fraction=0.1, validation_rows="last"), str(data_dir))
    n_valid = round(0.1 * len(whole.train))
    assert torch.equal(cut.valid, whole.train[-n_valid:]) and torch.equal(cut.train, whole.train[:-n_valid])
    assert n_valid < 7152  # all of them from gt_2013.csv, the year before the test years


def test_dequantize_fills_each_columns_grid(dataset_cfg, data_dir):
    raw = load_dataset(dataset_cfg("yeast"), str(data_dir))
    noisy = load_dataset(dataset_cfg("yeast", dequantize=True), str(data_dir))
    # erl takes two values, 0.5 and 1.0, written with one decimal: the noise fills [v, v + 0.1)
    erl = raw.columns.index("erl")
    assert set(np.round(raw.train[:, erl].numpy(), 4)) == {0.5, 1.0}
    gap = (noisy.train - raw.train).double()
    assert (gap[:, erl] >= 0).all() and (gap[:, erl] < 0.1 + 1e-6).all() and gap[:, erl].std() > 0.02
    others = [j for j in range(raw.d) if j != erl]
    assert (gap[:, others] >= -1e-6).all() and (gap[:, others] < 0.01 + 1e-6).all()
    assert len(torch.unique(noisy.train[:, erl])) > 1000
    again = load_dataset(dataset_cfg("yeast", dequantize=True), str(data_dir))
    assert torch.equal(noisy.train, again.train) and torch.equal(noisy.test, again.test)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_standardize(name, dataset_cfg, data_dir):
    raw = load_dataset(dataset_cfg(name), str(data_dir))
    std = standardized(raw)
    assert std.columns == raw.columns
    assert std.train.mean(0).abs().max() < 1e-4
    assert (std.train.std(0, unbiased=False) - 1).abs().max() < 1e-4
    raw_train = raw.train.double().numpy()
    assert std.log_det == pytest.approx(np.log(raw_train.std(axis=0)).sum(), abs=1e-3)
    mean, scale = raw_train.mean(axis=0), raw_train.std(axis=0)
    assert np.allclose(std.test.numpy(), (raw.test.double().numpy() - mean) / scale, atol=1e-4)
    assert np.allclose(std.valid.numpy(), (raw.valid.double().numpy() - mean) / scale, atol=1e-4)


# --- corrupted copies of the real files -------------------------------------------------


def _copy(data_dir: Path, tmp_path: Path, name: str, fname: str) -> Path:
    target = tmp_path / "data" / name / fname
    target.parent.mkdir(parents=True)
    shutil.copy(data_dir / name / fname, target)
    return target


def _edit_line(path: Path, index: int, edit) -> None:
    lines = path.read_text().split("\n")
    lines[index] = edit(lines[index])
    path.write_text("\n".join(lines))


def _set_field(i: int, value: str):
    def edit(line: str) -> str:
        fields = line.split(",")
        fields[i] = value
        return ",".join(fields)

    return edit


CORRUPTIONS = {
    "truncated mid-line": (lambda p: p.write_bytes(p.read_bytes()[:-25]), "line 19020 has"),
    "rows dropped": (lambda p: p.write_text("".join(p.read_text().splitlines(True)[:-40])), "18980 data rows, expected 19020"),
    "non-numeric cell": (lambda p: _edit_line(p, 99, _set_field(3, "abc")), "line 100, column 'fConc': 'abc' is not a number"),
    "NaN cell": (lambda p: _edit_line(p, 4, _set_field(0, "NaN")), "line 5, column 'fLength': 'NaN' is not a finite number"),
    "empty cell": (lambda p: _edit_line(p, 4, _set_field(9, "")), "line 5, column 'fDist' is empty"),
    "inf cell": (lambda p: _edit_line(p, 7, _set_field(2, "inf")), "line 8, column 'fSize'"),
    "column removed": (
        lambda p: p.write_text("\n".join(",".join(l.split(",")[1:]) if l else l for l in p.read_text().split("\n"))),
        "line 1 has 10 fields, expected 11",
    ),
    "extra field": (lambda p: _edit_line(p, 9, lambda l: l + ",1.0"), "line 10 has 12 fields"),
    "digit flipped": (lambda p: _edit_line(p, 0, lambda l: l.replace("28.7967", "28.7968")), "sha256 is"),
    "blank line": (lambda p: _edit_line(p, 50, lambda l: ""), "line 51 is empty"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupted_magic(kind, data_dir, tmp_path, dataset_cfg):
    corrupt, expected = CORRUPTIONS[kind]
    path = _copy(data_dir, tmp_path, "magic", "magic04.data")
    corrupt(path)
    with pytest.raises(DataError) as err:
        load_dataset(dataset_cfg("magic"), str(tmp_path / "data"))
    message = str(err.value)
    assert str(path) in message and expected in message
    assert "Replace it with the original from https://archive.ics.uci.edu/" in message


def test_corrupted_yeast_whitespace_file(data_dir, tmp_path, dataset_cfg):
    path = _copy(data_dir, tmp_path, "yeast", "yeast.data")
    _edit_line(path, 2, lambda l: l.replace("0.49", "abc", 1))
    with pytest.raises(DataError, match=r"yeast\.data: line 3, column 'alm': 'abc' is not a number"):
        load_dataset(dataset_cfg("yeast"), str(tmp_path / "data"))


def test_corrupted_turbine_file(data_dir, tmp_path, dataset_cfg):
    shutil.copytree(data_dir / "turbine", tmp_path / "data" / "turbine")
    bad = tmp_path / "data" / "turbine" / "gt_2015.csv"
    bad.write_text("".join(bad.read_text().splitlines(True)[:-3]))
    with pytest.raises(DataError, match=r"gt_2015\.csv: 7381 data rows, expected 7384"):
        load_dataset(dataset_cfg("turbine"), str(tmp_path / "data"))


def test_bad_column_choices(data_dir, dataset_cfg):
    with pytest.raises(DataError, match=r"dataset\.columns: position 11 is out of range"):
        load_dataset(dataset_cfg("turbine", columns=[0, 11]), str(data_dir))
    with pytest.raises(DataError, match=r"'class' in .*magic04\.data is a label column"):
        load_dataset(dataset_cfg("magic", columns=["fLength", "class"]), str(data_dir))
    with pytest.raises(DataError, match=r"gt_2011\.csv has no column\(s\) \['SOX'\]"):
        load_dataset(dataset_cfg("turbine", columns=["AT", "SOX"]), str(data_dir))


# --- dataset=csv --------------------------------------------------------------------------


def _write_csv(path: Path, rows: int = 60) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 3))
    lines = ["id,a,b,c"] + [f"r{i},{a!r},{b!r},{c!r}" for i, (a, b, c) in enumerate(x.tolist())]
    path.write_text("\n".join(lines) + "\n")
    return x


def test_csv_good_file(tmp_path, dataset_cfg):
    path = tmp_path / "my.csv"
    x = _write_csv(path)
    data = load_dataset(dataset_cfg("csv", path=str(path), columns=["c", "a"]), None)
    assert data.columns == ("c", "a") and data.train.shape == (49, 2) and data.test.shape == (6, 2)
    got = np.sort(torch.cat([data.train, data.valid, data.test]).double().numpy(), axis=0)
    assert np.allclose(got, np.sort(x[:, [2, 0]], axis=0))
    data = standardized(load_dataset(dataset_cfg("csv", path=str(path), columns=[1, 2, 3]), None))
    assert data.columns == ("a", "b", "c") and data.log_det != 0.0


def test_csv_errors(tmp_path, dataset_cfg):
    path = tmp_path / "my.csv"
    _write_csv(path)
    with pytest.raises(DataError, match=r"my\.csv has no column\(s\) \['z'\].*\['id', 'a', 'b', 'c'\]"):
        load_dataset(dataset_cfg("csv", path=str(path), columns=["a", "z"]), None)
    with pytest.raises(DataError, match=r"my\.csv: line 2, column 'id': 'r0' is not a number"):
        load_dataset(dataset_cfg("csv", path=str(path)), None)  # all columns, 'id' is text
    _edit_line(path, 7, _set_field(2, "x1"))
    with pytest.raises(DataError, match=r"my\.csv: line 8, column 'b': 'x1' is not a number"):
        load_dataset(dataset_cfg("csv", path=str(path), columns=["a", "b"]), None)
    with pytest.raises(DataError, match=r"^dataset\.path is not set"):
        load_dataset(dataset_cfg("csv"), None)
    with pytest.raises(DataError, match=r"nope\.csv: no such file \(dataset\.path\)"):
        load_dataset(dataset_cfg("csv", path=str(tmp_path / "nope.csv")), None)


def test_constant_column_cannot_be_standardized(tmp_path, dataset_cfg):
    path = tmp_path / "flat.csv"
    path.write_text("u,v\n" + "".join(f"{i},3.5\n" for i in range(20)))
    assert load_dataset(dataset_cfg("csv", path=str(path)), None).d == 2
    with pytest.raises(DataError, match=r"model\.preprocess: column\(s\) \['v'\] of csv are constant"):
        standardized(load_dataset(dataset_cfg("csv", path=str(path)), None))


def test_integer_columns_constant_in_every_row_train_after_dequantization(tmp_path, dataset_cfg):
    # load_digits as a user writes it: integer pixels, some always 0 (equal to each other).
    path = tmp_path / "digits.csv"
    rng = np.random.default_rng(0)
    pixels = np.concatenate([np.zeros((80, 3), dtype=int), rng.integers(0, 17, size=(80, 4))], axis=1)
    path.write_text("p0,p1,p2,p3,p4,p5,p6\n" + "".join(",".join(map(str, row)) + "\n" for row in pixels))
    data = standardized(load_dataset(dataset_cfg("csv", path=str(path), dequantize=True), None))
    assert data.d == 7 and data.widths == (1.0,) * 7  # each column its own uniform noise of width 1
    assert not torch.equal(data.train[:, 0], data.train[:, 1])
    with pytest.raises(DataError, match=r"columns 'p0' and 'p1' hold the same value in every row"):
        load_dataset(dataset_cfg("csv", path=str(path), dequantize=False), None)
