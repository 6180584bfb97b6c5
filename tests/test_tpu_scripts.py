"""tpu_scripts/*.sh against a fake `gcloud` (tests/fake_bin/gcloud) that records its argv.

No network, no real gcloud: PATH starts with tests/fake_bin, and the environment is
rebuilt from scratch so nothing from the caller's shell leaks in. The commands the
scripts would run on TPU workers (`--command=...`) are also executed here, in a bash with
a temporary $HOME and fake `scaling`, `curl` and `python3.11`, to check what they do:
detach, log, refuse a double start, SIGTERM and relaunch, compute `--worker i/n`.
"""

import json
import os
import shlex
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tpu_scripts"
FAKE_BIN = Path(__file__).resolve().parent / "fake_bin"
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
BASH = shutil.which("bash")

CONFIG = {
    "PROJECT": "proj-1",
    "ZONE": "us-central2-b",
    "TPU_NAME": "sweep-v4",
    "ACCELERATOR_TYPE": "v4-32",
    "RUNTIME_VERSION": "tpu-ubuntu2204-base",
    "BUCKET": "gs://scaling-bkt",
}
REQUIRED = list(CONFIG)
LOC = ["--project=proj-1", "--zone=us-central2-b"]

# Minimal valid arguments for each script.
ARGS = {
    "create.sh": [],
    "setup.sh": [],
    "train.sh": ["quickstart"],
    "sweep.sh": ["quickstart"],
    "logs.sh": [],
    "stop.sh": [],
    "status.sh": [],
    "fit.sh": ["quickstart"],
    "teardown.sh": ["--yes"],
}


def test_every_script_is_covered():
    on_disk = {p.name for p in SCRIPTS.glob("*.sh")} - {"common.sh"}
    assert on_disk == set(ARGS)


# --------------------------------------------------------------------------- harness


class Env:
    """A temporary config + fake-gcloud log, and a runner for the scripts."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.log = tmp / "gcloud.jsonl"
        self.config = tmp / "config.env"
        self.write_config()

    def write_config(self, **overrides):
        values = {**CONFIG, **overrides}
        lines = [f"{k}={shlex.quote(str(v))}" for k, v in values.items() if v is not None]
        self.config.write_text("\n".join(lines) + "\n")

    def run(self, script, *args, env=None, scripts=SCRIPTS, path=None, stdin=None):
        base = {
            "PATH": path or f"{FAKE_BIN}:{SYSTEM_PATH}",
            "HOME": str(self.tmp / "local-home"),
            "TMPDIR": str(self.tmp),
            "LANG": "C.UTF-8",
            "FAKE_GCLOUD_LOG": str(self.log),
            "TPU_CONFIG": str(self.config),
            "TPU_POLL_SECONDS": "0",
        }
        return subprocess.run(
            [BASH, str(scripts / script), *args],
            env={**base, **(env or {})},
            cwd=self.tmp,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def calls(self):
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def reset(self):
        self.log.unlink(missing_ok=True)


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path)


def ok(result):
    assert result.returncode == 0, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def printed(stdout):
    """The commands a --dry-run printed (comment lines are notes, not commands)."""
    return [shlex.split(l) for l in stdout.splitlines() if l.strip() and not l.startswith("#")]


def ssh(node, worker, command):
    return ["compute", "tpus", "tpu-vm", "ssh", node, *LOC, f"--worker={worker}", f"--command={command}"]


def remote_command(call):
    """The --command of a recorded `gcloud ... tpu-vm ssh`, checking the flags around it."""
    assert call[:4] == ["compute", "tpus", "tpu-vm", "ssh"]
    assert call[5:7] == LOC
    assert call[8].startswith("--command=")
    return call[8][len("--command="):]


# ----------------------------------------------------------- a fake TPU worker, locally

FAKE_SCALING = r"""#!/usr/bin/env bash
# Fake `scaling`: records argv (+ TPU_PROCESS_BOUNDS), and with FAKE_SCALING_SLEEP keeps
# running like a training job until SIGTERM, on which it "checkpoints" and exits 0.
python3 -c 'import json, os, sys; print(json.dumps({"argv": sys.argv[1:], "bounds": os.environ.get("TPU_PROCESS_BOUNDS")}))' "$@" >> "$HOME/scaling-calls.jsonl"
echo "fake scaling $*"
if [ -n "${FAKE_SCALING_SLEEP:-}" ]; then
  trap 'echo "SIGTERM: checkpoint saved"; kill "$child" 2>/dev/null; exit 0' TERM
  sleep "$FAKE_SCALING_SLEEP" & child=$!
  wait "$child"
