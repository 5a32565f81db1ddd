"""Downloads against a real HTTP server on 127.0.0.1: verify, cache, refuse bad files, fail fast."""

from __future__ import annotations

import functools
import shutil
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from flowsweep.data import DataError, load_dataset
from flowsweep.data import sources

TURBINE = [f"gt_{year}.csv" for year in range(2011, 2016)]


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, fmt: str, *args: object) -> None:
        pass


@dataclass
class Server:
    root: Path
    url: str
    httpd: ThreadingHTTPServer

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "www"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    srv = Server(root, f"http://127.0.0.1:{httpd.server_address[1]}", httpd)
    yield srv
    if srv.httpd.socket.fileno() != -1:
        srv.stop()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("FLOWSWEEP_CACHE_DIR", str(path))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # a proxy must not intercept the local server
    return path


def _files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


def _magic_from(dataset_cfg, url: str):
    cfg = dataset_cfg("magic", validation_fraction=0)  # the whole training split, as the docs count it
    cfg.files["magic04.data"].url = url
    return cfg


def test_download_verify_and_cache(server, cache, data_dir, dataset_cfg, tmp_path):
    shutil.copy(data_dir / "magic" / "magic04.data", server.root / "magic04.data")
    cfg = _magic_from(dataset_cfg, f"{server.url}/magic04.data")
    empty = tmp_path / "empty_data_dir"
    first = load_dataset(cfg, str(empty))
    assert first.train.shape == (17118, 10)
    assert _files_under(cache) == [cache / "magic" / "magic04.data"]
    server.stop()
    second = load_dataset(cfg, None)  # from the cache, server gone
    assert torch.equal(first.train, second.train) and torch.equal(first.test, second.test)


def test_data_dir_wins_over_cache(cache, data_dir, dataset_cfg):
    (cache / "magic").mkdir(parents=True)
    (cache / "magic" / "magic04.data").write_text("garbage\n")
    assert load_dataset(dataset_cfg("magic", validation_fraction=0), str(data_dir)).train.shape == (17118, 10)
    message = r"cache/magic/magic04\.data: line 1 has 1 fields.*Delete it so that it is downloaded again"
    with pytest.raises(DataError, match=message):
        load_dataset(dataset_cfg("magic"), None)


def test_checksum_mismatch_caches_nothing(server, cache, data_dir, dataset_cfg):
    text = (data_dir / "magic" / "magic04.data").read_text()
    (server.root / "magic04.data").write_text(text.replace("28.7967", "28.7968", 1))
    with pytest.raises(DataError) as err:
        load_dataset(_magic_from(dataset_cfg, f"{server.url}/magic04.data"), None)
    message = str(err.value)
    assert "magic04.data" in message and "nothing was cached" in message
    assert "e9314b7ebd4b4b59a3b3d65f7316663963777b16a46786877651dbbaa640b36a" in message
    assert _files_under(cache) == []


def test_server_down_fails_fast(cache, dataset_cfg, tmp_path):
    with socket.socket() as sock:  # a port that was free a moment ago: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.perf_counter()
    with pytest.raises(DataError) as err:
        load_dataset(_magic_from(dataset_cfg, f"http://127.0.0.1:{port}/magic04.data"), str(tmp_path / "uci"))
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert message.startswith("magic04.data not found in ")
    assert str(tmp_path / "uci" / "magic") in message and str(cache / "magic") in message
    assert f"Put the file at {tmp_path / 'uci' / 'magic' / 'magic04.data'}" in message
    assert _files_under(cache) == []


def test_silent_server_times_out(cache, dataset_cfg, monkeypatch):
    monkeypatch.setattr(sources, "DOWNLOAD_TIMEOUT_S", 0.5)
    with socket.socket() as sock:  # accepts connections (backlog) but never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
        start = time.perf_counter()
        with pytest.raises(DataError, match=r"magic04\.data not found: no data directory is set.*Timeout"):
            load_dataset(_magic_from(dataset_cfg, f"http://127.0.0.1:{sock.getsockname()[1]}/m"), None)
        assert time.perf_counter() - start < 3


def test_http_error_is_reported(server, cache, dataset_cfg):
    with pytest.raises(DataError, match=r"downloading .*/missing\.data failed \(HTTPError: 404"):
        load_dataset(_magic_from(dataset_cfg, f"{server.url}/missing.data"), None)


def _turbine_from(dataset_cfg, url: str):
    cfg = dataset_cfg("turbine", validation_fraction=0)
    for fname in TURBINE:
        cfg.files[fname].url = url
    return cfg


def _zip(target: Path, data_dir: Path, corrupt: str | None = None) -> None:
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as zf:
        for fname in TURBINE:
            data = (data_dir / "turbine" / fname).read_bytes()
            # UCI's archive layout may change; members are also found below a folder.
            zf.writestr(f"gas_turbine/{fname}", data + (b"1,2\n" if fname == corrupt else b""))


def test_turbine_zip_download(server, cache, data_dir, dataset_cfg, tmp_path):
    _zip(server.root / "turbine.zip", data_dir)
    # Two files already in the data_dir: only the other three come from the archive.
    (tmp_path / "uci" / "turbine").mkdir(parents=True)
    for fname in TURBINE[:2]:
        shutil.copy(data_dir / "turbine" / fname, tmp_path / "uci" / "turbine" / fname)
    cfg = _turbine_from(dataset_cfg, f"{server.url}/turbine.zip")
    data = load_dataset(cfg, str(tmp_path / "uci"))
    assert data.train.shape == (22191, 10) and data.test.shape == (14542, 10)
    assert sorted(p.name for p in _files_under(cache)) == TURBINE[2:]
    server.stop()
    for fname in TURBINE[:2]:
        shutil.copy(data_dir / "turbine" / fname, cache / "turbine" / fname)
    assert torch.equal(load_dataset(cfg, None).test, data.test)


def test_turbine_zip_with_bad_member_caches_nothing(server, cache, data_dir, dataset_cfg):
    _zip(server.root / "turbine.zip", data_dir, corrupt="gt_2014.csv")
    with pytest.raises(DataError, match=r"gt_2014\.csv extracted from .*turbine\.zip has sha256 \w+, expected c2a03c"):
        load_dataset(_turbine_from(dataset_cfg, f"{server.url}/turbine.zip"), None)
    assert _files_under(cache) == []
