"""The README's quick start stays two commands, and CI runs exactly its test command."""

from __future__ import annotations

import re

from .conftest import REPO


def _quick_start() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Quick start"):]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_the_quick_start_is_two_commands_install_and_run_then_install_and_test():
    run, test = _quick_start()
    assert run.startswith("pip install -e . && python main.py ")
    assert test.startswith('pip install -e ".[dev]" && ') and test.endswith("python -m pytest -q")


def test_ci_runs_exactly_the_readme_test_command_with_torch_pinned():
    script = (REPO / ".ci" / "run").read_text()
    lines = [line.strip() for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines[-1] == _quick_start()[1]
    assert any(re.search(r"pip install .*torch==2\.13\.0\b", line) for line in lines[:-1])