fi
"""

FAKE_CURL = r"""#!/usr/bin/env bash
# Fake metadata server: the TPU worker id and the slice's worker endpoints.
echo "$*" >> "$HOME/curl-calls.txt"
case "${@: -1}" in
  */agent-worker-number) printf '%s' "$FAKE_WORKER_ID" ;;
  */worker-network-endpoints) printf '%s' "$FAKE_ENDPOINTS" ;;
  *) exit 22 ;;
esac
"""

FAKE_PYTHON = r"""#!/usr/bin/env bash
# Fake python3.11: `-m venv DIR` makes DIR/bin/{python,pip}; pip records cwd and argv.
[ "$1 $2" = "-m venv" ] || exit 1
mkdir -p "$3/bin"
printf '#!/bin/sh\nexit 0\n' > "$3/bin/python"
printf '#!/bin/sh\necho "$PWD|$*" >> "$HOME/pip-calls.txt"\n' > "$3/bin/pip"
chmod +x "$3/bin/python" "$3/bin/pip"
"""


def write_exe(path: Path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


class Worker:
    """A TPU worker stand-in: a $HOME with the package 'installed' and fake tools."""

    def __init__(self, root: Path):
        self.home = root / "home"
        self.bin = root / "bin"
        (self.home / "scaling").mkdir(parents=True)
        write_exe(self.home / "scaling-venv/bin/scaling", FAKE_SCALING)
        write_exe(self.bin / "curl", FAKE_CURL)
        write_exe(self.bin / "python3.11", FAKE_PYTHON)
        self.started: list[int] = []

    def sh(self, command, **env):
        full = {"HOME": str(self.home), "PATH": f"{self.bin}:{SYSTEM_PATH}", "LANG": "C.UTF-8", **env}
        res = subprocess.run([BASH, "-c", command], env=full, cwd=self.home,
                             capture_output=True, text=True, timeout=30)
        for pid_file in (self.home / "scaling-logs").glob("*.pid"):
            pid = int(pid_file.read_text())
            if pid not in self.started:
                self.started.append(pid)
        return res

    def scaling_calls(self):
        path = self.home / "scaling-calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def wait_calls(self, n, timeout=10):
        deadline = time.time() + timeout
        while len(self.scaling_calls()) < n and time.time() < deadline:
            time.sleep(0.05)
        return self.scaling_calls()

    def alive(self, pid):
        res = subprocess.run(["ps", "-p", str(pid), "-o", "stat="], capture_output=True, text=True)
        return res.returncode == 0 and not res.stdout.strip().startswith("Z")

    def stop_all(self):
        # Only the processes these tests started, by their pid.
        for pid in self.started:
            if self.alive(pid):
                os.kill(pid, signal.SIGTERM)


@pytest.fixture
def worker(tmp_path):
    w = Worker(tmp_path / "worker")
    yield w
    w.stop_all()


# ---------------------------------------------------------------------- config checks


@pytest.mark.parametrize("script", sorted(ARGS))
@pytest.mark.parametrize("dry", [True, False], ids=["dry-run", "real"])
def test_missing_config_value_fails_clearly(env, script, dry):
    # A different required variable goes missing for each script.
    var = REQUIRED[sorted(ARGS).index(script) % len(REQUIRED)]
    env.write_config(**{var: None})
    res = env.run(script, *ARGS[script], *(["--dry-run"] if dry else []),
                  env={var: "set-in-the-shell-but-not-in-the-file"})
    assert res.returncode == 2
    assert f"error: config value {var} is not set in {env.config}" in res.stderr
    assert "config.env.example" in res.stderr
    assert res.stdout == "" and env.calls() == []


@pytest.mark.parametrize("var", REQUIRED)
def test_each_required_value_is_checked_up_front(env, var):
    env.write_config(**{var: ""})
    res = env.run("create.sh")
    assert res.returncode == 2 and f"config value {var} is not set" in res.stderr
    assert env.calls() == []


def test_missing_config_file_says_how_to_create_it(env):
    env.config.unlink()
    res = env.run("sweep.sh", "quickstart", "--dry-run")
    assert res.returncode == 2
    assert f"config file {env.config} not found" in res.stderr
    assert "copy tpu_scripts/config.env.example to tpu_scripts/config.env" in res.stderr
    assert res.stdout == ""


def test_config_flag_beats_tpu_config_env(env, tmp_path):
    other = tmp_path / "other.env"
    other.write_text(env.config.read_text().replace("proj-1", "proj-2"))
    res = ok(env.run("teardown.sh", "--dry-run", "--config", str(other)))
    assert "--project=proj-2" in res.stdout


@pytest.mark.parametrize(
    "override, message",
    [
        ({"BUCKET": "scaling-bkt"}, "BUCKET='scaling-bkt' in"),
        ({"BUCKET": "gs://scaling-bkt/"}, "must be a bucket URL like gs://my-bucket"),
        ({"SLICES": "0"}, "SLICES='0' in"),
        ({"SPOT": "yes"}, "SPOT='yes' in"),
        ({"TPU_NAME": "My_TPU"}, "TPU_NAME='My_TPU'"),
        ({"REMOTE_ENV": "WANDB_MODE=off;rm"}, "REMOTE_ENV/PER_HOST_ENV"),
    ],
)
def test_invalid_config_values_are_rejected(env, override, message):
    env.write_config(**override)
    res = env.run("create.sh", "--dry-run")
    assert res.returncode == 2 and message in res.stderr and res.stdout == ""


def test_real_run_without_gcloud_on_path_says_so(env, tmp_path):
    # A PATH with just what the scripts need before their first gcloud call.
    bare = tmp_path / "bare-bin"
    bare.mkdir()
    for tool in ("dirname", "basename"):
        (bare / tool).symlink_to(shutil.which(tool))
    res = env.run("create.sh", path=str(bare))
    assert res.returncode == 2 and "gcloud not found on PATH" in res.stderr


@pytest.mark.parametrize("script", sorted(ARGS))
def test_help_and_unknown_option(env, script):
    res = ok(env.run(script, "--help"))
    assert res.stdout.startswith(f"Usage: tpu_scripts/{script}")
    res = env.run(script, *ARGS[script], "--bogus")
    assert res.returncode == 2 and "unknown argument '--bogus'" in res.stderr


# ----------------------------------------------------- dry-run prints what a run does


@pytest.mark.parametrize(
    "script, args",
    [
        ("create.sh", ["--spot", "--wait"]),
        ("train.sh", ["quickstart", "--set", "opt.lr=3e-4 # it's"]),
        ("sweep.sh", ["quickstart", "--per", "host"]),
        ("logs.sh", ["-n", "5"]),
        ("stop.sh", []),
        ("status.sh", ["quickstart"]),
        ("status.sh", []),
        ("fit.sh", ["quickstart"]),
        ("teardown.sh", ["--yes"]),
    ],
)
def test_dry_run_prints_exactly_the_real_commands(env, script, args):
    env.write_config(SLICES=2)
    dry = ok(env.run(script, *args, "--dry-run"))
    assert env.calls() == [], "--dry-run must not call gcloud"
    ok(env.run(script, *args))  # the real run, recording its gcloud calls
    commands = [c for c in printed(dry.stdout) if c[0] == "gcloud"]
    assert commands, dry.stdout
    assert [c[1:] for c in commands] == env.calls()


def test_setup_dry_run_matches_real_run_and_packs_nothing(env, tmp_path):
    repo = hermetic_repo(tmp_path)
    dry = ok(env.run("setup.sh", "--dry-run", scripts=repo / "tpu_scripts"))
    tarball = tmp_path / "scaling-src-sweep-v4.tar.gz"
    assert not tarball.exists()
    assert dry.stdout.startswith(f"# pack {repo} ")
    ok(env.run("setup.sh", scripts=repo / "tpu_scripts"))
    assert tarball.exists()
    assert [c[1:] for c in printed(dry.stdout)] == env.calls()


# ------------------------------------------------------------------------- create.sh


def test_create_requests_a_queued_resource(env):
    ok(env.run("create.sh"))
    assert env.calls() == [[
        "compute", "tpus", "queued-resources", "create", "sweep-v4", "--node-id=sweep-v4",
        *LOC, "--accelerator-type=v4-32", "--runtime-version=tpu-ubuntu2204-base",
    ]]


def test_create_spot_from_flag_or_config(env):
    ok(env.run("create.sh", "--spot"))
    assert env.calls()[-1][-1] == "--spot"
    env.reset()
    env.write_config(SPOT="true")
    ok(env.run("create.sh"))
    assert env.calls()[-1][-1] == "--spot"
    env.reset()
    ok(env.run("create.sh", "--no-spot"))
    assert "--spot" not in env.calls()[-1]


def test_create_one_queued_resource_per_slice(env):
    env.write_config(SLICES=3, SPOT="true")
    ok(env.run("create.sh"))
    calls = env.calls()
    assert [c[4:6] for c in calls] == [[f"sweep-v4-{i}", f"--node-id=sweep-v4-{i}"] for i in range(3)]
    assert all(c[:4] == ["compute", "tpus", "queued-resources", "create"] for c in calls)
    assert all("--node-count" not in " ".join(c) and c[-1] == "--spot" for c in calls)
    env.reset()
    ok(env.run("create.sh", "--slice", "1"))
    assert [c[4] for c in env.calls()] == ["sweep-v4-1"]
    res = env.run("create.sh", "--slice", "3")
    assert res.returncode == 2 and "--slice 3 is out of range" in res.stderr


def test_create_wait_polls_until_active(env):
    res = ok(env.run("create.sh", "--wait",
                     env={"FAKE_GCLOUD_STATES": "WAITING_FOR_RESOURCES,PROVISIONING,ACTIVE"}))
    describe = ["compute", "tpus", "queued-resources", "describe", "sweep-v4", *LOC,
                "--format=value(state.state)"]
    assert env.calls()[1:] == [describe] * 3
    assert "sweep-v4: WAITING_FOR_RESOURCES" in res.stderr and "sweep-v4: ACTIVE" in res.stderr


def test_create_wait_fails_on_failed_state(env):
    res = env.run("create.sh", "--wait", env={"FAKE_GCLOUD_STATES": "PROVISIONING,FAILED"})
    assert res.returncode == 2 and "queued resource sweep-v4 is FAILED" in res.stderr


def test_gcloud_failure_stops_the_script(env):
    env.write_config(SLICES=2)
    res = env.run("create.sh", env={"FAKE_GCLOUD_RC": "1"})
    assert res.returncode == 1 and len(env.calls()) == 1


# -------------------------------------------------------------------------- setup.sh


def hermetic_repo(tmp_path):
    """A tiny git checkout holding a copy of tpu_scripts, so the packed tree is known."""
    repo = tmp_path / "repo"
    shutil.copytree(SCRIPTS, repo / "tpu_scripts")
    (repo / "pyproject.toml").write_text("[project]\nname = 'scaling'\n")
    (repo / "lib").mkdir()
    (repo / "lib/new_untracked.py").write_text("x = 1\n")
    (repo / ".gitignore").write_text(".venv/\n")
    (repo / ".venv/bin").mkdir(parents=True)
    (repo / ".venv/bin/python").write_text("ignored\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "pyproject.toml", ".gitignore", "tpu_scripts"], check=True)
    return repo


def test_setup_copies_the_working_tree_and_installs_on_all_workers(env, tmp_path, worker):
    repo = hermetic_repo(tmp_path)
    ok(env.run("setup.sh", scripts=repo / "tpu_scripts"))
    tarball = tmp_path / "scaling-src-sweep-v4.tar.gz"
    scp, ssh_call = env.calls()
    assert scp == ["compute", "tpus", "tpu-vm", "scp", str(tarball), "sweep-v4:scaling-src.tar.gz",
                   *LOC, "--worker=all"]
    assert ssh_call[4] == "sweep-v4" and ssh_call[7] == "--worker=all"
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    assert {"pyproject.toml", "lib/new_untracked.py", "tpu_scripts/setup.sh"} <= names
    assert not any(n.startswith(".venv") for n in names)

    # Run the worker side: unpack, make the venv, pip install -e ".[tpu]" in ~/scaling.
    shutil.rmtree(worker.home / "scaling-venv")
    shutil.copy(tarball, worker.home / "scaling-src.tar.gz")
    res = worker.sh(remote_command(ssh_call))
    assert res.returncode == 0, res.stderr
    assert "setup done on" in res.stdout
    assert (worker.home / "scaling/tpu_scripts/common.sh").exists()
    assert (worker.home / "scaling/lib/new_untracked.py").exists()
    pip = (worker.home / "pip-calls.txt").read_text().splitlines()
    assert pip[-1] == f"{worker.home / 'scaling'}|install -q -e .[tpu]"


def test_setup_from_git_url_clones_instead_of_copying(env):
    env.write_config(REPO_URL="https://example.com/me/scaling.git", REPO_REF="v1.2", SLICES=2)
    ok(env.run("setup.sh"))
    calls = env.calls()
    assert [c[3:5] for c in calls] == [["ssh", "sweep-v4-0"], ["ssh", "sweep-v4-1"]]
    cmd = remote_command(calls[0])
    assert 'git clone --quiet https://example.com/me/scaling.git "$HOME/scaling.new"' in cmd
    assert 'git -C "$HOME/scaling.new" checkout --quiet v1.2' in cmd
    assert "pip\" install -q -e '.[tpu]'" in cmd


def test_setup_refuses_while_a_job_runs(env, worker):
    ok(env.run("train.sh", "quickstart"))
    launch = remote_command(env.calls()[-1])
    assert worker.sh(launch, FAKE_SCALING_SLEEP="30").returncode == 0
    dry = ok(env.run("setup.sh", "--dry-run"))
    setup_cmd = printed(dry.stdout)[-1][-1][len("--command="):]
    res = worker.sh(setup_cmd)
    assert res.returncode == 1 and "train-quickstart is running" in res.stderr


# -------------------------------------------------------------------------- train.sh


def test_train_launches_one_run_on_all_workers_detached(env, worker):
    weird = """note=it's "quoted" $HOME; rm -rf /"""
    ok(env.run("train.sh", "quickstart", "--set", "model.d_model=256", "--set", weird))
    (call,) = env.calls()
    assert call[:8] == ["compute", "tpus", "tpu-vm", "ssh", "sweep-v4", *LOC, "--worker=all"]
    cmd = remote_command(call)

    t0 = time.time()
    res = worker.sh(cmd, FAKE_SCALING_SLEEP="30")
    assert res.returncode == 0, res.stderr
    assert time.time() - t0 < 10, "the ssh command must return while training goes on"
    assert "train-quickstart started on" in res.stdout
    (call,) = worker.wait_calls(1)
    assert call["argv"] == ["train", "--config", "experiments/quickstart.py",
                            "--workdir", "gs://scaling-bkt/runs/quickstart",
                            "--set", "model.d_model=256", "--set", weird]
    logs = worker.home / "scaling-logs"
    pid = int((logs / "train-quickstart.pid").read_text())
    assert worker.alive(pid)
    assert os.readlink(logs / "latest.log") == "train-quickstart.log"
    assert "launch on" in (logs / "train-quickstart.log").read_text()
    # Its own session: an ssh hangup cannot reach it.
    assert os.getsid(pid) == pid

    # Re-running while it runs is refused; --restart SIGTERMs (checkpoint) and relaunches.
    res = worker.sh(cmd, FAKE_SCALING_SLEEP="30")
    assert res.returncode == 1 and "already running" in res.stderr and "--restart" in res.stderr
    env.reset()
    ok(env.run("train.sh", "quickstart", "--set", "model.d_model=256", "--set", weird, "--restart"))
    res = worker.sh(remote_command(env.calls()[0]), FAKE_SCALING_SLEEP="30")
    assert res.returncode == 0, res.stderr
    assert "stopping train-quickstart" in res.stdout
    assert not worker.alive(pid)
    new_pid = int((logs / "train-quickstart.pid").read_text())
    assert new_pid != pid and worker.alive(new_pid)
    calls = worker.wait_calls(2)
    assert calls[1]["argv"] == calls[0]["argv"], "a relaunch is the same command (it resumes)"

    # stop.sh: SIGTERM, wait; the job saved its checkpoint and exited.
    env.reset()
    ok(env.run("stop.sh"))
    res = worker.sh(remote_command(env.calls()[0]))
    assert res.returncode == 0 and "stopped train-quickstart" in res.stdout
    assert not worker.alive(new_pid)
    assert (logs / "train-quickstart.log").read_text().count("SIGTERM: checkpoint saved") == 2


