"""The best known structure of a synthetic benchmark: a long search run once, shipped as data.

``python -m flowsweep.bench best-known --dataset synthetic_scale --depth 4 --write``
gathers candidates from every source there is, ranks them on the *validation* rows
(never the test rows) and writes the winner to
``flowsweep/structure/best_known/<dataset>_L<depth>.json``, which ``layout=best_known``
trains. The sources:

- the fixed layouts: parity, the planted oracle, the dependence layout of every seed;
- hand-built from the planted graph: the oracle's first layer type (parents condition)
  in every layer, the other type first or last, and per component kind that kind's
  parents in every layer while the other components alternate;
- the structures ``layout=opt`` returns at the default search and with
  ``search=regularized`` (every instance), and uniformly random structures;
- a hill-climb from the best of these with whole-layer moves (repeat a layer over its
  neighbour, swap two neighbouring layers, flip which side conditions) and single swaps.

Every candidate is trained with the default recipe (``train.*``), ``screen`` replicas
each, all candidates of a round batched in one flow; the ``finalists`` best are trained
again ``final`` replicas each (other seeds) for ``long`` times the default steps and
patience, and the lowest mean validation bpd wins. The file records that figure, its
standard error, the runner-up, the number of candidates scored, the command and the commit.
"""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from flowsweep.config.compose import compose_config
from flowsweep.data import Dataset, load_dataset, preprocessed
from flowsweep.data.synthetic import plan
from flowsweep.model import CouplingFlows, ModelSpec
from flowsweep.search.job import job_dependence
from flowsweep.seeding import derive_seed, torch_generator
from flowsweep.structure import Structure, parity_structure, random_structure
from flowsweep.structure.moves import balanced, neighbour_moves
from flowsweep.structure.graph import oracle_structure
from flowsweep.layouts.best_known import best_known_path
from flowsweep.layouts.given import structure_from_run
from flowsweep.training import Recipe, evaluate_bpd, train

__all__ = ["Candidate", "hand_built", "search_best_known", "write"]

#: Stream keys under the job seed: screening replicas, final replicas, random candidates.
_SCREEN_KEY, _FINAL_KEY, _RANDOM_KEY = 11, 12, 13

Candidate = tuple[str, Structure]


def hand_built(cfg: DictConfig, d: int, m: int, depth: int) -> list[Candidate]:
    """Structures built from the planted graph of ``cfg.dataset`` (see the module docstring)."""
    synthetic = OmegaConf.to_container(cfg.dataset.synthetic)
    assert isinstance(synthetic, dict)
    planted = plan({str(k): v for k, v in synthetic.items()})
    first, second = oracle_structure(planted.graph, d, m, 2).conditioning
    kind_of = {i: kind for kind, features in planted.components for i in features}
    built: list[tuple[str, Structure | None]] = [
        ("oracle type 0 in every layer", balanced(d, m, [first] * depth)),
        ("oracle type 1 first, then type 0", balanced(d, m, [second] + [first] * (depth - 1))),
        ("oracle type 0, type 1 last", balanced(d, m, [first] * (depth - 1) + [second])),
    ]
    for kind in sorted(set(kind_of.values()) - {"distractor"}):
        layers = [[i for i in range(d) if i in (first if kind_of[i] == kind or layer % 2 == 0 else second)]
                  for layer in range(depth)]
        built.append((f"{kind} parents in every layer, the rest alternating", balanced(d, m, layers)))
    return [(name, s) for name, s in built if s is not None]


def _score(cfg: DictConfig, data: Dataset, spec: ModelSpec, structures: Sequence[Structure], replicas: int,
           key: int, recipe: Recipe) -> tuple[np.ndarray, np.ndarray]:
    """Validation bpd ``[len(structures), replicas]`` and test bpd, all trained as one batch."""
    models = [s for s in structures for _ in range(replicas)]
    seeds = [derive_seed(cfg.seed, key, i) for i in range(len(models))]
    generators = [torch_generator(s) for s in seeds]
    flow = CouplingFlows(spec, models, generators)
    train(flow, data.train, int(cfg.dataset.batch_size), recipe, generators, data.log_det, valid=data.valid)
    assert data.valid is not None  # the benchmarks keep a validation split
    val = evaluate_bpd(flow, data.valid, data.log_det).numpy().reshape(len(structures), replicas)
    test = evaluate_bpd(flow, data.test, data.log_det).numpy().reshape(len(structures), replicas)
    return val, test


def _searched(overrides: Sequence[str], label: str, instances: int, d: int, m: int, depth: int) -> list[Candidate]:
    """The structures ``layout=opt`` returns for every instance of one job (a temporary store)."""
    from mlflow.tracking import MlflowClient

    from flowsweep.app.run import run_job
    from flowsweep.record.run_group import ROLE_TAG

    with tempfile.TemporaryDirectory(prefix="flowsweep-best-known-") as folder:
        uri = f"sqlite:///{Path(folder) / 'search.db'}"
        cfg = compose_config([*overrides, "layout=opt", f"instances={instances}", "progress=false",
                              f"tracking.uri={uri}", "tracking.experiment=best_known"])
        run_job(cfg)
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("best_known")
        assert experiment is not None  # run_job made it
        runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'instance'")
        return [(label, structure_from_run(run.info.run_id, uri, d, m, depth)) for run in runs]


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False,
                          cwd=Path(__file__).resolve().parent)
    return done.stdout.strip() or "unknown"


