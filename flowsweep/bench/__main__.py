"""Command line of the benchmark.

    python -m flowsweep.bench                       # (a) vs (b) vs (c): magic, batch 380, depth 8, K = 20
    python -m flowsweep.bench compare --steps 50 --no-nflows
    python -m flowsweep.bench spline                # K = 20 spline flows batched vs a per-model zuko loop
    python -m flowsweep.bench scaling               # wall time against K, d and depth
    python -m flowsweep.bench structure             # layouts and searches on the synthetic benchmarks
    python -m flowsweep.bench evaluation            # does a trial's value predict the final model?
    python -m flowsweep.bench margins               # who wins the race at each search.margin
    python -m flowsweep.bench best-known --dataset synthetic_scale --depth 4 --write   # the shipped best known
    python -m flowsweep.bench job dataset=magic layout=opt depth=8     # one whole job, by phase
    python -m flowsweep.bench job -- -m +experiment=paper              # the paper's grid
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import sys
from typing import TYPE_CHECKING, Optional, Sequence

import torch

if TYPE_CHECKING:
    from flowsweep.bench.workload import Workload

__all__ = ["main"]


_COMMANDS = ("spline", "zuko", "compare", "scaling", "job", "structure", "evaluation", "field", "margins",
             "best-known")



def _at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low``; anything else is argparse's one-line error (exit 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return parse


def _non_negative(text: str) -> float:
    """An argparse type: a finite number >= 0 (a margin in standard errors)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _cut_schedule(text: str) -> list[list[int]]:
    """An argparse type: ``step:k,step:k,...``, a cut schedule as ``search.cuts`` takes it."""
    from flowsweep.search.halving import cut_schedule_problem

    try:
        cuts = [[int(v) for v in pair.split(":")] for pair in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be step:k pairs joined by commas, got {text!r}") from None
    problem = cut_schedule_problem(cuts)
    if problem:
        raise argparse.ArgumentTypeError(f"{problem} (from {text!r})")
    return cuts


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--threads", type=_at_least(1), default=None,
                        help="torch threads for every engine (default: train.threads of conf/config.yaml)")
    common.add_argument("--kernel", choices=("native", "torch"), default=None,
                        help="(a)'s training kernel (default: train.kernel of conf/config.yaml)")
    common.add_argument("--data-dir", default=None, help="raw UCI folder (default: $FLOWSWEEP_DATA_DIR)")
    parser = argparse.ArgumentParser(prog="python -m flowsweep.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    compare = sub.add_parser("compare", parents=[common],
                             help="(a) batched engine vs (b) usual way vs (c) nflows (the default)")
    compare.add_argument("--dataset", default="magic")
    compare.add_argument("--depth", type=_at_least(1), default=8)
    compare.add_argument("--models", type=_at_least(1), default=20, help="K")
    compare.add_argument("--steps", type=_at_least(1), default=100, help="SGD steps per model")
    compare.add_argument("--repeats", type=_at_least(1), default=5, help="(a) is timed this often; the best counts")
    compare.add_argument("--no-nflows", action="store_true", help="leave out (c)")
    spline = sub.add_parser("spline", parents=[common],
                            help="K spline flows batched vs a per-model zuko loop of the same architecture")
    spline.add_argument("--dataset", default="magic")
    spline.add_argument("--depth", type=_at_least(1), default=8)
    spline.add_argument("--models", type=_at_least(1), default=20, help="K")
    spline.add_argument("--steps", type=_at_least(1), default=30)
    spline.add_argument("--hidden", type=_at_least(1), nargs="*", default=[64, 64], help="conditioner widths (none: one layer)")
    zuko = sub.add_parser("zuko", parents=[common],
                          help="zuko's NSF and MAF on flowsweep's splits, with its stopping rule: test bpd")
    zuko.add_argument("--datasets", nargs="+", default=["magic"])
    zuko.add_argument("--flows", nargs="+", choices=("nsf", "maf"), default=["nsf", "maf"])
    zuko.add_argument("--seeds", type=_at_least(1), default=5, help="models per flow")
    zuko.add_argument("--transforms", type=_at_least(1), default=4)
    zuko.add_argument("--hidden", type=_at_least(1), nargs="+", default=[64, 64])
    zuko.add_argument("--lr", type=float, default=1e-3, help="Adam's first learning rate (cosine to train.base_lr)")
    zuko.add_argument("--steps", type=_at_least(1), default=None, help="at most (default: train.steps)")
    scaling = sub.add_parser("scaling", parents=[common], help="batched engine: wall time against K, d and depth")
    scaling.add_argument("--steps", type=_at_least(1), default=100)
    scaling.add_argument("--repeats", type=_at_least(1), default=3)
    structure = sub.add_parser("structure", parents=[common],
                               help="parity, random, oracle, dependence and every search on the synthetic benchmarks")
    structure.add_argument("--datasets", nargs="+", default=None, help="default: every synthetic_* benchmark")
    structure.add_argument("--depth", type=_at_least(1), default=4)
    structure.add_argument("--instances", type=_at_least(1), default=8)
    structure.add_argument("--uri", default=None, help="MLflow store to log into (default: a temporary one)")
    structure.add_argument("--searches", choices=("all", "default"), default="all",
                           help="default: only the default search (and the earlier default) beside the fixed layouts")
    evaluation = sub.add_parser("evaluation", parents=[common],
                                help="how well each search evaluation's trial value predicts the final test bpd")
    evaluation.add_argument("--datasets", nargs="+", default=None, help="default: synthetic_pairs, _hetero, _tree")
    evaluation.add_argument("--structures", type=_at_least(1), default=60, help="random structures per dataset")
    evaluation.add_argument("--depth", type=_at_least(1), default=4)
    structure.add_argument("overrides", nargs="*", help="further overrides for every job, e.g. train.threads=1")
    field_ = sub.add_parser("field", parents=[common],
                            help="the default search's field trained to the end: when training ranks it as it converges")
    field_.add_argument("--datasets", nargs="+", default=None, help="default: scale, wave, tree, pairs, yeast, sonar")
    field_.add_argument("--depth", type=_at_least(1), default=4)
    field_.add_argument("--instances", type=_at_least(1), default=8)
    field_.add_argument("--cuts", nargs="+", type=_cut_schedule, default=(),
                        help="cut schedules to replay on the curves, each step:k,step:k,... "
                             "(default: search.cuts of conf/search/halving.yaml)")
    field_.add_argument("overrides", nargs="*", help="further overrides, e.g. depth=8 search.candidates=24")
    margins = sub.add_parser("margins", parents=[common],
                             help="the default race trained once, its winner replayed at each search.margin")
    margins.add_argument("--datasets", nargs="+", default=None, help="default: synthetic_hetero, _pairs, yeast, sonar")
    margins.add_argument("--depth", type=_at_least(1), default=4)
    margins.add_argument("--instances", type=_at_least(2), default=20, help="default: a job's (instances in conf/)")
    margins.add_argument("--margins", nargs="+", type=_non_negative, default=None, help="default: 0 0.5 1 1.5 2 3")
    margins.add_argument("overrides", nargs="*", help="further overrides, e.g. train.threads=1")
    best = sub.add_parser("best-known", parents=[common],
                          help="the long search for a synthetic benchmark's best known structure (layout=best_known)")
    best.add_argument("--dataset", required=True)
    best.add_argument("--depth", type=_at_least(1), default=4)
    best.add_argument("--screen", type=_at_least(1), default=2, help="replicas per candidate in the screening rounds")
    best.add_argument("--final", type=_at_least(1), default=4, help="replicas per finalist in the long training")
    best.add_argument("--finalists", type=_at_least(1), default=6)
    best.add_argument("--rounds", type=_at_least(0), default=3, help="hill-climbing rounds of whole-layer moves")
    best.add_argument("--long", type=_at_least(1), default=3, help="the finalists train this many times train.steps and patience")
    best.add_argument("--randoms", type=_at_least(0), default=8, help="uniformly random candidates")
    best.add_argument("--searched", type=_at_least(0), default=4, help="instances of each layout=opt job that adds candidates")
    best.add_argument("--write", action="store_true", help="ship the winner as flowsweep/structure/best_known/*.json")
    job = sub.add_parser("job", parents=[common], help="time one whole main.py run by phase (Hydra overrides follow)")
    job.add_argument("--keep", default=None, help="run in this folder and keep it (default: a temporary one)")
    job.add_argument("overrides", nargs="*", help="as for main.py, e.g. dataset=magic layout=opt depth=8")
    return parser


