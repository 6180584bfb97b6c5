"""Where a run's floats came from (lib/train/environment.py): parsed from the host, recorded in each
run's summary, grouped by the fit (a warning where a root mixes environments) and listed by
benchmarks/compare_roots.py, because the same config rounds differently on another CPU or core count."""

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from analysis.data import load_run_store
from analysis.errors import FitWarning
from lib.train import environment as env_lib
from test_analysis_data import write_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import compare_roots  # noqa: E402

SAPPHIRE = "model name\t: Intel(R) Xeon(R) Processor\ncpu family\t: 6\nmodel\t\t: 143\nstepping\t: 8\nflags\t\t: fpu sse4_2 avx avx2 avx512f amx_tile\n"
EPYC_ROME = "model name\t: AMD EPYC 7B12\ncpu family\t: 23\nmodel\t\t: 49\nstepping\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma\n"


def test_the_cpu_is_named_by_model_and_its_highest_isa():
    assert env_lib.cpu_model(SAPPHIRE) == "Intel(R) Xeon(R) Processor [6/143/8]"  # a VM's generic name gets its ids
    assert env_lib.cpu_isa(SAPPHIRE) == "AMX" and env_lib.cpu_isa(EPYC_ROME) == "AVX2"
    assert env_lib.cpu_model(EPYC_ROME) == "AMD EPYC 7B12 [23/49/0]"
    # the virtual device count splits the host into a mesh; it is recorded as n_devices, not here
    assert env_lib.numerics_flags("--xla_force_host_platform_device_count=8 --xla_cpu_max_isa=AVX2") == "--xla_cpu_max_isa=AVX2"


def test_a_runs_summary_records_the_environment_it_trained_in(reference_train_run):
    summary = json.loads((Path(reference_train_run) / "summary.json").read_text())
    env = summary["environment"]
    assert env["platform"] == "cpu" and env["jax"] == jax.__version__
    assert env["isa"] == env_lib.cpu_isa(env_lib._cpuinfo()) and env["threads"] == env_lib.cpu_threads()
    assert "device_count" not in env["xla_flags"]
    assert env["key"] == env_lib.environment_key(env) and env["cpu"] in env["key"] and f"{env['threads']} thread" in env["key"]


def _root(tmp_path, name, keys):
    root = tmp_path / name
    for i, key in enumerate(keys):
        write_run(root, f"r{i}", "done", N=1e6 * 2**i, D=1e8 / 2**i, C=6e14, eval_loss=3.0 + 0.1 * i, budget=6e14)
        summary_path = root / f"r{i}" / "summary.json"
        summary = json.loads(summary_path.read_text())
        if key is not None:
            summary["environment"] = {"key": key, "cpu": key.split(" (")[0]}
        summary_path.write_text(json.dumps(summary))
    return root


def test_the_fit_lists_its_environments_and_warns_when_a_root_mixes_them(tmp_path):
    one = load_run_store(_root(tmp_path, "one", ["cpu A (AVX2, 2 threads)"] * 3 + [None]))
    assert one.source["environments"] == {"cpu A (AVX2, 2 threads)": 3, "not recorded (summaries before lib/train/environment.py)": 1}
    assert not any("environments" in n for n in one.notes)  # one recorded environment: nothing to warn about
    with pytest.warns(FitWarning, match=r"the runs trained in 2 environments \(cpu A \(AVX2, 2 threads\): 2 run\(s\); cpu B \(AMX, 4 threads\): 1 run\(s\)\)"):
        mixed = load_run_store(_root(tmp_path, "mixed", ["cpu A (AVX2, 2 threads)", "cpu B (AMX, 4 threads)", "cpu A (AVX2, 2 threads)"]))
    assert mixed.source["environments"] == {"cpu A (AVX2, 2 threads)": 2, "cpu B (AMX, 4 threads)": 1}
    np.testing.assert_allclose(mixed.points.loss, [3.0, 3.1, 3.2])  # listed and warned about, never dropped


