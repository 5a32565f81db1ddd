"""The writer process draws only marked figures of flowsweep's own modules, and a job's figures
read for wide tables (the drawing functions run here on plain values, as the writer runs them)."""

from pathlib import Path

import numpy as np
import pytest

from flowsweep.record import plots
from flowsweep.record.figures import draw, figure_name


def test_only_marked_flowsweep_figures_are_drawn(tmp_path: Path):
    with pytest.raises(ValueError, match="not a flowsweep module"):
        draw("os:system", tmp_path / "x.png", {"command": "true"})
    with pytest.raises(ValueError, match="no such figure"):
        draw("flowsweep.record.plots:smoothed", tmp_path / "x.png", {})
    with pytest.raises(TypeError, match="not marked"):
        figure_name(plots.smoothed)
    assert figure_name(plots.job_masks) == "flowsweep.record.plots:job_masks"


def test_the_moving_mean_is_trailing():
    curve = np.arange(1.0, 7.0)[:, None]
    assert plots.smoothed(curve, 3)[:, 0].tolist() == [1.0, 1.5, 2.0, 3.0, 4.0, 5.0]
    assert plots.smoothed(curve, 10)[:, 0].tolist() == [1.0, 1.5, 2.0, 2.5, 3.0, 3.5]


@pytest.mark.parametrize("suffix", ["png", "svg"])
def test_a_wide_tables_masks_and_curves_are_drawn(tmp_path: Path, suffix: str):
    rng = np.random.default_rng(0)
    masks = [(rng.random((4, 60)) < 0.5).astype(int).tolist() for _ in range(3)]
    path = tmp_path / f"masks.{suffix}"
    draw(figure_name(plots.job_masks), path, {"masks": masks, "groups": [[0, 1], [2], [3]],
                                              "features": [f"f{j}" for j in range(60)], "m": 30, "title": "sonar"})
    assert path.stat().st_size > 1000
    raw = rng.normal(size=(50, 3))
    path = tmp_path / f"curves.{suffix}"
    draw(figure_name(plots.job_curves), path, {
        "steps": list(range(1, 51)), "raw": raw.tolist(), "smooth": plots.smoothed(raw, 5).tolist(), "window": 5,
        "optimizer": "Adam, cosine rate", "title": "t", "val_steps": [0, 25, 50], "val": raw[:3].tolist()})
    head = path.read_bytes()[:400]
    assert head.startswith(b"\x89PNG\r\n\x1a\n") if suffix == "png" else b"<svg" in head
