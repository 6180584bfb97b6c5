"""The typed options of the workflow's stages: frozen dataclasses that the command line
(experiments/cli.py and the *_cmd.py parsers) fills from its flags, and that worker processes
receive as JSON (experiments/workflow/worker.py) -- never argparse namespaces or strings.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

DEFAULT_EXTEND = 2  # `scaling tune --extend` / `scaling run`: lrs added past a grid edge
SWEEP_GRID, TUNE_GRID = "sweep", "tune"  # which of an experiment's sweeps: its sweep() (or config()), or its tune grid


@dataclasses.dataclass(frozen=True)
class Distributed:
    """Joining JAX's multi-controller runtime (lib/parallel/distributed.py); all None: auto-detect."""
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    heartbeat_timeout: int | None = None

    def join(self) -> None:
        from lib.parallel.distributed import initialize

        initialize(self.coordinator, self.num_processes, self.process_id, self.heartbeat_timeout)


@dataclasses.dataclass(frozen=True)
class SweepOptions:
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # --set, parsed
    retries: int = 2  # a failed run is tried at most retries + 1 times in all (status.json's attempts)
    worker: tuple[int, int] | None = None  # (i, n): this host's static share of the sorted run list
    executor: str = "local"  # local: in this process, one run after another | processes: one per device group | ray
    devices_per_worker: int = 1
    workers: int | None = None  # processes executor: default every GPU group; required on CPU
    progress: str = "auto"  # auto: a tqdm bar when stderr is a terminal | on | off
    compile_cache: str = "auto"  # auto: <root>/.jax_cache for local roots | off | a directory
    run_logs: bool = False  # each run's per-step console lines (off: one line per run)
    spec: str = ""  # the experiment's path or name: worker processes load it again
    grid: str = SWEEP_GRID  # which of its sweeps worker processes plan: SWEEP_GRID or TUNE_GRID
    ray_address: str | None = None  # ray executor: None/local starts one here; auto or host:port joins a cluster
    ray_resources: Mapping[str, float] = dataclasses.field(default_factory=lambda: {"CPU": 1})  # per task (a pack of runs)
    pack: str = "auto"  # runs of one shape train together: auto (as many as fit the device memory) | K | 1 (each alone)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "SweepOptions":
        fields = json.loads(text)
        if fields.get("worker") is not None:
            fields["worker"] = tuple(fields["worker"])
        return cls(**fields)


@dataclasses.dataclass(frozen=True)
class TuneOptions:
    sweep: SweepOptions = SweepOptions()  # how the grid's runs train (spec: the experiment)
    extend: int = DEFAULT_EXTEND  # lrs to add past a grid edge where a size's best lr sits


@dataclasses.dataclass(frozen=True)
class CheckOptions:
    """The prediction check (`scaling verify`, the last stage of `scaling run`)."""
    fit_dir: str
    root: str | None = None  # the run root to train into (default: the run store the fit read)
    at: float | None = None  # the budget C (default: the sweep's next budget up)
    experiment: str | None = None  # default: the one the root's sweep manifest names
    neighbours: bool = False  # also train the ladder shapes nearest N_opt/2 and 2 N_opt
    allocation: bool = False  # also train 5 sizes around N_opt and compare the measured optimum (analysis/allocation.py)
    sweep: SweepOptions = SweepOptions()
    report_sections: tuple[str, ...] = ()  # lines report.md carries after the fit's own (the lr rule, sensitivity)


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """`scaling run`: tune (when the sweep's lr rule is "tuned"), sweep, sensitivity, fit, report, check."""
    spec: str
    root: str
    sweep: SweepOptions = SweepOptions()
    distributed: Distributed = Distributed()
    extend: int = DEFAULT_EXTEND  # the tune stage's --extend
    verify: bool = True  # the prediction check at the next budget
    neighbours: bool = False
    allocation: bool = False


@dataclasses.dataclass(frozen=True)
class FitCommandOptions:
    """`scaling fit`: a CSV or a run root (exactly one) into `out`; `settings`: analysis FitOptions' fields."""
    out: str
    csv: str | None = None
    run_root: str | None = None
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # law, approach, bootstrap, ... (without points)
    model: tuple[float, ...] = ()  # --model N, each with the --tokens D at its place
    tokens: tuple[float, ...] = ()
    progress: str = "auto"  # the fit's stages as a progress line on stderr: auto (a terminal) | on | off


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """`scaling predict DIR`: the compute-optimal allocation at each C, and/or the loss at (N, D) pairs."""
    dir: str
    at: tuple[float, ...] = ()
    model: tuple[float, ...] = ()
    tokens: tuple[float, ...] = ()
    unique_tokens: tuple[float, ...] = ()
    json: bool = False