def test_train_name_path_slice_env_and_extra_args(env, worker):
    env.write_config(SLICES=2, REMOTE_ENV="WANDB_MODE=offline XLA_FLAGS=--xla_dump_to=/tmp/x")
    ok(env.run("train.sh", "experiments/big.py", "--name", "big-1", "--slice", "1", "--", "--steps", "10"))
    (call,) = env.calls()
    assert call[4] == "sweep-v4-1" and call[7] == "--worker=all"
    cmd = remote_command(call)
    assert 'env WANDB_MODE=offline XLA_FLAGS=--xla_dump_to=/tmp/x "$HOME/scaling-venv/bin/scaling" train' in cmd
    assert ok(worker.sh(cmd))
    (run,) = worker.wait_calls(1)
    assert run["argv"] == ["train", "--config", "experiments/big.py", "--workdir",
                           "gs://scaling-bkt/runs/big-1", "--steps", "10"]


def test_train_needs_an_experiment(env):
    res = env.run("train.sh", "--dry-run")
    assert res.returncode == 2 and "missing EXPERIMENT" in res.stderr


# -------------------------------------------------------------------------- sweep.sh


def test_sweep_single_slice_is_one_multi_controller_program(env, worker):
    ok(env.run("sweep.sh", "quickstart", "--set", "sweep.max_runs=4"))
    (call,) = env.calls()
    assert call[4] == "sweep-v4" and call[7] == "--worker=all"
    assert ok(worker.sh(remote_command(call)))
    (run,) = worker.wait_calls(1)
    # Every host runs the same command, with no --worker: the slice trains one run at a time.
    assert run["argv"] == ["sweep", "quickstart", "--root", "gs://scaling-bkt/sweeps/quickstart",
                           "--set", "sweep.max_runs=4"]
    assert os.readlink(worker.home / "scaling-logs/latest.log") == "sweep-quickstart.log"


