"""`scaling fit`, `scaling plot` and `scaling predict`: thin command-line wrappers over analysis.

    scaling fit --csv FILE --out DIR [--law chinchilla|power-N|power-D|power-C|kaplan|chinchilla-tied|data-constrained]
    scaling fit RUN_ROOT --out DIR [--approach 1|2|3|all] [--bootstrap K] [--params total|non_embedding|active] [--at C]
    scaling plot DIR
    scaling predict DIR --at C [--at C2 ...] [--json]
    scaling predict DIR --model N --tokens D [--model N2 --tokens D2 ...] [--json]

`register(subparsers)` adds the subcommands to the `scaling` parser (experiments/cli.py); each
sets `func(args) -> exit code`. Bad input prints one `error:` line, never a traceback: exit 2 for a
bad argument (a usage error, as argparse's), 1 for data that cannot be fitted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import warnings

FIT_HELP = "fit scaling laws to a CSV or a run store; write fit.json, report.md and figures"


def register(subparsers) -> None:
    from analysis.laws import LAWS
    from experiments.cli import nonnegative_int, positive_float, positive_int

    p = subparsers.add_parser("fit", help=FIT_HELP, description=FIT_HELP)
    src = p.add_argument_group("data (one of)")
    src.add_argument("run_root", nargs="?", help="run-store folder: every finished run is fitted, the others are listed")
    src.add_argument("--csv", metavar="FILE", help="CSV with columns N, D, loss (optional C, run, budget, U: unique tokens)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for fit.json, report.md and the figures")
    p.add_argument("--law", choices=list(LAWS), default="chinchilla",
                   help="functional form (default chinchilla; chinchilla-tied: alpha = beta; data-constrained: repeated epochs, needs U)")
    p.add_argument("--fix-E", type=float, metavar="E", dest="fix_E",
                   help="the known floor: approach 3 holds E there (its free-E fit a diagnostic beside it) and approach 2's "
                        "L*(C) = E + A C^-gamma rests on it (default: the entropy floor every run records; a CSV has none)")
    p.add_argument("--free-E", action="store_true", dest="free_E",
                   help="approach 3 fits E freely even where the floor is known (default: E held at the floor)")
    p.add_argument("--approach", choices=["1", "2", "3", "all"], default="all",
                   help="Chinchilla approach(es); 'all' runs every one the data allow (default)")
    p.add_argument("--bootstrap", type=nonnegative_int, default=200, metavar="K", help="bootstrap resamples for intervals (default 200; 0: none)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the bootstrap and of --n-starts' subset (an integer >= 0; default 0)")
    p.add_argument("--ci-level", type=_level, default=0.95, help="interval coverage (default 0.95)")
    p.add_argument("--huber-delta", type=positive_float, default=1e-3, help="Huber delta on log residuals (default 1e-3)")
    p.add_argument("--min-tokens-per-param", type=float, metavar="R", help="drop points with D/N < R")
    p.add_argument("--exclude-top-loss", type=nonnegative_int, default=0, metavar="K", help="drop the K highest-loss points")
    p.add_argument("--params", choices=["total", "non_embedding", "active"], default="total",
                   help="which N a run store gives (default total; active: per token, differs from total for moe runs; the report says which)")
    p.add_argument("--metric", choices=["loss", "error"], default="loss",
                   help="what to fit from a run store: eval loss (default), or an image classifier's top-1 eval error (floor: bayes_error)")
    p.add_argument("--holdout-largest", type=nonnegative_int, default=0, metavar="K",
                   help="also fit without the K largest budgets and report the error predicting them")
    p.add_argument("--at", type=positive_float, action="append", default=[], metavar="C",
                   help="also tabulate the compute-optimal allocation at C FLOPs (repeatable; figures reach it too)")
    _add_point_args(p, "also tabulate")
    p.add_argument("--n-starts", type=positive_int, metavar="K", help="a seeded subset of K >= 1 starting points instead of the law's whole grid (quick looks)")
    p.add_argument("--train-loss-fallback", action="store_true",
                   help="fit a finished run that has no finite eval loss on its final train loss (said in the notes); "
                        "default: such a run is left out of the fit, named")
    p.add_argument("--no-figures", action="store_true", help="skip the figures")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="the fit's stages (starts, bootstrap, figures) as a progress line on stderr (auto: when a terminal)")
    p.set_defaults(func=cmd_fit)

    q = subparsers.add_parser("plot", help="re-draw the figures of a fit from DIR/fit.json and the data it names")
    q.add_argument("dir", help="a folder written by `scaling fit`")
    q.set_defaults(func=cmd_plot)

    r = subparsers.add_parser("predict", help="compute-optimal N, D and the loss to expect at compute C, from a fit")
    r.add_argument("dir", help="a folder written by `scaling fit` (or `scaling run`'s ROOT/fit)")
    r.add_argument("--at", type=positive_float, action="append", default=[], metavar="C", help="compute in FLOPs (repeatable)")
    _add_point_args(r, "predict")
    r.add_argument("--unique-tokens", type=float, action="append", default=[], metavar="U",
                   help="unique tokens behind the matching --tokens (data-constrained law; default D: nothing repeats)")
    r.add_argument("--json", action="store_true",
                   help="print JSON: {C: [...], approaches: {name: [row per C]}} for --at; {points: [row per (N, D) and approach]} for --model/--tokens")
    r.set_defaults(func=cmd_predict)


def _level(text: str) -> float:
    from experiments.cli import _checked

    return _checked(float, lambda v: 0 < v < 1, "a coverage strictly between 0 and 1, e.g. 0.95")(text)


def _add_point_args(p, verb: str) -> None:
    from experiments.cli import positive_float

    p.add_argument("--model", type=positive_float, action="append", default=[], metavar="N",
                   help=f"{verb} the loss at N parameters (repeatable; pair each with a --tokens, in order)")
    p.add_argument("--tokens", type=positive_float, action="append", default=[], metavar="D", help="training tokens of the matching --model")


def _points(args) -> list[tuple[float, float]]:
    """The (N, D) pairs of --model/--tokens; AnalysisError when their counts differ."""
    from analysis.errors import AnalysisError

    if len(args.model) != len(args.tokens):
        raise AnalysisError(f"give one --tokens per --model: {len(args.model)} --model and {len(args.tokens)} --tokens values")
    return list(zip(args.model, args.tokens))


def _error(command: str, message: str, code: int = 1) -> int:
    print(f"scaling {command}: error: {message}", file=sys.stderr)
    return code


def _out_dir_problem(out: str) -> str | None:
    """Why --out cannot hold the fit's files (None: it can), checked before the fit's minute of work."""
    if os.path.exists(out) and not os.path.isdir(out):
        return f"--out {out} is an existing file, not a folder: give a folder for fit.json, report.md and the figures"
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        return f"--out {out} cannot be created ({e.strerror or e}): give a folder you can write to"
    if not os.access(out, os.W_OK | os.X_OK):
        return f"--out {out} is not writable: give a folder you can write to"
    return None


def cmd_fit(args) -> int:
    from analysis.errors import AnalysisError, FitWarning
    from analysis.report import fit_and_report, summary

    if (args.csv is None) == (args.run_root is None):
        return _error("fit", "give either --csv FILE or a RUN_ROOT folder (exactly one)", 2)
    problem = _out_dir_problem(args.out)
    if problem:
        return _error("fit", problem, 2)
    try:
        points = _points(args)
    except AnalysisError as e:
        return _error("fit", str(e), 2)
    options = {
        "law": args.law,
        "approach": args.approach,
        "bootstrap": args.bootstrap,
        "seed": args.seed,
        "ci_level": args.ci_level,
        "huber_delta": args.huber_delta,
        "min_tokens_per_param": args.min_tokens_per_param,
        "exclude_top_loss": args.exclude_top_loss,
        "params": args.params,
        "metric": args.metric,
        "holdout_largest": args.holdout_largest,
        "n_starts": args.n_starts,
        "at": tuple(args.at),
        "points": tuple(points),
        "fix_E": args.fix_E,
        "free_E": args.free_E,
        "figures": not args.no_figures,
        "train_loss_fallback": args.train_loss_fallback,
    }
    if args.csv is not None:
        from analysis.data import load_csv

        load = lambda: load_csv(args.csv)  # noqa: E731  (a CSV path is read as CSV whatever its name)
    else:
        load = lambda: args.run_root  # noqa: E731
    try:
        with warnings.catch_warnings(), _progress(args, options):
            warnings.simplefilter("ignore", FitWarning)  # the record carries them; printed below
            record = fit_and_report(load(), args.out, options)
    except AnalysisError as e:
        return _error("fit", str(e))
    for line in record.get("notes", []) + record.get("warnings", []):
        print(f"warning: {line}", file=sys.stderr)
    print(summary(record))
    print(f"wrote {args.out}/fit.json, {args.out}/report.md and {len(record.get('figures', []))} figure files")
    return 0


@contextlib.contextmanager
def _progress(args, options: dict):
    """A tqdm line on stderr naming the fit's stage (a fit is silent for tens of seconds otherwise)."""
    if args.progress == "off" or (args.progress == "auto" and not sys.stderr.isatty()):
        yield
        return
    from tqdm import tqdm

    from analysis import progress

    chinchilla = options["law"] == "chinchilla"
    total = (3 if chinchilla and options["approach"] == "all" else 1) + bool(options["holdout_largest"]) + bool(options["figures"])
    size = shutil.get_terminal_size()  # 80x24 where a terminal reports 0x0, on which tqdm would hide its line
    bar = tqdm(total=total, desc="fit", file=sys.stderr, leave=False, ncols=size.columns, nrows=size.lines,
               bar_format="{desc} | stage {n_fmt}/{total_fmt} | {elapsed}")
    started = []

    def on_stage(what: str) -> None:
        if started:
            bar.update(1)
        started.append(what)
        bar.set_description(f"fit: {what}")

    try:
        with progress.reporting(on_stage):
            yield
    finally:
        bar.close()