def test_compare_roots_names_the_environments_and_compares_only_the_numbers(tmp_path):
    a = _root(tmp_path, "a", ["cpu A (AVX2, 2 threads)"] * 2)
    b = _root(tmp_path, "b", ["cpu B (AMX, 4 threads)"] * 2)
    same = compare_roots.compare(a, b)
    assert same["identical"] and same["environments_a"] == {"cpu A (AVX2, 2 threads)": 2} and same["environments_b"] == {"cpu B (AMX, 4 threads)": 2}
    summary = json.loads((b / "r1" / "summary.json").read_text())
    summary["eval_loss"] = np.nextafter(summary["eval_loss"], 4.0)  # one ulp: a rounding difference is still a difference
    (b / "r1" / "summary.json").write_text(json.dumps(summary))
    moved = compare_roots.compare(a, b)
    assert not moved["identical"] and [d["key"] for d in moved["differences"]] == ["eval_loss"]


def test_each_attempts_environment_stays_on_record_through_the_run(tmp_path):
    from lib.store.runstore import RunDir

    run = RunDir(tmp_path / "r")
    run.set_state("running", environment="machine A")
    run.set_state("interrupted", reason="preempted")
    run.set_state("running", environment="machine A")  # resumed where it started: one environment
    assert run.status()["environments"] == ["machine A"]
    run.set_state("running", environment="machine B")
    run.set_state("done")
    assert run.status()["environments"] == ["machine A", "machine B"] and run.status()["state"] == "done"


def test_a_run_resumed_in_another_environment_says_so_in_its_summary(tmp_path, tiny_config):
    from lib.store.runstore import RunDir
    from lib.train.loop import train

    workdir = tmp_path / "resumed"
    RunDir(workdir).set_state("running", environment="another machine (AVX2, 4 threads), jax 0.9.0/jaxlib 0.9.0")
    RunDir(workdir).set_state("interrupted", reason="preempted")
    summary = train(tiny_config, workdir)
    here = env_lib.numerics_environment(jax.devices()[0])["key"]
    assert summary["environment"]["attempts"] == ["another machine (AVX2, 4 threads), jax 0.9.0/jaxlib 0.9.0", here]
    assert summary["environment"]["key"] == f"resumed across: another machine (AVX2, 4 threads), jax 0.9.0/jaxlib 0.9.0 -> {here}"
    fresh = train(tiny_config, tmp_path / "fresh")
    assert fresh["environment"]["key"] == here and "attempts" not in fresh["environment"]


def test_a_fit_from_one_machine_names_it_in_fit_json_and_the_report(mini_run):
    _, root, proc = mini_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((root / "fit" / "fit.json").read_text())
    keys = {json.loads(p.read_text())["environment"]["key"] for p in root.glob("*/summary.json")}
    assert len(keys) == 1 and record["source"]["environments"] == {keys.pop(): record["source"]["runs"]}
    (key, n), = record["source"]["environments"].items()
    assert f"- Trained in: {key} ({n} run(s))." in (root / "fit" / "report.md").read_text()
    assert not any("environments (" in w for w in record["warnings"])


def test_compare_roots_reports_a_truncated_file_instead_of_raising(tmp_path):
    a = _root(tmp_path, "a", ["cpu A (AVX2, 2 threads)"] * 2)
    b = _root(tmp_path, "b", ["cpu A (AVX2, 2 threads)"] * 2)
    text = (b / "r0" / "summary.json").read_text()
    (b / "r0" / "summary.json").write_text(text[: len(text) // 2])  # a write cut short
    result = compare_roots.compare(a, b)
    assert not result["identical"]
    assert any(d["file"] == "r0/summary.json" and d["key"] == "unreadable" for d in result["differences"])
    assert result["environments_b"] == {"cpu A (AVX2, 2 threads)": 1, compare_roots.UNRECORDED: 1}