def test_sweep_several_slices_each_take_a_share(env, tmp_path):
    env.write_config(SLICES=3)
    ok(env.run("sweep.sh", "quickstart", "--name", "iso-v1"))
    calls = env.calls()
    assert [(c[4], c[7]) for c in calls] == [(f"sweep-v4-{i}", "--worker=all") for i in range(3)]
    for i, call in enumerate(calls):
        w = Worker(tmp_path / f"slice{i}")
        assert ok(w.sh(remote_command(call)))
        (run,) = w.wait_calls(1)
        assert run["argv"] == ["sweep", "quickstart", "--root", "gs://scaling-bkt/sweeps/iso-v1",
                               "--worker", f"{i}/3"]
    # Relaunching one slice keeps its share.
    env.reset()
    ok(env.run("sweep.sh", "quickstart", "--name", "iso-v1", "--slice", "2"))
    (call,) = env.calls()
    assert call[4] == "sweep-v4-2" and "--worker 2/3 " in remote_command(call)


def test_sweep_per_host_computes_the_share_from_the_tpu_worker_id(env, worker):
    env.write_config(SLICES=2)
    ok(env.run("sweep.sh", "quickstart", "--per", "host"))
    calls = env.calls()
    assert [(c[4], c[7]) for c in calls] == [("sweep-v4-0", "--worker=all"), ("sweep-v4-1", "--worker=all")]
    # Slice 1, single-host slices: share (1*1 + 0)/(2*1).
    res = worker.sh(remote_command(calls[1]), FAKE_WORKER_ID="0", FAKE_ENDPOINTS="10.0.0.7")
    assert res.returncode == 0, res.stderr
    (run,) = worker.wait_calls(1)
    assert run["argv"][-2:] == ["--worker", "1/2"]
    curl = (worker.home / "curl-calls.txt").read_text()
    assert "Metadata-Flavor: Google" in curl
    assert "computeMetadata/v1/instance/attributes/agent-worker-number" in curl


