"""Trunks and cooldown branches (lib/sweeps/cooldowns.py): a branch is bit for bit the fresh wsd
run of its length; kills and relaunches change nothing; the compute accounting; bad input."""

import os

import jax
import numpy as np
import pytest

from lib import flops as flops_lib
from lib.config import ConfigError, DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrackingConfig, TrainConfig
from lib.store.runstore import RunDir
from lib.store.tracking import Tracker
from lib.sweeps.cooldowns import Cooldowns, accounting
from lib.sweeps.executors import DONE, FAILED, SKIPPED, run_local
from lib.sweeps.plans import Schedule
from lib.train.loop import train
from lib.train.optim import learning_rate, wsd_decay_start

B, T = 8, 16  # 128 tokens per step
SIZES = [dict(d_model=16, n_layers=1, n_heads=2)]
BASE = RunConfig(
    model=ModelConfig(),
    data=DataConfig(seq_len=T, global_batch=B),
    optimizer=OptimizerConfig(lr=1e-2, final_lr_frac=0.1),
    train=TrainConfig(eval_tokens=4 * T * B, keep_checkpoints=1),
    tracking=TrackingConfig(console=False),
)
# branches of 20 and 32 steps, warmup 2, decay over a quarter: they start at steps 15 and 24
SWEEP = Cooldowns(SIZES, tokens=[20 * B * T, 32 * B * T], decay_frac=0.25, decay_shape="cosine", base=BASE, name="cd",
                  schedule=Schedule(warmup_frac=0.1, log_points=32, eval_points=1, checkpoints=8))


def one_device():
    return jax.devices()[:1]