def search_best_known(dataset: str, depth: int, screen: int = 2, final: int = 4, finalists: int = 6,
                      rounds: int = 3, long: int = 3, randoms: int = 8, searched: int = 4,
                      echo: bool = True) -> dict:
    """Run the long search (module docstring); the record that ``--write`` ships."""
    overrides = [f"dataset={dataset}", f"depth.layers={depth}"]
    cfg = compose_config(overrides)
    data = preprocessed(load_dataset(cfg.dataset, cfg.data_dir), cfg.model.preprocess)
    d = data.d
    m = d // 2 if cfg.model.m is None else int(cfg.model.m)
    spec = ModelSpec.from_config(cfg.model, d, m, depth)
    dependence = job_dependence(cfg, data)
    rng = np.random.default_rng(derive_seed(cfg.seed, _RANDOM_KEY))
    if not data.graph:
        raise ValueError(f"{dataset} has no planted graph: best-known searches the synthetic benchmarks")
    pool: list[Candidate] = [("parity", parity_structure(d, m, depth)),
                             ("oracle", oracle_structure(data.graph, d, m, depth)), *hand_built(cfg, d, m, depth)]
    # The seeds of layout=dependence's instances (flowsweep.app.run).
    pool += [("dependence", dependence.structure(m, depth, seed=derive_seed(derive_seed(cfg.seed, i), 1) % 2**32))
             for i in range(max(searched, 1))]
    pool += [("random", random_structure(d, m, depth, rng)) for _ in range(randoms)]
    if searched:
        pool += _searched(overrides, "layout=opt (default search)", searched, d, m, depth)
        pool += _searched([*overrides, "search=regularized"], "layout=opt search=regularized", searched, d, m, depth)
    scores: dict[Structure, tuple[str, float]] = {}
    default = Recipe.from_config(cfg.train)

    def screened(candidates: list[Candidate]) -> None:
        fresh = list({s: name for name, s in candidates if s not in scores}.items())
        if not fresh:
            return
        val, _ = _score(cfg, data, spec, [s for s, _ in fresh], screen, _SCREEN_KEY, default)
        for (s, name), row in zip(fresh, val.mean(1)):
            scores[s] = (name, float(row))
        if echo:
            best = min(scores.items(), key=lambda item: item[1][1])
            print(f"  {len(scores)} scored; best {best[1][1]:.4f} ({best[1][0]})", flush=True)

    screened(pool)
    for round_ in range(rounds):
        top = sorted(scores, key=lambda s: scores[s][1])[:3]
        screened([(f"hill-climb round {round_ + 1}", s) for t in top for s in neighbour_moves(t, rng, 8)])
    finals = sorted(scores, key=lambda s: scores[s][1])[:finalists]
    recipe = Recipe.from_config(cfg.train, steps=long * int(cfg.train.steps),
                                patience=None if cfg.train.patience is None else long * int(cfg.train.patience))
    val, test = _score(cfg, data, spec, finals, final, _FINAL_KEY, recipe)
    order = np.argsort(val.mean(1))
    if echo:
        for i in order:
            print(f"  final {val[i].mean():.4f} ± {val[i].std(ddof=1) / math.sqrt(final):.4f} "
                  f"({scores[finals[i]][0]})", flush=True)
    win, runner = finals[order[0]], finals[order[1]] if len(order) > 1 else None
    command = (f"python -m flowsweep.bench best-known --dataset {dataset} --depth {depth} --screen {screen} "
               f"--final {final} --finalists {finalists} --rounds {rounds} --long {long} --randoms {randoms} "
               f"--searched {searched} --write")
    return {**win.to_dict(), "dataset": dataset, "depth": depth,
            "synthetic": OmegaConf.to_container(cfg.dataset.synthetic),
            "source": scores[win][0], "val_bpd": float(val[order[0]].mean()),
            "val_bpd_se": float(val[order[0]].std(ddof=1) / math.sqrt(final)), "replicas": final,
            "runner_up": None if runner is None else {"source": scores[runner][0],
                                                      "val_bpd": float(val[order[1]].mean()),
                                                      "conditioning": [list(layer) for layer in runner.conditioning]},
            "candidates_scored": len(scores), "recipe": f"train.* defaults, steps and patience x{long}",
            "command": command, "commit": _commit()}


def write(record: dict) -> Path:
    """Ship ``record`` where ``layout=best_known`` reads it."""
    path = best_known_path(record["dataset"], int(record["depth"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return path
