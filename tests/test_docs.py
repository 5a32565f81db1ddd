"""The README's quick start stays two commands, CI runs exactly its test command and builds the
docs site, the README stays a front page, and every config key the README or a docs page names
exists."""

from __future__ import annotations

import re

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from flowsweep.config import register_schema

from .conftest import REPO

_GROUPS = "model|train|search|dataset|layout|dependence|tracking|depth"
#: Keys of the plug-in examples in the docs (docs/layouts.md: a new layout), defined there, not in conf/.
_EXAMPLE_KEYS = {"layout.every"}


def _quick_start() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Quick start"):]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_the_quick_start_is_two_commands_install_and_run_then_install_and_test():
    run, test = _quick_start()
    assert run.startswith("pip install -e . && python main.py ")
    assert test.startswith('pip install -e ".[dev]" && ') and test.endswith("python -m pytest -q -n 2")


def test_ci_runs_exactly_the_readme_test_command_with_torch_pinned():
    script = (REPO / ".ci" / "run").read_text()
    lines = [line.strip() for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines[-1] == _quick_start()[1]
    assert any(re.search(r"pip install .*torch==2\.13\.0\b", line) for line in lines[:-1])


def _documents() -> list:
    """The README and every page of the docs site."""
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def test_the_readme_is_a_front_page_and_every_docs_page_is_in_the_site():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200
    site = (REPO / "mkdocs.yml").read_text()
    pages = [p.relative_to(REPO / "docs").as_posix() for p in _documents()[1:]]
    assert pages and [p for p in pages if p not in site] == [], "a docs page missing from mkdocs.yml's nav"
    script = (REPO / ".ci" / "run").read_text()
    assert "mkdocs build --strict" in script


def test_every_config_key_the_docs_name_exists():
    readme = "\n".join(path.read_text() for path in _documents())
    # `train.max_lr` or `train.max_lr=1e-3` in prose and tables; search.evaluation.* rows name their prefix.
    keys = {k for k in re.findall(rf"`((?:{_GROUPS})\.[a-z_.]*[a-z_])(?:=[^`]*)?`", readme) if not k.endswith(".json")}
    # ... and overrides in the command lines: dataset=magic train.max_lr=1e-3 'search.candidates=choice(16,32)'
    keys |= set(re.findall(rf"(?<![\w.+/-])((?:{_GROUPS})\.[a-z_.]*[a-z_])=", readme))
    assert len(keys) > 30
    register_schema()
    searches = sorted(p.stem for p in (REPO / "conf" / "search").glob("*.yaml"))
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        configs = [compose("config", overrides=[f"search={name}", "layout=file", "dataset=synthetic_pairs"])
                   for name in searches] + [compose("config")]
    missing = [k for k in keys - _EXAMPLE_KEYS if all(OmegaConf.select(c, k, default=KeyError) is KeyError for c in configs)]
    assert not missing, f"the README or docs name keys no config has: {sorted(missing)}"
