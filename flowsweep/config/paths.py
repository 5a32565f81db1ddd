"""Where the project's config lives: one home for the path every config module reads."""

from __future__ import annotations

from pathlib import Path

__all__ = ["CONF_DIR"]

#: The project's config folder (the repository's ``conf/``).
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
