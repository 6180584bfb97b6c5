"""The `scaling` command itself: the installed console script, a fast `--help`, help on every flag,
and bad arguments as one-line errors (exit 2, as argparse's usage errors) before any work."""

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from experiments.cli import COMMANDS, build_parser, main

REPO = Path(__file__).resolve().parent.parent


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO)}  # this tree's code behind the installed script


def installed_scaling() -> str:
    """The `scaling` console script pip installed into this interpreter's environment."""
    for folder in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        path = os.path.join(folder, "scaling")
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    found = shutil.which("scaling")
    assert found, "no installed `scaling` console script: pip install -e . (pyproject [project.scripts])"
    return found


def test_the_installed_console_script_runs_the_cli(tmp_path):
    script = installed_scaling()
    proc = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60, env=_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert all(name in proc.stdout for name in COMMANDS)
    proc = subprocess.run([script, "predict", str(tmp_path), "--at", "1e20"], capture_output=True, text=True, timeout=120, env=_env(), cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [f"scaling predict: error: {tmp_path / 'fit.json'} does not exist; run `scaling fit` first"]


def test_help_imports_no_subcommand_module():
    """`scaling --help` lists every subcommand without importing jax, pandas, scipy or matplotlib."""
    code = ("import sys\nfrom experiments.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('jax', 'flax', 'pandas', 'scipy', 'matplotlib', 'experiments.fit_cmd', 'experiments.sweep_cmd') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_the_workflow_commands_build_their_parsers_without_jax():
    """`scaling sweep --help` (run, status, tune, verify, plan, train) imports the workflow only when
    the command runs: building its parser imports neither jax nor the workflow's stages."""
    code = ("import sys\nfrom experiments.cli import build_parser\n"
            "for c in ('sweep', 'run', 'status', 'tune', 'verify', 'plan', 'train'):\n    build_parser(c)\n"
            "print(sorted(m for m in sys.modules if m in ('jax', 'pandas', 'scipy', 'matplotlib') or m.startswith('experiments.workflow.')"
            " and m not in ('experiments.workflow.experiment', 'experiments.workflow.options')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def _subparsers(parser):
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action


def test_the_command_table_matches_what_the_modules_register_and_every_flag_has_help():
    sub = _subparsers(build_parser())
    registered = {a.dest: a.help for a in sub._choices_actions}
    assert registered == {name: help_ for name, (_, help_) in COMMANDS.items()}
    for name, parser in sub.choices.items():
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help and action.help != argparse.SUPPRESS, f"scaling {name} {action.option_strings or action.dest} has no help"


@pytest.mark.parametrize("argv, message", [
    (["fit", "--csv", "x.csv", "--out", "o", "--n-starts", "0"], "argument --n-starts: must be an integer >= 1, not 0"),
    (["fit", "--csv", "x.csv", "--out", "o", "--n-starts", "-2"], "argument --n-starts: must be an integer >= 1, not -2"),
    (["fit", "--csv", "x.csv", "--out", "o", "--seed", "-1"], "argument --seed: must be an integer >= 0, not -1"),
    (["tune", "tiny", "--root", "r", "--extend", "-1"], "argument --extend: must be an integer >= 0, not -1"),
    (["verify", "fitdir", "--at", "0"], "argument --at: must be a positive finite number, not 0"),
    (["predict", "fitdir", "--at=-1e18"], "argument --at: must be a positive finite number, not -1e18"),
])
def test_bad_numbers_are_one_line_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and message in err, err


def test_fit_out_must_be_a_writable_folder(tmp_path, capsys):
    csv = tmp_path / "p.csv"
    csv.write_text("N,D,loss\n1e8,2e9,3.1\n")
    (tmp_path / "file").write_text("mine")
    for out, message in ((tmp_path / "file", "is an existing file, not a folder"), (tmp_path / "file" / "fit", "cannot be created (Not a directory)")):
        assert main(["fit", "--csv", str(csv), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"scaling fit: error: --out {out} {message}" in err, err
    assert (tmp_path / "file").read_text() == "mine"


def test_train_config_must_be_an_experiment_file(tmp_path, capsys):
    (tmp_path / "points.csv").write_text("N,D,loss\n")
    for config, what in ((tmp_path / "points.csv", "is a .csv file"), (tmp_path, "is a folder")):
        assert main(["train", "--config", str(config), "--workdir", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"config error: --config: experiment '{config}' {what}, not a Python file"), err
    assert not (tmp_path / "r").exists()


ONE_SIZE = """
from lib.config import DataConfig, RunConfig, TrainConfig
from lib.sweeps.plans import IsoFlop

BASE = RunConfig(data=DataConfig(seq_len=16, global_batch=8), train=TrainConfig(eval_tokens=128))

def sweep():
    return IsoFlop([4e8], [dict(d_model=8, n_layers=1, n_heads=2)], base=BASE, name="one", min_steps=10)
"""


def test_tune_with_one_size_fails_before_training(tmp_path, capsys):
    exp = tmp_path / "one.py"
    exp.write_text(ONE_SIZE)
    assert main(["tune", str(exp), "--root", str(tmp_path / "root"), "--progress", "off"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the tune grid has 1 model size (d8-L1); lr*(N) needs at least 2" in err, err
    tune_dir = tmp_path / "root" / "tune"
    assert not tune_dir.exists() or not [p for p in tune_dir.iterdir() if (p / "config.json").exists()]  # nothing trained


def test_verify_refuses_an_unknown_set_key_and_keeps_the_check(tmp_path, capsys):
    fit_dir = tmp_path / "fit"
    fit_dir.mkdir()
    check = {"C": 1e18, "status": "done", "checks": [], "runs": []}
    (fit_dir / "check.json").write_text(json.dumps(check))
    assert main(["verify", str(fit_dir), "--set", "model.foo=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown config key 'model.foo'" in err
    assert json.loads((fit_dir / "check.json").read_text()) == check


def test_a_failed_or_skipped_check_never_replaces_one_that_ran(tmp_path, capsys):
    from analysis.verify import skipped
    from experiments.workflow.check import _write

    done = {"C": 1e18, "status": "done", "checks": [{"approach": "approach3"}], "runs": []}
    (tmp_path / "check.json").write_text(json.dumps(done))
    for status in ("skipped", "failed"):
        new = skipped(3e18, "no usable frontier") if status == "skipped" else {**done, "status": "failed", "reason": "run x diverged"}
        _write(tmp_path, new)
        assert json.loads((tmp_path / "check.json").read_text()) == done
        assert json.loads((tmp_path / f"check.{status}.json").read_text()) == new
        assert f"this {status} one is in {tmp_path / f'check.{status}.json'}" in capsys.readouterr().err
