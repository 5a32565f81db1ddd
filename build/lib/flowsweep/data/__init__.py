"""Tabular datasets for the flows: the method's four UCI datasets and any user CSV.

>>> from flowsweep.config.compose import compose_config
>>> cfg = compose_config(["dataset=magic"]).dataset
>>> data = load_dataset(cfg, data_dir="/path/to/uci")  # doctest: +SKIP
>>> data.train.shape, data.test.shape  # doctest: +SKIP
(torch.Size([17118, 10]), torch.Size([1902, 10]))
"""

from .datasets import Dataset, load_dataset, preprocessed, standardized, whitened
from .sources import DataError

__all__ = ["Dataset", "DataError", "load_dataset", "preprocessed", "standardized", "whitened"]