def _rows(run: RunDir):
    return [(r["step"], r["train_loss"], r["lr"]) for r in run.metrics()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    plan = SWEEP.plan()
    report = run_local(plan, str(root), devices=one_device())
    assert [o.result for o in report.outcomes] == [DONE] * 3
    return plan, root


def test_the_plan_is_a_trunk_then_its_branches():
    plan = SWEEP.plan()
    trunk, b20, b32 = plan.runs
    assert trunk.cfg.optimizer.schedule == "constant" and trunk.cfg.train.steps == 24 and trunk.cfg.train.keep_steps == (15, 24)
    assert [b.cfg.train.branch_start for b in (b20, b32)] == [15, 24] == [wsd_decay_start(s, 2, 0.25) for s in (20, 32)]
    assert all(b.cfg.train.trunk == trunk.run_id and b.cfg.optimizer.schedule == "wsd" for b in (b20, b32))
    assert {r.cfg.optimizer.warmup_steps for r in plan.runs} == {2}
    assert [b.tokens for b in (b20, b32)] == [20 * B * T, 32 * B * T]
    # --worker i/n: a trunk and its branches stay together
    two = Cooldowns([*SIZES, dict(d_model=16, n_layers=2, n_heads=2)], tokens=SWEEP.tokens, base=BASE).plan()
    for i in range(2):
        part = two.partition(i, 2).runs
        assert len(part) == 3 and {r.cfg.train.trunk for r in part[1:]} == {part[0].run_id}


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
def test_the_wsd_rate_is_the_constant_rate_until_its_decay_starts(shape):
    cfg = OptimizerConfig(lr=1e-2, schedule="wsd", wsd_decay_shape=shape, final_lr_frac=0.1)
    const = OptimizerConfig(lr=1e-2, schedule="constant")
    for total in (20, 32, 97, 1000):
        start = wsd_decay_start(total, 3, 0.2)
        lrs = np.array([learning_rate(cfg, s, total, 3) for s in range(total)])
        flat = np.array([learning_rate(const, s, total, 3) for s in range(start + 1)])
        assert np.array_equal(lrs[: start + 1], flat)  # bit for bit
        assert lrs[start + 1] < lrs[start] and np.isclose(lrs[-1], 1e-3)


def test_a_branch_equals_a_fresh_wsd_run_bit_for_bit(reference, tmp_path):
    plan, root = reference
    trunk, _, b32 = plan.runs
    fresh_cfg = b32.cfg.with_overrides({"train.trunk": "", "train.branch_start": 0, "name": "fresh"})
    fresh = train(fresh_cfg, tmp_path / "fresh", devices=one_device())
    branch = RunDir(root / b32.run_id)
    s = branch.summary()
    assert s["branch_restored"] is True and s["trunk"] == trunk.run_id and s["branch_start"] == 24
    assert s["eval_loss"] == fresh["eval_loss"] and s["train_loss"] == fresh["train_loss"]
    assert _rows(branch) == _rows(RunDir(tmp_path / "fresh"))  # the trunk's rows up to 24, then its own
    assert s["flops"] == fresh["flops"] and s["tokens"] == 32 * B * T  # the point's whole compute
    assert RunDir(root / trunk.run_id).summary()["role"] == "trunk"


class _Kill(KeyboardInterrupt):
    pass


def _killing(monkeypatch, run_prefix: str, at_step: int):
    log = Tracker.log

    def killing_log(self, row):
        if self.run_id.startswith(run_prefix) and row["step"] == at_step:
            raise _Kill()
        log(self, row)

    monkeypatch.setattr(Tracker, "log", killing_log)


def test_killed_trunk_and_killed_branch_then_relaunch_equal_the_uninterrupted_sweep(reference, tmp_path, monkeypatch):
    plan, ref_root = reference
    root = str(tmp_path / "cut")
    with monkeypatch.context() as m:  # the trunk dies at step 20 (after its branch point 15 and checkpoint 18)
        _killing(m, "cd-trunk", 20)
        with pytest.raises(KeyboardInterrupt):
            run_local(plan, root, devices=one_device())
    assert RunDir(os.path.join(root, plan.runs[0].run_id)).state() == "interrupted"
    with monkeypatch.context() as m:  # relaunch: the trunk resumes; the longer branch dies at step 30 (own checkpoint 28)
        _killing(m, "cd-D4096", 30)
        with pytest.raises(KeyboardInterrupt):
            run_local(plan, root, devices=one_device())
    first = RunDir(os.path.join(root, plan.runs[1].run_id))
    assert first.state() == "done"
    done_at = first.status()["updated_at"]
    report = run_local(plan, root, devices=one_device())
    assert [o.result for o in report.outcomes] == [SKIPPED, SKIPPED, DONE]
    assert first.status()["updated_at"] == done_at  # the finished branch was not retrained
    for r in plan.runs:
        cut, ref = RunDir(os.path.join(root, r.run_id)), RunDir(ref_root / r.run_id)
        assert _rows(cut) == _rows(ref), r.run_id
        assert cut.summary()["eval_loss"] == ref.summary()["eval_loss"]


def test_a_branch_whose_trunk_checkpoint_is_missing_recreates_the_prefix(reference, tmp_path):
    import shutil

    plan, ref_root = reference
    root = tmp_path / "gone"
    shutil.copytree(ref_root / plan.runs[0].run_id, root / plan.runs[0].run_id)
    shutil.rmtree(root / plan.runs[0].run_id / "checkpoints" / "15")
    report = run_local(plan, str(root), devices=one_device())
    assert [o.result for o in report.outcomes] == [SKIPPED, DONE, DONE]
    b20 = RunDir(root / plan.runs[1].run_id)
    assert b20.summary()["branch_restored"] is False
    assert b20.summary()["eval_loss"] == RunDir(ref_root / plan.runs[1].run_id).summary()["eval_loss"]


def test_a_diverged_trunk_fails_its_branches_with_its_reason(tmp_path):
    plan = Cooldowns(SIZES, tokens=[20 * B * T, 32 * B * T], decay_frac=0.25, base=BASE.with_overrides({"optimizer.lr": 1e6,
                     "optimizer.clip_norm": 0.0}), name="boom").plan()
    report = run_local(plan, str(tmp_path), devices=one_device())
    assert [o.result for o in report.outcomes] == [FAILED] * 3
    assert all(o.reason.startswith(f"trunk {plan.runs[0].run_id} diverged") for o in report.outcomes[1:])
    assert RunDir(tmp_path / plan.runs[1].run_id).status()["diverged"]


def test_spent_vs_from_scratch_compute_by_hand():
    plan = SWEEP.plan()
    fpt = flops_lib.flops_per_token(plan.runs[0].cfg.model, T, "chinchilla")
    # trunk 24 steps once, branch tails 20-15 and 32-24 steps; from scratch 20 + 32 steps
    acc = accounting(plan)
    assert acc["spent"] == pytest.approx((24 + 5 + 8) * B * T * fpt, rel=1e-12)
    assert acc["from_scratch"] == pytest.approx((20 + 32) * B * T * fpt, rel=1e-12)
    assert acc["floor_ratio"] == pytest.approx(32 / (20 + 32), rel=1e-12)  # no plan spends less than the longest point
    assert acc["ratio"] == pytest.approx(37 / 52)
    assert any("37" in n or "spend" in n for n in plan.notes)


@pytest.mark.parametrize("kwargs, field", [
    (dict(tokens=[32 * B * T, 20 * B * T]), "Cooldowns.tokens"),
    (dict(tokens=[20 * B * T, 20 * B * T]), "Cooldowns.tokens"),
    (dict(tokens_per_param=[10, 5]), "Cooldowns.tokens_per_param"),
    (dict(tokens=[20 * B * T], decay_frac=0.0), "Cooldowns.decay_frac"),
    (dict(tokens=[20 * B * T], decay_frac=1.0), "Cooldowns.decay_frac"),
    (dict(tokens=[20 * B * T], decay_shape="exp"), "Cooldowns.decay_shape"),
    (dict(tokens=[20 * B * T], tokens_per_param=[3]), "Cooldowns"),
])
def test_bad_input_is_a_named_config_error(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        Cooldowns(SIZES, base=BASE, **kwargs).plan()


def test_a_branch_shorter_than_its_warmup_is_a_config_error():
    sweep = Cooldowns(SIZES, tokens=[4 * B * T, 40 * B * T], decay_frac=0.5, base=BASE, schedule=Schedule(warmup_frac=0.5))
    with pytest.raises(ConfigError, match="shorter than warmup"):
        sweep.plan()


def test_the_fitter_reads_branches_as_points_and_leaves_trunks_out(reference):
    from analysis.data import load_run_store

    plan, root = reference
    ds = load_run_store(root)
    assert sorted(ds.points["run"]) == sorted(r.run_id for r in plan.runs[1:])
    assert ds.source["branches"] == {"n": 2, "runs": sorted(r.run_id for r in plan.runs[1:]), "trunks": [plan.runs[0].run_id]}
    assert any("WSD trunk" in n for n in ds.notes)
    assert list(ds.points.sort_values("D")["D"]) == [20 * B * T, 32 * B * T]
