"""`scaling fit`, `scaling plot` and `scaling predict` over typed options: thin wrappers over analysis.

Bad input prints one `error:` line, never a traceback: exit 2 for a bad argument (a usage error, as
argparse's), 1 for data that cannot be fitted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import warnings

from experiments.workflow.options import FitCommandOptions, PredictOptions


def _points(model, tokens) -> list[tuple[float, float]]:
    """The (N, D) pairs of --model/--tokens; AnalysisError when their counts differ."""
    from analysis.errors import AnalysisError

    if len(model) != len(tokens):
        raise AnalysisError(f"give one --tokens per --model: {len(model)} --model and {len(tokens)} --tokens values")
    return list(zip(model, tokens))


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


def fit_command(opts: FitCommandOptions) -> int:
    """`scaling fit`: write fit.json, report.md and the figures into opts.out; print the summary. An exit code."""
    from analysis.errors import AnalysisError, FitWarning
    from analysis.report import fit_and_report, summary

    if (opts.csv is None) == (opts.run_root is None):
        return _error("fit", "give either --csv FILE or a RUN_ROOT folder (exactly one)", 2)
    problem = _out_dir_problem(opts.out)
    if problem:
        return _error("fit", problem, 2)
    try:
        points = _points(opts.model, opts.tokens)
    except AnalysisError as e:
        return _error("fit", str(e), 2)
    options = {**opts.settings, "points": tuple(points)}
    if opts.csv is not None:
        from analysis.data import load_csv

        load = lambda: load_csv(opts.csv)  # noqa: E731  (a CSV path is read as CSV whatever its name)
    else:
        load = lambda: opts.run_root  # noqa: E731
    try:
        with warnings.catch_warnings(), _progress(opts.progress, options):
            warnings.simplefilter("ignore", FitWarning)  # the record carries them; printed below
            record = fit_and_report(load(), opts.out, options)
    except AnalysisError as e:
        return _error("fit", str(e))
    for line in record.get("notes", []) + record.get("warnings", []):
        print(f"warning: {line}", file=sys.stderr)
    print(summary(record))
    print(f"wrote {opts.out}/fit.json, {opts.out}/report.md and {len(record.get('figures', []))} figure files")
    return 0


@contextlib.contextmanager
def _progress(setting: str, options: dict):
    """A tqdm line on stderr naming the fit's stage (a fit is silent for tens of seconds otherwise)."""
    if setting == "off" or (setting == "auto" and not sys.stderr.isatty()):
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


def plot_command(fit_dir: str) -> int:
    """`scaling plot DIR`: re-draw the figures of the fit in DIR."""
    from analysis.errors import AnalysisError, FitWarning
    from analysis.report import replot

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FitWarning)
            paths = replot(fit_dir)
    except AnalysisError as e:
        return _error("plot", str(e))
    print(f"re-drew {len(paths)} figure files in {fit_dir}")
    return 0


def predict_command(opts: PredictOptions) -> int:
    """`scaling predict DIR`: print (or --json) the predictions of the fit in opts.dir."""
    import json

    from analysis.errors import AnalysisError
    from analysis.predict import point_fits, predict, predict_points
    from analysis.report import json_safe, point_lines, prediction_lines, read_record

    at, unique_tokens = list(opts.at), list(opts.unique_tokens)
    try:  # usage errors first: exit 2, as argparse's
        pairs = _points(opts.model, opts.tokens)
        if not at and not pairs:
            raise AnalysisError("give --at C (compute-optimal allocation) and/or --model N --tokens D (loss at that size and data)")
    except AnalysisError as e:
        return _error("predict", str(e), 2)
    try:
        record = read_record(opts.dir)
        names = [n for n, e in record["fits"].items() if "frontier_model" in e]
        if at and not names:
            raise AnalysisError(f"{opts.dir}/fit.json has no compute-optimal frontier (fit with --law chinchilla)")
        rows = []
        if pairs:
            if not point_fits(record):
                raise AnalysisError(f"{opts.dir}/fit.json has no law of N and D to predict the loss at (N, D) with (fit approach 3 or an N, D law)")
            N, D = zip(*pairs)
            if unique_tokens and len(unique_tokens) != len(pairs):
                raise AnalysisError(f"give one --unique-tokens per --model/--tokens pair or none: {len(pairs)} pairs and {len(unique_tokens)} --unique-tokens values")
            U = unique_tokens or None
            rows = [r for n in point_fits(record) for r in predict_points(record, n, N, D, U)]
        if opts.json:
            out = {"C": [float(c) for c in at], "approaches": {n: predict(record, n, at) for n in names}} if at else {}
            if pairs:
                out["points"] = rows
            print(json.dumps(json_safe(out), indent=2, allow_nan=False))
            return 0
        for c in at:
            print("\n".join(prediction_lines(record, c)))
        if rows:
            print("\n".join(point_lines(rows)))
    except AnalysisError as e:
        return _error("predict", str(e))
    return 0
