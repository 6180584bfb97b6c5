"""`scaling fit`, `scaling plot` and `scaling predict`: their parsers, and the flags as typed options
for experiments/workflow/analyse.py (thin wrappers over analysis).

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

import sys

from experiments.workflow.options import FitCommandOptions, PredictOptions

FIT_HELP = "fit scaling laws to a CSV or a run store; write fit.json, report.md and figures"
LOSS_PARTS_HELP = "split each run's loss into phrase memory (filler tokens 2..F, floor 0) and the rest; fit each part"


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

    m = subparsers.add_parser("loss-parts", help=LOSS_PARTS_HELP, description=LOSS_PARTS_HELP)
    m.add_argument("root", help="a run store of the synthetic language (e.g. `scaling run`'s ROOT): every finished run is read")
    m.add_argument("--rows", type=positive_int, metavar="R", help="held-out rows per run (default: its own eval set, so the parts sum to its eval loss)")
    m.set_defaults(func=cmd_loss_parts)


def _level(text: str) -> float:
    from experiments.cli import _checked

    return _checked(float, lambda v: 0 < v < 1, "a coverage strictly between 0 and 1, e.g. 0.95")(text)


def _add_point_args(p, verb: str) -> None:
    from experiments.cli import positive_float

    p.add_argument("--model", type=positive_float, action="append", default=[], metavar="N",
                   help=f"{verb} the loss at N parameters (repeatable; pair each with a --tokens, in order)")
    p.add_argument("--tokens", type=positive_float, action="append", default=[], metavar="D", help="training tokens of the matching --model")


def cmd_fit(args) -> int:
    from experiments.workflow.analyse import fit_command

    settings = {
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
        "fix_E": args.fix_E,
        "free_E": args.free_E,
        "figures": not args.no_figures,
        "train_loss_fallback": args.train_loss_fallback,
    }
    return fit_command(FitCommandOptions(out=args.out, csv=args.csv, run_root=args.run_root, settings=settings,
                                         model=tuple(args.model), tokens=tuple(args.tokens), progress=args.progress))


def cmd_plot(args) -> int:
    from experiments.workflow.analyse import plot_command

    return plot_command(args.dir)


def cmd_predict(args) -> int:
    from experiments.workflow.analyse import predict_command

    return predict_command(PredictOptions(dir=args.dir, at=tuple(args.at), model=tuple(args.model), tokens=tuple(args.tokens),
                                          unique_tokens=tuple(args.unique_tokens), json=args.json))


def cmd_loss_parts(args) -> int:
    from experiments.workflow.loss_parts import loss_parts

    return loss_parts(args.root, args.rows)


def main(argv=None) -> int:
    """`python -m experiments.fit_cmd fit ...` without the rest of the `scaling` command."""
    from experiments.cli import Parser

    parser = Parser(prog="scaling")
    register(parser.add_subparsers(dest="command", required=True, parser_class=Parser))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