def cmd_plot(args) -> int:
    from analysis.errors import AnalysisError, FitWarning
    from analysis.report import replot

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FitWarning)
            paths = replot(args.dir)
    except AnalysisError as e:
        return _error("plot", str(e))
    print(f"re-drew {len(paths)} figure files in {args.dir}")
    return 0


def cmd_predict(args) -> int:
    import json

    from analysis.errors import AnalysisError
    from analysis.predict import point_fits, predict, predict_points
    from analysis.report import json_safe, point_lines, prediction_lines, read_record

    try:  # usage errors first: exit 2, as argparse's
        pairs = _points(args)
        if not args.at and not pairs:
            raise AnalysisError("give --at C (compute-optimal allocation) and/or --model N --tokens D (loss at that size and data)")
    except AnalysisError as e:
        return _error("predict", str(e), 2)
    try:
        record = read_record(args.dir)
        names = [n for n, e in record["fits"].items() if "frontier_model" in e]
        if args.at and not names:
            raise AnalysisError(f"{args.dir}/fit.json has no compute-optimal frontier (fit with --law chinchilla)")
        rows = []
        if pairs:
            if not point_fits(record):
                raise AnalysisError(f"{args.dir}/fit.json has no law of N and D to predict the loss at (N, D) with (fit approach 3 or an N, D law)")
            N, D = zip(*pairs)
            if args.unique_tokens and len(args.unique_tokens) != len(pairs):
                raise AnalysisError(f"give one --unique-tokens per --model/--tokens pair or none: {len(pairs)} pairs and {len(args.unique_tokens)} --unique-tokens values")
            U = args.unique_tokens or None
            rows = [r for n in point_fits(record) for r in predict_points(record, n, N, D, U)]
        if args.json:
            out = {"C": [float(c) for c in args.at], "approaches": {n: predict(record, n, args.at) for n in names}} if args.at else {}
            if pairs:
                out["points"] = rows
            print(json.dumps(json_safe(out), indent=2, allow_nan=False))
            return 0
        for c in args.at:
            print("\n".join(prediction_lines(record, c)))
        if rows:
            print("\n".join(point_lines(rows)))
    except AnalysisError as e:
        return _error("predict", str(e))
    return 0


def main(argv=None) -> int:
    """`python -m experiments.fit_cmd fit ...` without the rest of the `scaling` command."""
    from experiments.cli import Parser

    parser = Parser(prog="scaling")
    register(parser.add_subparsers(dest="command", required=True, parser_class=Parser))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
