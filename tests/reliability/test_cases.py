"""Bad input, table-driven and in-process: every case runs ``main.py``'s real entry point
(:mod:`.inprocess`) and must end with a non-zero exit, one clear line naming the key,
value, column or file, no traceback, within seconds, and no MLflow run FINISHED or left
RUNNING in the case's real store.

Each row of :data:`CASES` is ``name: Case(args, message, code, setup)``: ``args`` are added
to the tiny job (:data:`.conftest.TINY`, ``layout=opt`` for ``search.*`` rows), ``{root}``
is the case's folder. The promise these rows hold is written down in docs/reliability.md.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch
from mlflow.tracking import MlflowClient

from .conftest import all_runs, tiny
from .inprocess import run_main
from .servers import free_port

YEAST = "yeast/yeast.data"
CLOSED_PORT = free_port()


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    message: str
    code: int = 2
    #: Prepares the case folder; a process it returns (one holding a lock) is killed after the case.
    setup: Optional[Callable[[Path, Path], Optional[subprocess.Popen]]] = None
    within_s: float = 10.0


def _hydra(*args: str, message: str) -> Case:
    return Case(args, message, code=1)


def _err(*args: str, message: str, **kw) -> Case:
    return Case(args, "flowsweep: error: " + message, **kw)


# -- setups ------------------------------------------------------------------------

def _copy_yeast(root: Path, data_dir: Path) -> Path:
    target = root / "data" / YEAST
    target.parent.mkdir(parents=True)
    shutil.copy(data_dir / YEAST, target)
    return target


def _edit_yeast(index: int, position: int, value: Optional[str]) -> Callable[[Path, Path], None]:
    def setup(root: Path, data_dir: Path) -> None:
        path = _copy_yeast(root, data_dir)
        lines = path.read_text().splitlines(keepends=True)
        fields = lines[index].split()
        if value is None:
            fields.pop(position)
        else:
            fields[position] = value
        lines[index] = "  ".join(fields) + "\n"
        path.write_text("".join(lines))
    return setup


def _truncate(root: Path, data_dir: Path) -> None:
    path = _copy_yeast(root, data_dir)
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"\n", len(data) // 2) - 7])


def _write(name: str, text: str) -> Callable[[Path, Path], None]:
    return lambda root, data_dir: (root / name).write_text(text)


_ROWS = "".join(f"{i}.5,{i % 7}.25,{(3 * i) % 11}.5\n" for i in range(300))
_CSV = "dataset=csv", "dataset.path={root}/t.csv", "dataset.batch_size=8"


def _sqlite_of_another_app(root: Path, data_dir: Path) -> None:
    with sqlite3.connect(root / "other.db") as connection:
        connection.execute("CREATE TABLE notes (body TEXT)")


_TEMPLATE: list[Path] = []


def _store(root: Path) -> MlflowClient:
    """A client of ``root/mlflow.db``, a copy of an empty store made once (MLflow's schema takes seconds)."""
    if not _TEMPLATE:
        import tempfile

        _TEMPLATE.append(Path(tempfile.mkdtemp(prefix="flowsweep-store-")) / "mlflow.db")
        MlflowClient(f"sqlite:///{_TEMPLATE[0]}").search_experiments()
    shutil.copy(_TEMPLATE[0], root / "mlflow.db")
    return MlflowClient(f"sqlite:///{root / 'mlflow.db'}")


def _locked_by_another_process(root: Path, data_dir: Path) -> subprocess.Popen:
    """A real second process holding sqlite's exclusive lock on an MLflow store (until it is killed)."""
    _store(root)
    holder = subprocess.Popen([sys.executable, "-c", "import sqlite3, sys, time\n"
                               "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                               "c.execute('BEGIN EXCLUSIVE'); print('held', flush=True); time.sleep(120)",
                               str(root / "mlflow.db")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def _deleted_experiment(root: Path, data_dir: Path) -> None:
    client = _store(root)
    client.delete_experiment(client.create_experiment("gone"))


def _artifacts_unwritable(root: Path, data_dir: Path) -> None:
    client = _store(root)
    client.create_experiment("flowsweep", artifact_location="file:///proc/flowsweep-artifacts")


# -- the table ---------------------------------------------------------------------

def _full(expected: str) -> str:
    """``>= 1, got 0`` -> ``must be >= 1, got 0``; ``finite number`` -> ``must be a finite number``."""
    if expected.startswith("finite"):
        return "must be a " + expected
    return "must be " + expected if expected[0] in "<>" else expected


def _bounds() -> dict[str, Case]:
    """Values out of range, non-finite, or of the wrong type, key by key."""
    rows = {
        "depth.layers": [("0", ">= 1, got 0"), ("-3", ">= 1, got -3"), ("257", "<= 256, got 257"),
                         ("100000", "<= 256, got 100000")],
        "instances": [("0", ">= 1, got 0"), ("-1", ">= 1, got -1"), ("10001", "<= 10000, got 10001")],
        "seed": [("-1", ">= 0, got -1")],
        "dataset.split_seed": [("-1", ">= 0, got -1")],
        "train.steps": [("0", ">= 1, got 0"), ("-1", ">= 1, got -1"), ("1099511627776", "<= 1e+07"),
                        ("10000001", "<= 1e+07")],
        "train.step_size_up": [("0", ">= 1, got 0")],
        "train.threads": [("0", ">= 1, got 0"), ("-1", ">= 1, got -1"), ("5000", "<= 1024")],
        "train.eval_every": [("0", ">= 1, got 0")],
        "train.patience": [("0", ">= 1, got 0"), ("-2", ">= 1, got -2")],
        "train.base_lr": [("0", "> 0, got 0"), ("-1", "> 0, got -1"), ("nan", "finite number, got nan"),
                          ("inf", "finite number, got inf"), ("0.1", "needs 0 < train.base_lr <= train.max_lr")],
        "train.max_lr": [("0", "> 0, got 0"), ("-1", "> 0, got -1"), ("nan", "finite number, got nan"),
                         ("inf", "finite number, got inf"), ("-inf", "finite number, got -inf"),
                         ("11", "<= 10, got 11"), ("1e9", "<= 10, got 1e+09")],
        "train.momentum": [("-0.1", ">= 0, got -0.1"), ("1.0", "< 1, got 1"), ("nan", "finite number")],
        "train.weight_decay": [("-1", ">= 0, got -1"), ("nan", "finite number, got nan"),
                               ("inf", "finite number, got inf"), ("2", "<= 1, got 2")],
        "train.clip_norm": [("0", "> 0, got 0"), ("-1", "> 0, got -1"), ("nan", "finite number"),
                            ("inf", "finite number")],
        "model.m": [("0", ">= 1, got 0"), ("8", "must be in 1..d-1 = 1..7, got 8")],
        "dependence.rows": [("1", ">= 2, got 1")],
        "dependence.discount": [("-0.1", ">= 0"), ("1.5", "<= 1, got 1.5"), ("nan", "finite number")],
        "dataset.batch_size": [("0", ">= 1, got 0"), ("5000", "5000 is larger than the training split (1202 rows)")],
        "dataset.validation_fraction": [("-0.1", ">= 0"), ("1.0", "< 1, got 1"), ("nan", "finite number"),
                                        ("0.0001", "0.0001 leaves 0 validation rows, fewer than 10"),
                                        ("0.005", "0.005 leaves 7 validation rows, fewer than 10")],
        "dataset.test_fraction": [("0", "> 0, got 0"), ("1", "< 1, got 1"), ("nan", "finite number")],
        "tracking.curve_points": [("0", ">= 1, got 0")],
        "tracking.progress_interval_s": [("0", "> 0, got 0"), ("-1", "> 0, got -1"), ("nan", "finite number")],
    }
    cases = {f"{key}={value}": _err(f"{key}={value}", message=f"{key}: {_full(expected)}")
             for key, values in rows.items() for value, expected in values}
    cases["model.hidden=0"] = _err("model.hidden=0", message="model.hidden: must be a layer width in 1..65536")
    cases["model.hidden=[8,0]"] = _err("model.hidden=[8,0]", message="model.hidden: must be a layer width in 1..65536")
    cases["model.bins=0"] = _err("model.bins=0", message="model.bins: must be >= 2, got 0")
    cases["model.bins=1"] = _err("model.bins=1", message="model.bins: must be >= 2, got 1")
    if not torch.cuda.is_available():  # the one line a CPU-only PyTorch gives where a GPU is asked for
        cases["train.kernel=cuda"] = _err("train.kernel=cuda", message="train.kernel: cuda: PyTorch ")
    cases["model.tail_bound=0"] = _err("model.tail_bound=0", message="model.tail_bound: must be > 0, got 0")
    cases["depth=-3"] = _err("depth=-3", message="depth.layers: must be >= 1, got -3")
    cases["depth=100000"] = _err("depth=100000", message="depth.layers: must be <= 256, got 100000")
    cases["patience without validation"] = _err("dataset.validation_fraction=0", message="train.patience: early "
                                                "stopping needs a validation split")
    cases["empty experiment name"] = _err("tracking.experiment=''", message="tracking.experiment: must be a "
                                          "non-empty experiment name")
    return cases


_DATASETS = ("csv, magic, sonar, synthetic, synthetic_hetero, synthetic_mixed, synthetic_pairs, synthetic_scale, "
             "synthetic_tree, synthetic_wave, synthetic_wide, turbine, yeast")
_CHOICE_KEYS = ["model.preprocess", "model.order", "model.constant", "model.direction", "model.init",
                "model.conditioner", "dependence.measure", "train.optimizer", "train.schedule", "train.mode",
                "train.kernel", "dataset.validation_rows"]

CASES: dict[str, Case] = {
    # An option conf/ does not have: one line with the options there are, before Hydra composes.
    "dataset=nope": _err("dataset=nope", message=f"dataset: no option 'nope' in conf/dataset/; choose from {_DATASETS}"),
    "layout=nope": _err("layout=nope", message="layout: no option 'nope' in conf/layout/; choose from best_known, "
                                               "dependence, file, opt, oracle, parity, random"),
    "search=nope": _err("search=nope", message="search: no option 'nope' in conf/search/; choose from"),
    "depth=abc": _err("depth=abc", message="depth: no option 'abc' in conf/depth/; choose from 2, 4, 6, 8"),
    "+experiment=nope": _err("+experiment=nope", message="experiment: no option 'nope' in conf/experiment/"),
    "hparams_search=nope": _err("hparams_search=nope", message="hparams_search: no option 'nope' in "
                                                               "conf/hparams_search/; choose from optuna, sgd_optuna"),
    "a sweep with one unknown option": _err("-m", "dataset=yeast,nope", message="dataset: no option 'nope'"),
    "search/evaluation=nope": _err("layout=opt", "search/evaluation=nope",
                                   message="search/evaluation: no option 'nope' in conf/search/evaluation/"),
    # Hydra's composition (exit 1): values that are not of the key's type.
    "instances=abc": _hydra("instances=abc", message="Value 'abc' of type 'str' could not be converted to Integer"),
    "depth=2.5": _hydra("depth=2.5", message="full_key: depth.layers"),
    "train.steps=abc": _hydra("train.steps=abc", message="full_key: train.steps"),
    "train.steps=1.5": _hydra("train.steps=1.5", message="full_key: train.steps"),
    "train.max_lr=abc": _hydra("train.max_lr=abc", message="full_key: train.max_lr"),
    "train.weight_decay=abc": _hydra("train.weight_decay=abc", message="full_key: train.weight_decay"),
    "seed=abc": _hydra("seed=abc", message="full_key: seed"),
    "progress=maybe": _hydra("progress=maybe", message="full_key: progress"),
    "dataset.batch_size=abc": _hydra("dataset.batch_size=abc", message="full_key: dataset.batch_size"),
    "model.m=abc": _hydra("model.m=abc", message="full_key: model.m"),
    "train.foo=1 (no +)": _hydra("train.foo=1", message="Key 'foo' not in 'TrainConfig'"),
    "foo=1 (no +)": _hydra("foo=1", message="Could not override 'foo'"),
    # Values: bounds, finiteness, relations (flowsweep's checks, exit 2).
    **_bounds(),
    **{f"{key}=foo": _err(f"{key}=foo", message=f"{key}: must be one of") for key in _CHOICE_KEYS},
    # Keys the schema does not know, added with + (a typo would be logged and change nothing).
    **{f"+{key}": _err(f"+{key}", message=f"{key.split('=')[0]}: unknown key (+{key})")
       for key in ("foo=bar", "instnaces=5", "train.stpes=5", "dataset.foo=1", "model.hiden=3",
                   "tracking.foo=1", "dependence.foo=1", "search.foo=1", "layout.foo=1")},
    "++foo=1": _err("++foo=1", message="foo: unknown key (++foo=1)"),
    # search.* where no search runs.
    **{f"layout={layout} {arg}": _err(f"layout={layout}", arg, message=f"{arg.split('=')[0]}: is set ({arg}) but "
                                      f"layout={layout} does not search")
       for layout, arg in (("parity", "search.candidates=8"), ("parity", "search.evaluation.steps=10"),
                           ("random", "search.eta=3"), ("dependence", "search.margin=1.0"),
                           ("parity", "search.evaluation.recipe.max_lr=0.1"))},
    # search.* and search.evaluation.* keys, typed and in range (layout=opt).
    **{f"search {arg}": _err("layout=opt", *pre, arg, message=msg) for pre, arg, msg in (
        ((), "search.candidates=0", "search.candidates: must be >= 1, got 0"),
        ((), "search.candidates=abc", "search.candidates: must be an integer, got 'abc'"),
        ((), "search.candidates=1.5", "search.candidates: must be an integer, got 1.5"),
        ((), "search.eta=abc", "search.eta: must be an integer, got 'abc'"),
        ((), "search.eta=1", "search.eta: must be >= 2, got 1"),
        ((), "search.margin=nan", "search.margin: must be a finite number, got nan"),
        ((), "search.margin=-1", "search.margin: must be >= 0, got -1"),
        ((), "search.small_split_margin=nan", "search.small_split_margin: must be a finite number, got nan"),
        ((), "search.small_split_rows=-1", "search.small_split_rows: must be >= 0, got -1"),
        ((), "search.small_split_rows=1.5", "search.small_split_rows: must be an integer, got 1.5"),
        ((), "search.swap_p=5", "search.swap_p: must be <= 1, got 5"),
        ((), "search.swap_p=0", "search.swap_p: must be > 0, got 0"),
        ((), "search.explore=-1", "search.explore: must be >= 0, got -1"),
        ((), "search.explore=2", "search.explore: must be <= 1, got 2"),
        ((), "search.random_share=2", "search.random_share: must be <= 1, got 2"),
        ((), "search.rungs=[0]", "search.rungs: must be >= 1, got 0"),
        ((), "search.rungs=abc", "search.rungs: must be a list, got 'abc'"),
        ((), "search.finalists=0", "search.finalists: must be >= 1, got 0"),
        ((), "search.keep=[1]", "search.keep: must be a word, got 1"),
        ((), "search.evaluation.steps=abc", "search.evaluation.steps: must be an integer, got 'abc'"),
        ((), "search.evaluation.steps=0", "search.evaluation.steps: must be >= 1, got 0"),
        ((), "search.evaluation.replicas=0", "search.evaluation.replicas: must be >= 1, got 0"),
        ((), "search.evaluation.value=foo", "search.evaluation.value: must be one of"),
        ((), "search.evaluation.recipe.optimizer=foo", "search.evaluation.recipe.optimizer: must be one of"),
        ((), "search.evaluation.recipe.max_lr=-1", "search.evaluation.recipe.max_lr: must be > 0, got -1"),
        ((), "search.evaluation.recipe.max_lr=nan", "search.evaluation.recipe.max_lr: must be a finite number"),
        ((), "search.evaluation.recipe.weight_decay=nan", "search.evaluation.recipe.weight_decay: must be a finite"),
        (("search=evolutionary",), "search.iterations=-1", "search.iterations: must be >= 0, got -1"),
        (("search=evolutionary",), "search.patience=0", "search.patience: must be >= 1, got 0"),
        (("search=evolutionary",), "search.geometric_p=0", "search.geometric_p: must be > 0, got 0"),
        (("search=guided",), "search.offspring=0", "search.offspring: must be >= 1, got 0"),
        (("search=guided",), "search.reevaluate=maybe", "search.reevaluate: must be true or false"),
        (("search=regularized",), "search.population=1", "search.population: must be >= 2, got 1"),
        (("search=regularized",), "search.mutation=foo", "search.mutation: must be 'reshuffle' or 'swap'"),
    )},
    # Data files.
    "data_dir missing": _err("data_dir={root}/nowhere",
                             message="yeast.data not found in {root}/nowhere/yeast/ nor in the cache"),
    "non-numeric cell": _err("data_dir={root}/data", setup=_edit_yeast(9, 1, "x.40"),
                             message="{root}/data/yeast/yeast.data: line 10, column 'mcg': 'x.40' is not a number"),
    "nan cell": _err("data_dir={root}/data", setup=_edit_yeast(9, 3, "nan"),
                     message="{root}/data/yeast/yeast.data: line 10, column 'alm': 'nan' is not a finite number"),
    "inf cell": _err("data_dir={root}/data", setup=_edit_yeast(9, 3, "inf"),
                     message="{root}/data/yeast/yeast.data: line 10, column 'alm': 'inf' is not a finite number"),
    "cell beyond float32": _err("data_dir={root}/data", setup=_edit_yeast(9, 3, "1e300"),
                                message="{root}/data/yeast/yeast.data: line 10, column 'alm': 1e+300 is beyond the "
                                        "float32 range"),
    "wrong column count": _err("data_dir={root}/data", setup=_edit_yeast(9, 3, None),
                               message="{root}/data/yeast/yeast.data: line 10 has 9 fields, expected 10"),
    "truncated": _err("data_dir={root}/data", setup=_truncate,
                      message="{root}/data/yeast/yeast.data: 743 data rows, expected 1484; the file is truncated"),
    "csv missing": _err(*_CSV, message="{root}/t.csv: no such file (dataset.path)"),
    "csv without the named columns": _err(*_CSV, "dataset.columns=[a,x]", setup=_write("t.csv", "a,b,c\n" + _ROWS),
                                          message="{root}/t.csv has no column(s) ['x'] (asked for by dataset.columns)"),
    "csv with a copied column": _err(*_CSV, "dataset.dequantize=false", setup=_write("t.csv", "a,b,c\n" + "".join(
        f"{i}.5,{i % 7}.25,{i}.5\n" for i in range(50))),
        message="{root}/t.csv: columns 'a' and 'c' hold the same value in every row"),
    "csv of identical rows": _err(*_CSV, setup=_write("t.csv", "a,b,c\n" + "1.0,2.0,3.5\n" * 300),
                                  message="{root}/t.csv: all 300 data rows are the same"),
    "csv with a cell of 1e300": _err(*_CSV, setup=_write("t.csv", "a,b,c\n" + _ROWS + "1e300,1,2\n"),
                                     message="{root}/t.csv: line 302, column 'a': 1e+300 is beyond the float32 range"),
    "csv with a cell of -1e39": _err(*_CSV, setup=_write("t.csv", "a,b,c\n" + _ROWS + "1,-1e39,2\n"),
                                     message="{root}/t.csv: line 302, column 'b': -1e+39 is beyond the float32 range"),
    "csv without a header": _err(*_CSV, setup=_write("t.csv", _ROWS),
                                 message="{root}/t.csv: line 1 ('0.5,0.25,0.5') is a row of numbers, not a header"),
    "csv empty": _err(*_CSV, setup=_write("t.csv", ""), message="{root}/t.csv: line 1 should be a header row"),
    "csv header only": _err(*_CSV, setup=_write("t.csv", "a,b,c\n"), message="{root}/t.csv: the file has no data rows"),
    "csv with a text cell": _err(*_CSV, setup=_write("t.csv", "a,b,c\n" + _ROWS + "1,two,3\n"),
                                 message="{root}/t.csv: line 302, column 'b': 'two' is not a number"),
    "csv of one column": _err(*_CSV, setup=_write("t.csv", "a\n" + "".join(f"{i}.5\n" for i in range(50))),
                              message="dataset: a coupling flow needs at least 2 features, the data has d=1"),
    # Stores that cannot work: within 5 s, before training.
    "store is not a database": _err("tracking.uri=sqlite:///{root}/x.db", setup=_write("x.db", "hello\n" * 100),
                                    message="tracking.uri: cannot use the MLflow store at sqlite:///{root}/x.db: "
                                            "{root}/x.db is not a SQLite database", within_s=5),
    "store is another app's sqlite": _err("tracking.uri=sqlite:///{root}/other.db", setup=_sqlite_of_another_app,
                                          message="tracking.uri: cannot use the MLflow store at sqlite:///{root}/other.db: "
                                                  "{root}/other.db is a SQLite database of another application",
                                          within_s=5),
    "in-memory store sqlite://": _err("tracking.uri=sqlite://", message="tracking.uri: cannot use the MLflow store "
                                      "at sqlite://: an in-memory database", within_s=5),
    "in-memory store :memory:": _err("tracking.uri=sqlite:///:memory:", message="tracking.uri: cannot use the MLflow "
                                     "store at sqlite:///:memory:: an in-memory database", within_s=5),
    "store under /proc": _err("tracking.uri=sqlite:////proc/flowsweep.db", message="tracking.uri: cannot use the "
                              "MLflow store at sqlite:////proc/flowsweep.db: cannot write in the folder /proc",
                              within_s=5),
    "store below a file": _err("tracking.uri=sqlite:///{root}/afile/mlflow.db", setup=_write("afile", "x"),
                               message="tracking.uri: cannot use the MLflow store at sqlite:///{root}/afile/mlflow.db: cannot "
                                       "write in the folder {root}/afile: File exists", within_s=5),
    "file store": _err("tracking.uri=file:{root}/mlruns", message="tracking.uri: cannot use the MLflow "
                       "store at file:{root}/mlruns: The filesystem tracking backend (e.g., './mlruns') is in "
                       "maintenance mode"),
    "unreachable tracking server": _err(f"tracking.uri=http://127.0.0.1:{CLOSED_PORT}",
                                        message=f"tracking.uri: cannot reach the MLflow server at "
                                                f"http://127.0.0.1:{CLOSED_PORT}", within_s=8),
    "unreachable PostgreSQL": _err(f"tracking.uri=postgresql://u:secret@127.0.0.1:{CLOSED_PORT}/mlflow",
                                   message=f"tracking.uri: cannot reach the database server 127.0.0.1:{CLOSED_PORT} of "
                                           f"postgresql://u:***@127.0.0.1:{CLOSED_PORT}/mlflow", within_s=8),
    "store locked by another process": _err(setup=_locked_by_another_process, message="tracking.uri: cannot use the "
                                            "MLflow store at sqlite:///{root}/mlflow.db: {root}/mlflow.db: locked by "
                                            "another process for over 3 s", within_s=5),
    "deleted experiment": _err("tracking.experiment=gone", setup=_deleted_experiment,
                               message="tracking.experiment: experiment 'gone' is deleted in"),
    "artifact location not writable": _err(setup=_artifacts_unwritable, message="tracking.experiment: the artifact "
                                           "location file:///proc/flowsweep-artifacts of experiment 'flowsweep' is "
                                           "not writable"),
    # Sweeps: every value checked before the first job, with flowsweep's line, not Hydra's traceback.
    **{f"-m {arg}": _err("-m", *arg.split(), message=msg) for arg, msg in (
        ("train.max_lr=0.01,-1", "train.max_lr: must be > 0, got -1"),
        ("depth=2,100000", "depth.layers: must be <= 256, got 100000"),
        ("train.weight_decay=0,nan", "train.weight_decay: must be a finite number, got nan"),
        ("+foo=1,2", "foo: unknown key (+foo=1,2)"),
        ("train.steps=0", "train.steps: must be >= 1, got 0"),
        ("hydra/launcher=joblib hydra.launcher.n_jobs=0", "hydra.launcher.n_jobs: must be >= 1 (or -1: every core), "
                                                         "got 0"),
        ("hparams_search=optuna hydra.sweeper.n_trials=0", "hydra.sweeper.n_trials: must be >= 1, got 0"),
        ("hparams_search=optuna hydra.sweeper.n_trials=-1", "hydra.sweeper.n_trials: must be >= 1, got -1"),
        ("hparams_search=optuna train.max_lr=interval(3e-2,1e-3)", "train.max_lr: interval(0.03, 0.001) is empty"),
        ("hparams_search=optuna train.max_lr=tag(log,interval(0,1e-3))", "train.max_lr: a log interval needs a low "
                                                                         "> 0"),
        ("hparams_search=optuna train.max_lr=tag(log,interval(-1,1e-3))", "train.max_lr: a log interval needs a "
                                                                          "low > 0"),
        ("hparams_search=optuna model.m=range(5,2)", "model.m: range(5, 2, 1) holds no value"),
        ("hparams_search=optuna train.weight_decay=choice(0,-1)", "train.weight_decay: must be >= 0, got -1"),
        ("hparams_search=optuna +train.nonexistent=choice(1,2)", "train.nonexistent: unknown key "
                                                                 "(+train.nonexistent=choice(1,2))"),
        ("hparams_search=optuna train.max_lr=interval(1e-3,20)", "train.max_lr: must be <= 10, got 20"),
    )},
}


def _store_uri(root: Path) -> str:
    return f"sqlite:///{root / 'mlflow.db'}"


@pytest.fixture(scope="module")
def closed_proxy_env(data_dir: Path) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    env.update(FLOWSWEEP_DATA_DIR=str(data_dir), HTTPS_PROXY=f"http://127.0.0.1:{CLOSED_PORT}",
               HTTP_PROXY=f"http://127.0.0.1:{CLOSED_PORT}", NO_PROXY="127.0.0.1,localhost")
    return env


def _args(case: Case, root: Path) -> list[str]:
    args = [a.format(root=root) for a in case.args]
    base = tiny(*[a for a in args if "=" in a and not a.startswith(("-", "hydra"))])
    if any(a.lstrip("+").startswith("search.") for a in args) and not any(a.startswith("layout=") for a in args):
        base.append("layout=opt")
    flags = [a for a in args if a == "-m"]
    rest = [a for a in args if a != "-m" and a not in base]
    return [*flags, *base, *rest, f"hydra.run.dir={root}/outputs", f"hydra.sweep.dir={root}/multirun"]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_line_and_leaves_no_run_finished_or_running(name, tmp_path, closed_proxy_env, data_dir):
    case = CASES[name]
    held = case.setup(tmp_path, data_dir) if case.setup else None
    env = {**closed_proxy_env, "FLOWSWEEP_CACHE_DIR": str(tmp_path / "cache")}
    try:
        done = run_main(_args(case, tmp_path), tmp_path, env)
    finally:
        if isinstance(held, subprocess.Popen):  # other setups return what they wrote, or None
            held.kill()
            held.wait()
    expected = case.message.format(root=tmp_path)
    assert done.code == case.code, done.stderr
    assert expected in done.stderr, done.stderr
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    assert "Error executing job" not in done.stderr, done.stderr
    assert done.seconds < case.within_s, f"took {done.seconds:.1f} s"
    if expected.startswith("flowsweep: error:"):
        assert done.stderr.count("flowsweep: error:") == 1, done.stderr
        assert done.stderr.rstrip().splitlines()[-1].startswith(expected), done.stderr
    if (tmp_path / "mlflow.db").exists():
        for experiment in ("flowsweep", "gone"):
            states = [r.info.status for r in all_runs(_store_uri(tmp_path), experiment)]
            assert "FINISHED" not in states and "RUNNING" not in states, states


def test_the_table_holds_every_case_of_the_issue_and_more():
    assert len(CASES) >= 150


def test_an_option_of_a_config_folder_the_command_adds_is_left_to_hydra():
    from flowsweep.config.overrides import unknown_option

    assert unknown_option(["-m", "dataset=yeast,nope"]).startswith("dataset: no option 'nope' in conf/dataset/")
    # hydra.searchpath or --config-dir may hold the option (tests/test_layouts.py's layout=first)
    assert unknown_option(["layout=first", "hydra.searchpath=[file:///elsewhere]"]) is None
    assert unknown_option(["--config-dir", "/elsewhere", "layout=first"]) is None
    # known options, plain keys, Hydra's own groups, deletions and null
    assert unknown_option(["dataset=yeast", "depth='4'", "model.coupling=spline", "hydra/launcher=joblib",
                           "~hparams_search", "hparams_search=null", "search/evaluation=paper"]) is None