def test_sweep_per_host_on_multi_host_slice_needs_per_host_env(env, worker):
    env.write_config(SLICES=2)
    ok(env.run("sweep.sh", "quickstart", "--per", "host"))
    four_hosts = dict(FAKE_WORKER_ID="3", FAKE_ENDPOINTS="a,b,c,d")
    res = worker.sh(remote_command(env.calls()[1]), **four_hosts)
    assert res.returncode == 1 and "needs PER_HOST_ENV" in res.stderr
    assert worker.scaling_calls() == []

    env.reset()
    env.write_config(SLICES=2, PER_HOST_ENV="TPU_PROCESS_BOUNDS=1,1,1")
    ok(env.run("sweep.sh", "quickstart", "--per", "host"))
    res = worker.sh(remote_command(env.calls()[1]), **four_hosts)
    assert res.returncode == 0, res.stderr
    (run,) = worker.wait_calls(1)
    assert run["argv"][-2:] == ["--worker", "7/8"]  # slice 1, worker 3, 4 hosts per slice
    assert run["bounds"] == "1,1,1"


def test_sweep_rejects_bad_per(env):
    res = env.run("sweep.sh", "quickstart", "--per", "chip", "--dry-run")
    assert res.returncode == 2 and "--per must be 'slice' or 'host'" in res.stderr


