"""Benchmarks of flowsweep's batched engine against the usual ways, and of whole jobs.

``python -m flowsweep.bench`` (see :mod:`flowsweep.bench.__main__`) prints

- ``compare``: ms per model-step of (a) the batched engine, (b) one ``nn.Module`` per
  model trained one after another, (c) the same models from nflows, and whether (a)
  and (b) reach the same bpd from the same initial parameters;
- ``scaling``: the engine's wall time against K, d and depth;
- ``job``: one whole ``main.py`` run split into phases, MLflow logging's share included;
- ``history``: an earlier commit's training loop against the current one.

nflows is a benchmark-only dependency: ``pip install -e ".[bench]"``.
"""

__all__ = ["compare", "scaling", "job", "history", "phases", "reference", "workload"]
