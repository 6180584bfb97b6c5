"""Experiment files: loaded by path or by name, and the sweeps they define."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from lib.config import ConfigError

EXPERIMENTS_DIR = Path(__file__).resolve().parents[1]  # experiments/


def known_experiments() -> str:
    return ", ".join(sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.py")
                            if not p.stem.startswith("_") and p.stem != "cli" and not p.stem.endswith("_cmd")))


def load_experiment(spec: str) -> ModuleType:
    """An experiment by file path (`experiments/tiny.py`) or by name (`tiny`)."""
    path = Path(spec)
    if not path.exists():
        path = EXPERIMENTS_DIR / f"{spec}.py"
    if not path.exists():
        raise ConfigError(f"experiment '{spec}' not found: give a path to a .py file or one of: {known_experiments()}")
    if path.is_dir() or path.suffix != ".py":  # e.g. a CSV or a run folder passed by mistake
        what = "a folder" if path.is_dir() else f"a {path.suffix or 'suffix-less'} file"
        raise ConfigError(f"experiment '{spec}' is {what}, not a Python file: give an experiment .py file defining config() or sweep(), "
                          f"or one of: {known_experiments()}")
    module_spec = importlib.util.spec_from_file_location(f"experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


# The sweeps an experiment file defines. lib.sweeps.plans (and so jax) is imported here, on use only,
# so that the command line's parsers and `load_experiment` stay quick.
def load_sweep(spec: str):
    """The experiment's sweep(), or a sweep of one for a file that defines only config()."""
    from lib.sweeps.plans import Grid, Sweep

    module = load_experiment(spec)
    if hasattr(module, "sweep"):
        sweep = module.sweep()
        if not isinstance(sweep, Sweep):
            raise ConfigError(f"{spec}: sweep() returned {type(sweep).__name__}; return a lib.sweeps.plans Grid, IsoFlop or TokensPerParam")
        return sweep
    if hasattr(module, "config"):
        return Grid(module.config())  # a single run is a sweep of one
    raise ConfigError(f"{spec} defines neither sweep() nor config()")


def load_tune(spec: str):
    """EXP's tune grid: its `tune()`, else the default grid over its sweep's ladder."""
    from lib.sweeps.plans import Tune

    module = load_experiment(spec)
    if hasattr(module, "tune"):
        tune = module.tune()
        if not isinstance(tune, Tune):
            raise ConfigError(f"{spec}: tune() returned {type(tune).__name__}; return a lib.sweeps.plans.Tune")
        return tune
    return Tune.from_sweep(load_sweep(spec))


def load_grid(spec: str, grid: str):
    """The sweep a worker process plans: the experiment's sweep (SWEEP_GRID) or its tune grid (TUNE_GRID)."""
    from experiments.workflow.options import SWEEP_GRID, TUNE_GRID

    if grid == TUNE_GRID:
        return load_tune(spec)
    if grid == SWEEP_GRID:
        return load_sweep(spec)
    raise ConfigError(f"unknown grid '{grid}' of experiment {spec}: choose {SWEEP_GRID} or {TUNE_GRID}")


def wants_tuning(sweep) -> bool:
    return getattr(sweep, "lr_rule", None) == "tuned"


def sensitivity_sweeps(spec: str) -> dict:
    """name -> sweep: the experiment's `sensitivity()` (e.g. the old single lr), else none."""
    module = load_experiment(spec)
    return dict(module.sensitivity()) if hasattr(module, "sensitivity") else {}
