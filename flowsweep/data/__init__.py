"""Tabular datasets for the flows: the method's four UCI datasets and any user CSV.

>>> from omegaconf import OmegaConf
>>> from flowsweep.config import DatasetConfig
>>> cfg = OmegaConf.merge(OmegaConf.structured(DatasetConfig), OmegaConf.load("conf/dataset/magic.yaml"))
>>> data = load_dataset(cfg, data_dir="/path/to/uci")  # doctest: +SKIP
>>> data.train.shape, data.test.shape  # doctest: +SKIP
(torch.Size([17118, 10]), torch.Size([1902, 10]))
"""

from .datasets import Dataset, load_dataset, preprocessed, standardized, whitened
from .sources import DataError

__all__ = ["Dataset", "DataError", "load_dataset", "preprocessed", "standardized", "whitened"]
