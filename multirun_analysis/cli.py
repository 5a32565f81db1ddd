"""``python -m multirun_analysis``: the paper's tables (and figures) from flowsweep's MLflow runs.

    python -m multirun_analysis --format markdown                    # every run of experiment flowsweep
    python -m multirun_analysis --sweep latest --split train --out results --log-to-mlflow
    python -m multirun_analysis --group-by dataset depth layout search.warm_start

Tables go to stdout, one line about what was read (and any warning) to stderr. Nothing
to analyse (no store, experiment, sweep, runs or group-by param) is one error line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from mlflow.tracking import MlflowClient

from omegaconf import OmegaConf

from flowsweep.config.paths import CONF_DIR
from multirun_analysis.aggregate import DEFAULT_GROUP_BY, SPLITS, aggregate, mixed_params
from multirun_analysis.figures import FIGURE_FORMATS
from multirun_analysis.calibration import best_cells, calibration, load_baselines, reading_keys
from multirun_analysis.load import LATEST, AnalysisError, SweepRuns, load_runs, resolve_uri, without_studies
from multirun_analysis.report import log_summary, write_report
from multirun_analysis.versus import versus
from multirun_analysis.tables import FORMATS, build_tables, render

__all__ = ["PROG", "build_parser", "main"]

PROG = "multirun_analysis"
#: Exit status for "nothing to analyse" (argparse uses the same for bad options).
_EXIT_ERROR = 2


def _decimals(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line; every option has a default, so no argument is required."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {PROG}",
        description="Aggregate flowsweep's MLflow runs over instances (mean ± std of train/test bpd, "
                    "diverged instances counted and left out) into the paper's tables and figures.")
    parser.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the "
                             "current directory, as for flowsweep)")
    # The experiment jobs write to by default: conf/config.yaml holds it, once.
    parser.add_argument("--experiment", default=str(OmegaConf.load(CONF_DIR / "config.yaml").tracking.experiment),
                        help="experiment name (default: %(default)s)")
    parser.add_argument("--sweep", nargs="+", metavar="ID",
                        help=f"sweep ids (the runs' sweep_id tag, e.g. multirun/2026-01-31/12-00-00) or "
                             f"'{LATEST}'; several combine into one table (default: every run)")
    parser.add_argument("--pool-studies", action="store_true",
                        help="pool the trials of Optuna studies into the tables (by default, without --sweep, "
                             "they are left out, each study named on stderr)")
    parser.add_argument("--split", choices=SPLITS, default="test",
                        help="bpd shown in the tables: train, val (the validation rows cut from the training split) "
                             "or test (default: %(default)s)")
    parser.add_argument("--format", choices=(*FORMATS, "csv"), default="text",
                        help="stdout format; csv is the long-form aggregate, one row per cell (default: %(default)s)")
    parser.add_argument("--group-by", nargs="+", default=list(DEFAULT_GROUP_BY), metavar="PARAM",
                        help="params (or tags.NAME) that make a cell: the first splits tables, the second gives "
                             "rows, the rest columns (default: %(default)s)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="write tables in every format, aggregate.csv and PNG figures into DIR")
    parser.add_argument("--figures", action=argparse.BooleanOptionalAction, default=True,
                        help="draw figures into --out (reads every run's batch_bpd history; default: on)")
    parser.add_argument("--figure-format", choices=FIGURE_FORMATS, default="png",
                        help="the figures' files: png, or pdf or svg (vectors, for a paper) (default: %(default)s)")
    parser.add_argument("--log-to-mlflow", action="store_true",
                        help="log the --out files (a temp folder without --out) as one summary run")
    parser.add_argument("--precision", type=_decimals, default=3, help="decimals in the tables (default: %(default)s)")
    parser.add_argument("--versus", metavar="VALUE",
                        help="one column (e.g. opt) against the best other column of each row: difference, "
                             "its standard error, z, and wins/ties/loses at |z| > 2")
    parser.add_argument("--calibrate", action="store_true",
                        help="score each reading (the params that differ within a dataset/depth/layout cell) "
                             "against the paper's parity and random baselines; the best reading's cells follow")
    parser.add_argument("--baselines", type=Path, metavar="CSV",
                        help="the paper's baselines for --calibrate (default: the packaged copy of Tables 2-5)")
    return parser


def _check_out(out: Path) -> None:
    """``--out`` must be a folder this process can write into: checked before any run is read."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:  # read-only, a file in the way, a full disk
        raise AnalysisError(f"--out: cannot write to {out}: {error.strerror or error}") from None


