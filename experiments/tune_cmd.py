"""`scaling tune`: the tuning stage -- a learning-rate grid per model size, then lr*(N) = c * N^-gamma.

    scaling tune EXP --root R [--set KEY=VALUE ...] [--extend 2] [the sweep options]

Trains EXP's tune grid into R/tune/ (one run per size and lr, at a short horizon; runs of one size
share a shape and a length, so they pack into one program where packing is on), fits each size's
best lr and the rule (analysis/lr_rule.py), and writes R/tune/lr_rule.json with its figure
R/tune/lr_rule.png. A sweep with lr_rule="tuned" reads that file; `scaling run` runs this stage
first when the experiment's sweep asks for it. A relaunch is a no-op once lr_rule.json exists
(delete it to retune; finished tuning runs are still reused).

The grid: EXP's `tune()` (a lib.sweeps.plans.Tune), else `Tune.from_sweep(sweep())` -- every size
of the sweep's ladder at the base lr x 2^-2..2^2 for 100 steps. A size whose best lr sits on an
edge of its grid gets one more lr past that edge (the grid's step), up to --extend times; the
added lrs are recorded in R/tune/grid_extensions.json so worker processes and relaunches plan the
same runs. A size still on an edge after that is left out of the fit and reported.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import tempfile

from experiments.cli import load_experiment
from lib.config import ConfigError
from lib.store.runstore import RunDir, read_json, write_json_atomic
from lib.sweeps import rules
from lib.sweeps.plans import Plan, Sweep, Tune, size_tag

DEFAULT_EXTEND = 2


def load_tune(spec: str) -> Tune:
    """EXP's tune grid: its `tune()`, else the default grid over its sweep's ladder."""
    from experiments.sweep_cmd import load_sweep

    module = load_experiment(spec)
    if hasattr(module, "tune"):
        tune = module.tune()
        if not isinstance(tune, Tune):
            raise ConfigError(f"{spec}: tune() returned {type(tune).__name__}; return a lib.sweeps.plans.Tune")
        return tune
    return Tune.from_sweep(load_sweep(spec))


def wants_tuning(sweep: Sweep) -> bool:
    return getattr(sweep, "lr_rule", None) == "tuned"


# ================================================================================================
def tuning_points(plan: Plan, tune_dir) -> tuple[list[dict], list[str]]:
    """(tag, N, lr, loss) per finished or diverged run of `plan` (loss None: diverged), and what is missing."""
    points, missing = [], []
    for r in plan.runs:
        run = RunDir(os.path.join(os.fspath(tune_dir), r.run_id), writer=False)
        status, summary = run.status() or {}, run.summary() or {}
        loss = summary.get("eval_loss")
        if status.get("state") == "done" and loss is not None and math.isfinite(loss):
            points.append({"tag": size_tag(r.cfg), "N": r.params, "lr": r.cfg.optimizer.lr, "loss": float(loss), "run_id": r.run_id})
        elif status.get("diverged"):
            points.append({"tag": size_tag(r.cfg), "N": r.params, "lr": r.cfg.optimizer.lr, "loss": None, "run_id": r.run_id})
        else:
            missing.append(f"{r.run_id} ({status.get('state', 'not started')}{': ' + status['reason'] if status.get('reason') else ''})")
    return points, missing


def extensions_for(points: list[dict]) -> dict[str, float]:
    """size tag -> the lr to add: one grid step past the edge its best lr sits on."""
    from analysis.lr_rule import size_optimum

    by_tag: dict[str, list[dict]] = {}
    for p in points:
        by_tag.setdefault(p["tag"], []).append(p)
    out = {}
    for tag, rows in by_tag.items():
        if len(rows) < 3:
            continue
        opt = size_optimum([r["lr"] for r in rows], [r["loss"] for r in rows])
        lrs = opt["lrs"]
        if opt["edge"] == "low":
            out[tag] = lrs[0] * lrs[0] / lrs[1]
        elif opt["edge"] == "high":
            out[tag] = lrs[-1] * lrs[-1] / lrs[-2]
    return out


def run_tune(tune: Tune, root, options=None, extend: int = DEFAULT_EXTEND, say=print) -> int:
    """Train the tune grid into <root>/tune, extend grids whose best lr is on an edge, fit and write
    lr_rule.json. Returns an exit code (0: the rule exists). A no-op when lr_rule.json exists."""
    from analysis.errors import AnalysisError
    from analysis.lr_rule import describe, fit_lr_rule
    from experiments.sweep_cmd import TUNE_SUFFIX, SweepOptions, run_sweep
    from lib.sweeps.executors import SweepStopped

    root = os.fspath(root)
    path = rules.lr_rule_path(root)
    if read_json(path) is not None:
        say(f"tune: {path} exists; nothing to do (delete it to retune)")
        return 0
    options = options or SweepOptions()
    if "optimizer.lr" in options.overrides:  # the grid is the point: a forced lr would make it one value
        say("tune: --set optimizer.lr applies to the sweep, not to the tune grid; ignored here")
        options = dataclasses.replace(options, overrides={k: v for k, v in options.overrides.items() if k != "optimizer.lr"},
                                      sets=tuple(x for x in options.sets if not x.strip().startswith("optimizer.lr=")))
    if options.spec and not options.spec.endswith(TUNE_SUFFIX):
        options = dataclasses.replace(options, spec=options.spec + TUNE_SUFFIX)  # worker processes plan the tune grid
    tune_dir = rules.tune_root(root)
    overrides = dict(options.overrides)
    if not options.run_logs:
        overrides.setdefault("tracking.console", False)  # as run_sweep plans
    if extend < 0:
        raise ConfigError(f"--extend must be an integer >= 0 (how many lrs to add past a grid edge), not {extend}")
    sizes = sorted({size_tag(r.cfg) for r in tune.plan(overrides, root=tune_dir).runs})
    if len(sizes) < 2:  # lr*(N) = c N^-gamma needs two sizes: say so before training anything
        raise ConfigError(f"the tune grid has {len(sizes)} model size ({', '.join(sizes)}); lr*(N) needs at least 2: "
                          "give the sweep a size ladder or a tune() with two or more sizes")
    writer = _process_index() == 0
    for round_ in range(extend + 1):
        try:
            report = run_sweep(tune, tune_dir, options)
        except SweepStopped:
            print("tune stopped by SIGTERM; relaunch the same command to resume", file=sys.stderr)
            return 143
        if report.stopped:
            return 143
        plan = tune.plan(overrides, root=tune_dir)
        points, missing = tuning_points(plan, tune_dir)
        if missing:
            say("tune: runs without a result (failed, not diverged): " + "; ".join(missing)
                + ("; with --worker, rerun once every worker is done" if options.worker else ""))
            return 1
        more = extensions_for(points)
        if not more or round_ == extend:
            break
        say("tune: best lr on a grid edge for " + ", ".join(f"{t} (adding lr {lr:.3g})" for t, lr in sorted(more.items())))
        if writer:
            recorded = rules.read_grid_extensions(tune_dir)
            for tag, lr in more.items():
                recorded.setdefault(tag, []).append(lr)
            write_json_atomic(os.path.join(tune_dir, rules.GRID_EXTENSIONS_FILE), recorded)
        _sync("grid extensions")
    cfg0 = plan.runs[0].cfg
    meta = {
        "batch": cfg0.data.global_batch,
        "seq_len": cfg0.data.seq_len,
        "steps": tune.steps or None,
        "tokens_per_param": tune.tokens_per_param or None,
        "budget": tune.budget or None,
        "schedule": cfg0.optimizer.schedule,
        "parametrization": cfg0.model.parametrization,
        "runs": len(plan.runs),
    }
    try:
        record = fit_lr_rule(points, meta=meta)
    except AnalysisError as e:
        print(f"tune: {e}", file=sys.stderr)
        return 1
    if writer:
        files = _write_rule(record, tune_dir)
        say(f"tune: {describe(record)}")
        for w in record["warnings"]:
            say(f"  warning: {w}")
        say(f"tune -> {files[0]} (figure {files[1]})")
    _sync("lr rule")
    return 0


def _write_rule(record, tune_dir: str) -> list[str]:
    """lr_rule.json and its figure into tune_dir (a gs:// folder: written locally, then copied up)."""
    from analysis.lr_rule import write_lr_rule
    from lib.store import storage

    if not storage.is_url(tune_dir):
        return write_lr_rule(record, tune_dir)
    with tempfile.TemporaryDirectory() as tmp:
        out = []
        for f in write_lr_rule(record, tmp):
            out.append(os.path.join(tune_dir, os.path.basename(f)))
            with open(f, "rb") as fh:
                storage.write_bytes(out[-1], fh.read())
        return out


def tune_stage(args) -> int:
    """`scaling run`'s first stage: tune when the experiment's sweep uses lr_rule="tuned"."""
    from experiments.sweep_cmd import load_sweep, options_from_args

    if not wants_tuning(load_sweep(args.experiment)):
        return 0
    if read_json(rules.lr_rule_path(args.root)) is not None:
        print(f"tune: {rules.lr_rule_path(args.root)} exists; skipping the tune stage")
        return 0
    options = options_from_args(args)
    if options.executor == "local":
        from lib.parallel.distributed import initialize_from_args

        initialize_from_args(args)
    return run_tune(load_tune(args.experiment), args.root, options, extend=getattr(args, "extend", DEFAULT_EXTEND))


def cmd_tune(args) -> int:
    from experiments.sweep_cmd import options_from_args

    options = options_from_args(args)
    if options.executor == "local":
        from lib.parallel.distributed import initialize_from_args

        initialize_from_args(args)
    return run_tune(load_tune(args.experiment), args.root, options, extend=args.extend)


# ================================================================================================
# After the fit: the rule and the sensitivity sweeps in the report
# ================================================================================================
SENSITIVITY_DIR = "sensitivity"  # <root>/sensitivity/<name>: an experiment's sensitivity sweeps and their fits
REPORT_BEGIN, REPORT_END = "<!-- lr-rule -->", "<!-- /lr-rule -->"


def sensitivity_sweeps(spec: str) -> dict[str, Sweep]:
    module = load_experiment(spec)
    return dict(module.sensitivity()) if hasattr(module, "sensitivity") else {}


def sensitivity_stage(args) -> int:
    """`scaling run` after the sweep: train the experiment's sensitivity sweeps (`sensitivity()`:
    name -> sweep, e.g. the old single lr) into <root>/sensitivity/<name>; relaunch-safe like any sweep."""
    from experiments.sweep_cmd import options_from_args, run_sweep
    from lib.sweeps.executors import SweepStopped

    code = 0
    for name, sweep in sensitivity_sweeps(args.experiment).items():
        folder = os.path.join(os.fspath(args.root), SENSITIVITY_DIR, name)
        print(f"\nsensitivity {name}: {rules.describe(rules.resolve_lr_rule(sweep.lr_rule, args.root))} -> {folder}")
        try:
            report = run_sweep(sweep, folder, options_from_args(args))
        except SweepStopped:
            return 143
        code = max(code, report.exit_code)
    return code


def report_stage(args) -> int:
    """`scaling run` after the fit: fit each sensitivity sweep, then put the lr rule and a line per
    sensitivity sweep (its exponent a beside the main fit's) into <root>/fit/report.md and on the
    console. Nothing when the experiment has neither a tuned rule nor sensitivity sweeps."""
    root = os.fspath(args.root)
    sweeps = sensitivity_sweeps(args.experiment)
    record = read_json(rules.lr_rule_path(root))
    if not sweeps and record is None:
        return 0
    main_fit = read_json(os.path.join(root, "fit", "fit.json")) or {}
    lines = [_sensitivity_line(name, os.path.join(root, SENSITIVITY_DIR, name), main_fit) for name in sweeps]
    section = _report_section(record, lines, root)
    report_md = os.path.join(root, "fit", "report.md")
    if os.path.exists(report_md):
        _replace_section(report_md, section)
    print("\n" + "\n".join(line for line in section if line and not line.startswith(("<!--", "|"))))
    return 0


def _sensitivity_line(name: str, folder: str, main_fit: dict) -> str:
    """The exponent a of each approach fitted on the sensitivity sweep, beside the main fit's."""
    from analysis.errors import AnalysisError
    from analysis.report import fit_and_report

    try:
        fit = fit_and_report(folder, os.path.join(folder, "fit"), {"approach": "all"})
    except AnalysisError as e:
        return f"sensitivity {name}: not fitted ({e})"
    parts = []
    for approach, entry in fit.get("fits", {}).items():
        if "a" not in entry:
            continue
        ours = (main_fit.get("fits", {}).get(approach) or {}).get("a")
        parts.append(f"{approach} a = {_with_ci(entry['a'])}" + (f" (with the rule: {_with_ci(ours)})" if ours else ""))
    return f"sensitivity {name} ({folder}): " + ("; ".join(parts) or "no exponent fitted")


def _with_ci(v: dict) -> str:
    ci = v.get("ci")
    return f"{v['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else "")


def _report_section(record, sensitivity_lines, root) -> list[str]:
    from analysis.lr_rule import report_lines

    if record is not None:
        body = report_lines(record, sensitivity_lines, rule_dir=rules.tune_root(root), relative_to=os.path.join(root, "fit"))
    else:
        body = ["## Sensitivity", ""] + [f"- {line}" for line in sensitivity_lines] + [""]
    return [REPORT_BEGIN, *body, REPORT_END]


def _replace_section(path: str, section: list[str]) -> None:
    """Put `section` at the end of the markdown file, replacing an earlier copy of it."""
    text = open(path).read()
    if REPORT_BEGIN in text and REPORT_END in text:
        text = text[: text.index(REPORT_BEGIN)] + text[text.index(REPORT_END) + len(REPORT_END):]
    text = text.rstrip("\n") + "\n\n" + "\n".join(section) + "\n"
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _process_index() -> int:
    import jax

    return jax.process_index()


def _sync(what: str) -> None:
    """Every process waits for process 0's file before planning with it."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"tune: {what}")


def register(subparsers) -> None:
    from experiments.sweep_cmd import _add_sweep_args

    p = subparsers.add_parser("tune", help="an lr grid per model size into --root/tune, then lr*(N) -> lr_rule.json (relaunch: no-op)")
    _add_sweep_args(p)
    from experiments.cli import nonnegative_int

    p.add_argument("--extend", type=nonnegative_int, default=DEFAULT_EXTEND,
                   help=f"add up to this many lrs past a grid edge where a size's best lr sits (default {DEFAULT_EXTEND})")
    p.set_defaults(func=cmd_tune)