# -------------------------------------------------------------- logs, status, fit, teardown


def test_logs_tails_the_job_log_on_chosen_workers(env, worker):
    ok(env.run("logs.sh", "sweep-quickstart", "--worker", "2", "-n", "20"))
    (call,) = env.calls()
    assert call[4] == "sweep-v4" and call[7] == "--worker=2"
    cmd = remote_command(call)
    assert 'tail -n 20 "$f"' in cmd and "-F" not in cmd
    logs = worker.home / "scaling-logs"
    logs.mkdir()
    (logs / "sweep-quickstart.log").write_text("".join(f"step {i}\n" for i in range(30)))
    res = worker.sh(cmd)
    lines = res.stdout.splitlines()
    assert len(lines) == 20 and lines[-1].endswith("] step 29") and lines[0].startswith("[")
    res = worker.sh(cmd.replace("sweep-quickstart", "train-nope"))
    assert res.returncode == 1 and "no log" in res.stderr and "sweep-quickstart.log" in res.stderr


def test_logs_follow_default_and_slices(env):
    ok(env.run("logs.sh", "-f"))
    (call,) = env.calls()
    assert call[7] == "--worker=all"
    assert 'tail -n 50 -F "$f"' in remote_command(call) and "latest.log" in remote_command(call)
    env.write_config(SLICES=2)
    res = env.run("logs.sh", "-f", "--dry-run")
    assert res.returncode == 2 and "add --slice S" in res.stderr
    ok(env.run("logs.sh", "-f", "--slice", "1", "--dry-run"))
    res = env.run("logs.sh", "--worker", "w1", "--dry-run")
    assert res.returncode == 2 and "--worker must be" in res.stderr