def _calibrate(runs: SweepRuns, args: argparse.Namespace) -> None:
    keys = reading_keys(runs.frame)
    ranking, cells = calibration(runs.frame, load_baselines(args.baselines), keys)
    fmt = "github" if args.format == "markdown" else "simple"
    print(f"Readings scored against the paper's baselines (keys: {', '.join(keys) or 'none'})")
    # The readings' values stay as written (a learning rate of 1e-05 is no 0.000).
    print(ranking.round(args.precision).to_markdown(index=False, tablefmt=fmt, disable_numparse=True))
    print("\nThe best reading, cell by cell (z = (flowsweep - paper) / paper std):")
    print(best_cells(ranking, cells, keys).to_markdown(index=False, tablefmt=fmt, floatfmt=f".{args.precision}f"))


def _analyse(args: argparse.Namespace) -> None:
    group_by = list(dict.fromkeys(args.group_by))
    if args.out is not None:
        _check_out(args.out)
    runs = load_runs(resolve_uri(args.tracking_uri), args.experiment, args.sweep)
    if not args.sweep and not args.pool_studies:  # sweeps named on the command line are what the user asked for
        runs, left_out = without_studies(runs)
        for line in left_out:
            print(f"{PROG}: {line}", file=sys.stderr)
    print(f"{PROG}: {runs.describe()}", file=sys.stderr)
    if args.calibrate:
        _calibrate(runs, args)
        return
    logged = runs.frame.get(f"metrics.{args.split}_bpd")
    if logged is None or logged.isna().all():
        raise AnalysisError(f"--split {args.split}: no run logged {args.split}_bpd (jobs without validation rows, "
                            "dataset.validation_fraction=0, log none)")
    agg = aggregate(runs.frame, group_by)
    if args.versus:
        table = versus(agg, group_by, args.versus, args.split)
        print(table.to_markdown(index=False, tablefmt="github" if args.format == "markdown" else "simple",
                                floatfmt=f".{args.precision}f"))
        print(f"{PROG}: {args.versus} wins {sum(table['verdict'] == 'wins')}, ties {sum(table['verdict'] == 'ties')}, "
              f"loses {sum(table['verdict'] == 'loses')} of {len(table)} rows", file=sys.stderr)
        return
    mixed = mixed_params(runs.frame, group_by)
    if mixed:
        print(f"{PROG}: warning: some cells mix runs whose settings differ in {', '.join(mixed)}; "
              "add them to --group-by to separate them", file=sys.stderr)
    tables = build_tables(agg, group_by, args.split)
    sys.stdout.write(agg.to_csv(index=False) if args.format == "csv" else render(tables, args.format, args.precision))
    if args.out is None and not args.log_to_mlflow:
        return
    client = MlflowClient(runs.uri)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        try:
            written = write_report(out, client, runs, agg, tables, group_by, args.precision, args.figures,
                                   args.figure_format)
        except OSError as error:  # the disk filled up meanwhile
            raise AnalysisError(f"--out: cannot write to {out}: {error.strerror or error}") from None
        if args.out is not None:
            print(f"{PROG}: wrote {len(written)} files to {out}", file=sys.stderr)
        if args.log_to_mlflow:
            settings = {"group_by": " ".join(group_by), "split": args.split, "sweeps": " ".join(args.sweep or ["all"])}
            run_id = log_summary(client, runs, out, settings)
            print(f"{PROG}: logged summary run {run_id} to experiment {runs.experiment!r}", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (0, or 2 when there is nothing to analyse)."""
    args = build_parser().parse_args(argv)
    try:
        _analyse(args)
    except AnalysisError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return _EXIT_ERROR
    return 0
