"""The README's quick start stays two commands, CI runs exactly its test command, and every
config key the README names exists."""

from __future__ import annotations

import re

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from flowsweep.config import register_schema

from .conftest import REPO

_GROUPS = "model|train|search|dataset|layout|dependence|tracking|depth"


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


def test_every_config_key_the_readme_names_exists():
    readme = (REPO / "README.md").read_text()
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
    missing = [k for k in keys if all(OmegaConf.select(c, k, default=KeyError) is KeyError for c in configs)]
    assert not missing, f"the README names keys no config has: {sorted(missing)}"
