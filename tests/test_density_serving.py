"""A logged density served and loaded as MLflow serves and loads any model, in processes of
their own: ``mlflow models serve`` on 127.0.0.1 and ``mlflow.pyfunc`` in a fresh interpreter
that never imports Hydra; and ``python -m flowsweep score|sample``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import flowsweep
from flowsweep.app.run import run_job
from tests.test_density import best_uri, job_cfg, raw_test_rows

REPO = Path(__file__).resolve().parents[1]


def _env(uri: str) -> dict[str, str]:
    # The children import this checkout's flowsweep, and find the job's store.
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "MLFLOW_TRACKING_URI": uri}


@pytest.fixture(scope="module")
def served(tmp_path_factory, data_dir, search_runs):
    """One small yeast job's best model, downloaded, and ``mlflow models serve`` answering on it."""
    import mlflow

    tmp_path = tmp_path_factory.mktemp("serve")
    cfg = job_cfg(tmp_path, data_dir, "instances=1", "train.steps=20")
    run_job(cfg)
    uri = best_uri(cfg, search_runs)
    mlflow.set_tracking_uri(cfg.tracking.uri)
    folder = mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "model"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", folder, "--host", "127.0.0.1", "--port", str(port),
         "--env-manager", "local", "--workers", "1"],
        env=_env(cfg.tracking.uri), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow models serve did not start: {server.stderr.read().decode()[-2000:]}") from None
                time.sleep(0.5)
        yield cfg, uri, port, tmp_path
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)


def test_mlflow_models_serve_answers_the_same_log_densities(served):
    cfg, uri, port, _ = served
    rows = raw_test_rows(cfg).iloc[:20]
    body = json.dumps({"dataframe_split": {"columns": list(rows.columns[::-1]), "data": rows.iloc[:, ::-1].values.tolist()}})
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
    served_scores = np.array([row["log_density"] for row in answer["predictions"]])
    expected = flowsweep.load(uri, cfg.tracking.uri).score_samples(rows)
    # JSON carries float64 to the digit; the server scores the same float32 rows
    np.testing.assert_allclose(served_scores, expected, rtol=0, atol=1e-12)


def test_mlflow_pyfunc_loads_it_in_a_fresh_process_without_hydra(served):
    cfg, uri, _, tmp_path = served
    rows = raw_test_rows(cfg).iloc[:20]
    rows.to_csv(tmp_path / "rows.csv", index=False)
    code = (f"import json, sys, mlflow.pyfunc, pandas as pd\n"
            f"model = mlflow.pyfunc.load_model({uri!r})\n"
            f"scores = model.predict(pd.read_csv({str(tmp_path / 'rows.csv')!r}))['log_density']\n"
            f"print(json.dumps(scores.tolist()))\n"
            f"assert not [m for m in sys.modules if m.startswith('hydra')], 'hydra was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], env=_env(cfg.tracking.uri), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    scores = np.array(json.loads(done.stdout.strip().splitlines()[-1]))
    expected = flowsweep.load(uri, cfg.tracking.uri).score_samples(pd.read_csv(tmp_path / "rows.csv"))
    np.testing.assert_array_equal(scores, expected)  # json writes a float64 to the digit


def test_the_command_line_scores_and_samples(served):
    cfg, uri, _, tmp_path = served
    rows = raw_test_rows(cfg)
    rows.iloc[:, ::-1].to_csv(tmp_path / "new.csv", index=False)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flowsweep", *args], env=_env(cfg.tracking.uri),
                              capture_output=True, text=True, timeout=120)

    done = cli("score", f"model={uri}", f"data={tmp_path / 'new.csv'}", f"out={tmp_path / 'scores.csv'}")
    assert done.returncode == 0, done.stderr
    scores = pd.read_csv(tmp_path / "scores.csv")
    density = flowsweep.load(uri, cfg.tracking.uri)
    np.testing.assert_allclose(scores["log_density"], density.score_samples(rows), rtol=0, atol=1e-9)
    assert ((scores["log_density"] < density.outlier_threshold(0.01)) == scores["outlier"].astype(bool)).all()
    done = cli("sample", f"model={uri}", "n=50", f"out={tmp_path / 'samples.csv'}")
    assert done.returncode == 0, done.stderr
    assert list(pd.read_csv(tmp_path / "samples.csv").columns) == list(rows.columns)
    rows.drop(columns="erl").to_csv(tmp_path / "bad.csv", index=False)
    for args, line in [
        (("score", f"model={uri}", f"data={tmp_path / 'bad.csv'}", f"out={tmp_path / 's.csv'}"), "missing ['erl']"),
        (("score", "model=runs:/0123/model", f"data={tmp_path / 'new.csv'}", f"out={tmp_path / 's.csv'}"),
         "runs:/0123/model: no model there"),
        (("sample", f"model={uri}", "n=many", f"out={tmp_path / 's.csv'}"), "n: expected a number, got 'many'"),
    ]:
        done = cli(*args)
        assert done.returncode == 2 and line in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
