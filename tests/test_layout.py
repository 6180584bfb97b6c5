"""Imports point down only: a lower layer of lib never imports a higher one, lib never imports
analysis or experiments, and analysis reads only the run store and the FLOP counts from lib.
In experiments/: the command line (cli.py and the *_cmd.py parsers) sits above the workflow
(experiments/workflow/), which sits above lib and analysis; only the command line imports argparse.

Checked statically (every import statement in every module, including the lazy ones inside
functions), so a violation fails even on a code path no other test runs.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Each unit of the project and the units it may import (besides itself and third-party code).
LAYERS = {
    "lib.config": set(),
    "lib.store": {"lib.config"},
    "lib.models": {"lib.config"},
    "lib.data": {"lib.config", "lib.store"},
    "lib.flops": {"lib.config", "lib.models"},
    "lib.parallel": {"lib.config"},
    "lib.config_rules": {"lib.config", "lib.models", "lib.data"},  # the rules across sections: above families and sources
    "lib.tasks": {"lib.config", "lib.models"},
    "lib.train": {"lib.config", "lib.config_rules", "lib.flops", "lib.models", "lib.tasks", "lib.data", "lib.parallel", "lib.store"},
    "lib.sweeps": {"lib.config", "lib.config_rules", "lib.flops", "lib.models", "lib.tasks", "lib.data", "lib.parallel", "lib.store",
                   "lib.train"},
    "analysis": {"lib.store", "lib.flops"},
}
LIB = {unit for unit in LAYERS if unit.startswith("lib.")}
LAYERS.update({
    "experiments.defs": LIB | {"analysis"},  # experiment files (quickstart.py, ...): sweeps and configs
    "experiments.workflow": LIB | {"analysis"},  # the stages; experiment files are loaded by path, not imported
    "experiments.cli": LIB | {"analysis", "experiments.workflow"},  # the `scaling` command: flags -> typed options
})
ARGPARSE_UNITS = {"experiments.cli"}  # the only unit that knows argparse


def unit_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "analysis":
        return "analysis"
    if parts[0] == "experiments":
        if len(parts) > 1 and parts[1] == "workflow":
            return "experiments.workflow"
        if len(parts) > 1 and (parts[1] == "cli" or parts[1].endswith("_cmd")):
            return "experiments.cli"
        return "experiments.defs" if len(parts) > 1 else "experiments"
    if parts[0] == "lib" and len(parts) > 1:
        return f"lib.{parts[1]}"
    return None


def imported_modules(source: str) -> list[tuple[int, str]]:
    tree = ast.parse(source)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in ("lib", "experiments", "experiments.workflow"):  # `from lib import flops` imports lib.flops
                out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, node.module))
    return out


def module_name(rel: str) -> str:
    parts = [p for p in pathlib.PurePosixPath(rel).with_suffix("").parts if p != "__init__"]
    return ".".join(parts)


def violations(sources: dict[str, str]) -> list[str]:
    """`sources` maps a path relative to the repository root to the file's text."""
    bad = []
    for rel, source in sources.items():
        me = unit_of(module_name(rel))
        for lineno, mod in imported_modules(source):
            if mod.split(".")[0] == "argparse" and me not in ARGPARSE_UNITS:
                bad.append(f"{rel}:{lineno}: {me} imports argparse (only the command line, experiments/cli.py and *_cmd.py, may)")
                continue
            other = unit_of(mod)
            if other is None or other == me:
                continue
            if other == "lib.store" and me == "analysis" and mod not in ("lib.store", "lib.store.runstore"):
                bad.append(f"{rel}:{lineno}: analysis may read only lib.store.runstore, not {mod}")
            elif other not in LAYERS.get(me, set()):
                bad.append(f"{rel}:{lineno}: {me} imports {mod} ({other} is not below it)")
    return bad


def project_sources() -> dict[str, str]:
    files = sorted(p for d in ("lib", "analysis", "experiments") for p in (ROOT / d).rglob("*.py"))
    return {p.relative_to(ROOT).as_posix(): p.read_text() for p in files}


def test_every_unit_of_lib_and_experiments_is_placed_in_a_layer():
    units = {unit_of(module_name(rel)) for rel in project_sources() if rel.startswith(("lib/", "experiments/"))}
    assert units - {"lib.__init__", "experiments", None} <= set(LAYERS), f"unplaced: {units - set(LAYERS)}"


def test_imports_point_down_only():
    assert violations(project_sources()) == []


@pytest.mark.parametrize(
    "where, source, complaint",
    [
        ("lib/store/x.py", "from lib.sweeps.plans import Plan\n", "lib.store imports lib.sweeps.plans"),
        ("lib/train/x.py", "def f():\n    import analysis.fit\n", "lib.train imports analysis.fit"),
        ("lib/models/x.py", "from lib import flops\n", "lib.models imports lib.flops"),
        ("analysis/x.py", "from lib.train.loop import train\n", "analysis imports lib.train.loop"),
        ("analysis/x.py", "from lib.store.storage import is_url\n", "analysis may read only lib.store.runstore"),
        ("lib/sweeps/x.py", "def f():\n    from experiments.workflow.sweep import run_sweep\n", "lib.sweeps imports experiments.workflow.sweep"),
        ("analysis/x.py", "from experiments import cli\n", "analysis imports experiments.cli"),
        ("experiments/workflow/x.py", "def f():\n    from experiments.sweep_cmd import options_from_args\n",
         "experiments.workflow imports experiments.sweep_cmd"),
        ("experiments/workflow/x.py", "import argparse\n", "experiments.workflow imports argparse"),
        ("experiments/quickstart2.py", "from experiments.workflow.run import run_experiment\n", "experiments.defs imports experiments.workflow.run"),
    ],
)
def test_an_upward_import_is_caught(where, source, complaint):
    found = violations({where: source})
    assert len(found) == 1 and complaint in found[0], found