def _peak_line(work: Workload, ms_per_model_step: float) -> str:
    """(a)'s achieved GFLOP/s of multiply-adds and its share of a GEMM's, measured now at the same threads."""
    from flowsweep.bench.peak import gemm_peak_gflops, model_step_flops
    from flowsweep.native import covers, lanes, native_available

    achieved = model_step_flops(work.spec, work.batch_size) / (ms_per_model_step * 1e-3) / 1e9
    peak = gemm_peak_gflops(work.threads)
    native = work.cfg.train.kernel == "native" and covers(work.spec) and native_available()
    kernel = f"native kernel, {lanes()} lanes" if native else "torch kernel"
    # Significant digits, not decimals: a tiny smoke run (2 steps, warm-up included) is under 0.05 %.
    return (f"(a), {kernel}: {achieved:.3g} GFLOP/s of multiply-adds, {100 * achieved / peak:.2g} % of this "
            f"machine's GEMM peak ({peak:.0f} GFLOP/s: torch.matmul 2048 x 2048, {work.threads} thread(s), measured now)")


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in _COMMANDS and argv[0] not in ("-h", "--help"):
        argv.insert(0, "compare")
    args = _parser().parse_args(argv)
    command = args.command
    if args.threads is None:
        from flowsweep.config.compose import compose_config

        args.threads = int(compose_config([]).train.threads)
    torch.set_num_threads(args.threads)

    from flowsweep.bench.workload import load_note

    if command == "compare":
        from flowsweep.bench.compare import compare
        from flowsweep.bench.workload import make_workload

        work = make_workload(args.dataset, args.depth, args.models, data_dir=args.data_dir, threads=args.threads,
                             kernel=args.kernel)
        print(f"# {args.dataset} (d={work.data.d}), batch {work.batch_size}, depth {args.depth}, K={args.models}, "
              f"{args.steps} SGD steps per model; {load_note()}")
        timing, agreement = compare(work, args.steps, args.repeats, nflows=not args.no_nflows)
        print(timing.to_markdown(index=False))
        a = timing["ms / model-step"]
        print("\nspeed-up of (a) per model-step: "
              + ", ".join(f"{a[i] / a[0]:.1f}x over {name[:3]}" for i, name in enumerate(timing["engine"]) if i))
        print(_peak_line(work, float(a[0])))
        print("\nSame models, same initial parameters and minibatches:")
        print(agreement.to_markdown(index=False))
    elif command == "spline":
        from flowsweep.bench.spline import spline_speed
        from flowsweep.bench.workload import make_workload

        work = make_workload(args.dataset, args.depth, args.models, data_dir=args.data_dir, threads=args.threads)
        print(f"# {args.dataset} (d={work.data.d}), batch {work.batch_size}, depth {args.depth}, K={args.models}, "
              f"{args.steps} Adam steps, spline couplings, 8 bins, hidden {args.hidden}; {load_note()}")
        table = spline_speed(work, args.steps, tuple(args.hidden))
        print(table.to_markdown(index=False))
        print(f"\nspeed-up of (a) per model-step over zuko at its fastest thread count: "
              f"{table['speed-up of (a)'].iloc[2]:.1f}x, "
              f"over the reference spline: {table['speed-up of (a)'].iloc[1]:.1f}x")
        if table["engine"].iloc[-1].startswith("(zg)"):
            g, zg = table["ms / model-step"].iloc[-2:]
            print(f"on the GPU: (g) {g:.3f} ms a model-step, {zg / g:.1f}x faster than zuko's loop there, "
                  f"{table['ms / model-step'].iloc[0] / g:.1f}x faster than (a)")
    elif command == "zuko":
        import pandas as pd

        from flowsweep.bench.baselines import zuko_table

        print(f"# python -m flowsweep.bench zuko; {load_note()}", flush=True)
        tables = [zuko_table(name, args.flows, args.seeds, args.transforms, args.hidden, args.lr, args.steps,
                             args.data_dir) for name in args.datasets]
        print("\n" + pd.concat(tables).to_markdown(index=False))
        print(f"\n{load_note()}")
    elif command == "structure":
        from flowsweep.bench.structure import DATASETS, main_tables

        print(f"# python -m flowsweep.bench structure; {load_note()}", flush=True)
        main_tables(args.datasets or DATASETS, args.depth, args.instances, args.uri, args.overrides, args.searches)
        print(f"\n{load_note()}")
    elif command == "evaluation":
        from flowsweep.bench.evaluation import DATASETS, evaluation_table

        print(f"# python -m flowsweep.bench evaluation; {load_note()}", flush=True)
        table = evaluation_table(args.datasets or DATASETS, args.structures, args.depth)
        print(table.to_markdown(index=False, floatfmt=".2f"))
        print(f"\n{load_note()}")
    elif command == "field":
        from flowsweep.bench.field import DATASETS, field_table

        print(f"# python -m flowsweep.bench field; {load_note()}", flush=True)
        table = field_table(args.datasets or DATASETS, args.depth, args.instances, args.overrides, args.cuts)
        print("\n" + table.to_markdown(index=False))
        print(f"\n{load_note()}")
    elif command == "margins":
        from flowsweep.bench.margins import DATASETS, MARGINS, margin_table, run_race

        print(f"# python -m flowsweep.bench margins; {load_note()}", flush=True)
        for dataset in args.datasets or DATASETS:
            race = run_race(dataset, args.depth, args.instances, args.overrides)
            print(f"\n## {dataset}, depth {args.depth}, {args.instances} instances\n", flush=True)
            print(margin_table(race, args.margins or MARGINS).to_markdown(index=False), flush=True)
        print(f"\n{load_note()}")
    elif command == "best-known":
        import json

        from flowsweep.bench.best_known import search_best_known, write

        print(f"# python -m flowsweep.bench best-known --dataset {args.dataset} --depth {args.depth}; {load_note()}",
              flush=True)
        record = search_best_known(args.dataset, args.depth, args.screen, args.final, args.finalists, args.rounds,
                                   args.long, args.randoms, args.searched)
        print(json.dumps(record))
        if args.write:
            print(f"written to {write(record)}")
    elif command == "scaling":
        from flowsweep.bench.scaling import scaling_table

        print(f"# batched engine, {args.steps} SGD steps, best of {args.repeats}; {load_note()}")
        print(scaling_table(args.steps, args.repeats, args.data_dir, args.threads, args.kernel).to_markdown(index=False))
    else:
        from flowsweep.bench.job import TRAINING, non_training_share, time_job

        print(f"# python main.py {' '.join(args.overrides)}; {load_note()}", flush=True)
        table, wall = time_job(args.overrides, args.keep)
        print(table.to_markdown(index=False))
        print(f"\nwall {wall:.1f} s; not training ({' and '.join(TRAINING)} excluded): "
              f"{100 * non_training_share(table, wall):.1f} %; {load_note()}")


if __name__ == "__main__":
    from hydra.errors import HydraException

    from flowsweep.config import ConfigError
    from flowsweep.data.sources import DataError

    try:
        main()
    except (DataError, ConfigError, HydraException) as error:  # a missing file or a bad value: one line
        sys.exit(f"flowsweep.bench: error: {str(error).splitlines()[0]}")
    except ModuleNotFoundError as error:
        missing = (error.name or "").split(".")[0]
        if missing not in ("nflows", "zuko"):  # the bench extra's libraries; anything else is a bug
            raise
        sys.exit(f"flowsweep.bench: error: this benchmark needs {missing}, in the bench extra: "
                 f"pip install 'flowsweep[bench]'" + (" (or leave it out: --no-nflows)" if missing == "nflows" else ""))
