"""Security hygiene, checked on the sources themselves.

- Every download has a SHA-256 to be verified against before use (the verification
  itself, mismatch included, is tested against a local server in tests/test_download.py).
- Nothing unpickles a file: ``torch.load`` only with ``weights_only=True``; no
  ``pickle.load``, ``pandas.read_pickle``, ``joblib.load`` or ``numpy.load(allow_pickle=True)``.
- Every server command in the README and the docs binds 127.0.0.1.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from .conftest import REPO

SOURCES = sorted([REPO / "main.py", *(REPO / "flowsweep").rglob("*.py"), *(REPO / "multirun_analysis").rglob("*.py")])
UNPICKLERS = {("pickle", "load"), ("pickle", "Unpickler"), ("pandas", "read_pickle"), ("pd", "read_pickle"),
              ("joblib", "load"), ("cloudpickle", "load"), ("dill", "load")}


@pytest.mark.parametrize("option", sorted((REPO / "conf" / "dataset").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_download_has_a_sha256_and_an_https_address(option):
    files = (yaml.safe_load(option.read_text()) or {}).get("files") or {}
    for name, spec in files.items():
        assert re.fullmatch(r"(sha256:)?[0-9a-f]{64}", str(spec.get("sha256", ""))), f"{option.name}: {name} has no sha256"
        assert str(spec["url"]).startswith("https://"), f"{option.name}: {name} is downloaded without TLS"


def _dotted(node: ast.AST) -> tuple[str, ...]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return tuple(reversed(parts))


def _keyword(call: ast.Call, name: str) -> object:
    return next((k.value.value for k in call.keywords if k.arg == name and isinstance(k.value, ast.Constant)), None)


def _unsafe_loads(path: Path, root: Path = REPO) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        where = f"{path.relative_to(root)}:{node.lineno} {'.'.join(name)}"
        if name[-2:] == ("torch", "load") and _keyword(node, "weights_only") is not True:
            found.append(where + " without weights_only=True")
        elif name[-2:] in UNPICKLERS:
            found.append(where)
        elif name[-2:] in {("np", "load"), ("numpy", "load")} and _keyword(node, "allow_pickle") is True:
            found.append(where + " with allow_pickle=True")
        elif name[-2:] == ("pickle", "loads"):
            # Only a round trip of an object the process itself just pickled is allowed.
            argument = node.args[0] if node.args else None
            if not (isinstance(argument, ast.Call) and _dotted(argument.func)[-2:] == ("pickle", "dumps")):
                found.append(where + " of bytes it did not make")
    return found


def test_nothing_unpickles_a_file():
    assert SOURCES and [hit for path in SOURCES for hit in _unsafe_loads(path)] == []


def test_the_unpickling_check_catches_what_it_should(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch, pickle, numpy as np\ntorch.load('m.pt')\npickle.load(open('x', 'rb'))\n"
                   "np.load('a.npy', allow_pickle=True)\npickle.loads(data)\ntorch.load('ok.pt', weights_only=True)\n"
                   "pickle.loads(pickle.dumps(obj))\n")
    assert [hit.split(" ", 1)[1] for hit in _unsafe_loads(bad, tmp_path)] == [
        "torch.load without weights_only=True", "pickle.load", "np.load with allow_pickle=True",
        "pickle.loads of bytes it did not make"]


def test_every_server_command_in_the_readme_and_docs_binds_localhost():
    docs = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    blocks = [b for path in docs for b in re.findall(r"```(?:bash|sh)\n(.*?)```", path.read_text(), flags=re.S)]
    lines = [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    commands = [line for line in lines if re.match(r"mlflow (server|ui)\b", line)]
    assert commands, "the README shows no server command"
    for line in commands:
        assert "0.0.0.0" not in line
        assert "--host 127.0.0.1" in line, f"server command without --host 127.0.0.1: {line}"
