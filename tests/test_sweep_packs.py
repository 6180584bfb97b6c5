"""benchmarks/sweep_packs.py (loaded from its file): a finished root's runs grouped into the packs they
trained in, and each pack's step timed per variant."""

import importlib.util
import json
import pathlib
import sys

import jax
import pytest

from lib.config import DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrackingConfig, TrainConfig
from lib.train.loop import train, train_pack

_spec = importlib.util.spec_from_file_location("sweep_packs", pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "sweep_packs.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

BASE = RunConfig(
    model=ModelConfig(d_model=16, n_layers=1, n_heads=2),
    data=DataConfig(seq_len=16, global_batch=8),
    optimizer=OptimizerConfig(lr=3e-3, warmup_steps=2),
    train=TrainConfig(steps=6, log_every=3, eval_every=6, eval_tokens=128, checkpoint_every=6),
    tracking=TrackingConfig(console=False),
)


def _cfg(name: str, lr: float, steps: int = 6) -> RunConfig:
    return BASE.with_overrides({"name": name, "optimizer.lr": lr, "train.steps": steps})


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Two packs of two runs of one shape and length (trained apart), and a lone run of another length."""
    root = tmp_path_factory.mktemp("sweep")
    one = jax.devices()[:1]
    train_pack([_cfg("a", 1e-3), _cfg("b", 3e-3)], [root / "a", root / "b"], devices=one)
    train_pack([_cfg("c", 1e-2), _cfg("d", 3e-2)], [root / "c", root / "d"], devices=one)
    train(_cfg("e", 3e-3, steps=4), root / "e", devices=one)
    return root


def test_runs_are_grouped_into_the_packs_they_trained_in(root):
    packs, left_out = bench.sweep_packs(root)
    assert [(name, [c.name for c in cfgs]) for name, cfgs in packs] == [("a (+1)", ["a", "b"]), ("c (+1)", ["c", "d"]), ("e", ["e"])]
    assert left_out == []


def test_a_run_whose_config_does_not_parse_is_named_and_left_out(root, tmp_path):
    import shutil

    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    text = (copy / "c" / "config.json").read_text()
    (copy / "c" / "config.json").write_text(text[: len(text) // 2])  # a write cut short
    (copy / "d" / "status.json").write_text("{")
    packs, left_out = bench.sweep_packs(copy)
    assert [(name, [c.name for c in cfgs]) for name, cfgs in packs] == [("a (+1)", ["a", "b"]), ("d", ["d"]), ("e", ["e"])]
    assert len(left_out) == 1 and left_out[0].startswith("c: config.json does not parse")


def test_each_pack_is_timed_per_variant_and_the_sweep_time_is_their_sum(root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "packs.json"
    monkeypatch.setattr(sys, "argv", ["sweep_packs.py", str(root), "--baseline", "HEAD", "--vmap", "--rounds", "1", "--steps", "2", "--out", str(out)])
    bench.main()
    record = json.loads(out.read_text())
    assert [r["pack"] for r in record["rows"]] == ["a (+1)", "c (+1)", "e"]
    assert [(r["runs"], r["steps"]) for r in record["rows"]] == [(2, 6), (2, 6), (1, 4)]
    for variant in ("this", "at HEAD", "vmap"):
        assert all(r["step_s"][variant] > 0 for r in record["rows"])
        implied = sum(r["steps"] * r["step_s"][variant] for r in record["rows"])
        assert record["implied_training_s"][variant] == pytest.approx(implied)
    assert "x this tree's speed" in capsys.readouterr().out


def test_an_empty_root_is_refused_by_name(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["sweep_packs.py", str(tmp_path)])
    with pytest.raises(SystemExit):
        bench.main()
    assert "root: no runs with a config.json" in capsys.readouterr().err
