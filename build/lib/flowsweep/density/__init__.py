"""Trained densities as a product: saved with every run, loaded in one line, scored,
sampled and served in the table's raw units (docs/using-a-trained-model.md).

>>> import flowsweep
>>> density = flowsweep.load("runs:/<run id>/model")  # doctest: +SKIP
>>> density.score_samples(df)  # log-density per row, nats  # doctest: +SKIP
"""

from flowsweep.density.estimator import TrainedDensity
from flowsweep.density.format import VERSION, ModelFormatError
from flowsweep.density.load import load
from flowsweep.density.rows import RowsError

__all__ = ["TrainedDensity", "load", "ModelFormatError", "RowsError", "VERSION"]