def test_status(env):
    ok(env.run("status.sh"))
    ok(env.run("status.sh", "quickstart"))
    ok(env.run("status.sh", "big-1", "--train"))
    assert env.calls() == [
        ["compute", "tpus", "queued-resources", "list", *LOC, "--filter=name~/sweep-v4"],
        ssh("sweep-v4", 0, 'cd "$HOME/scaling" && "$HOME/scaling-venv/bin/scaling" status gs://scaling-bkt/sweeps/quickstart'),
        ssh("sweep-v4", 0, 'cd "$HOME/scaling" && "$HOME/scaling-venv/bin/scaling" status gs://scaling-bkt/runs/big-1'),
    ]


def test_fit_runs_on_worker_0_and_copies_the_results_home(env, worker):
    ok(env.run("fit.sh", "quickstart", "--out", "results"))
    fit, scp = env.calls()
    assert fit[4] == "sweep-v4" and fit[7] == "--worker=0"
    assert scp == ["compute", "tpus", "tpu-vm", "scp", "--recurse", "sweep-v4:scaling-fits/quickstart",
                   "results/", *LOC, "--worker=0"]
    assert (env.tmp / "results").is_dir()
    assert ok(worker.sh(remote_command(fit)))
    (run,) = worker.scaling_calls()
    assert run["argv"] == ["fit", "gs://scaling-bkt/sweeps/quickstart", "--out",
                           str(worker.home / "scaling-fits/quickstart")]


def test_teardown_deletes_every_slice(env):
    env.write_config(SLICES=2)
    ok(env.run("teardown.sh", "--yes", "--async"))
    assert env.calls() == [
        ["compute", "tpus", "queued-resources", "delete", f"sweep-v4-{i}", *LOC, "--force", "--quiet", "--async"]
        for i in range(2)
    ]


def test_teardown_without_yes_and_no_terminal_refuses(env):
    res = env.run("teardown.sh")
    assert res.returncode == 2 and "pass --yes" in res.stderr and env.calls() == []
