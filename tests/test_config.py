"""Config: validation messages, overrides, JSON round trip, content hash, CLI errors."""

import dataclasses
import json
import subprocess
import sys
import os

import pytest

from lib.config import HASHED_ALWAYS_V1, ConfigError, DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrainConfig, parse_set_args
from lib.config_rules import validate

BAD = [
    ({"model.d_model": 30, "model.n_heads": 4}, "model.d_model", "not divisible by n_heads"),
    ({"mesh.data": 3}, "mesh", "do not multiply to the 8 devices"),
    ({"mesh.preset": "dp", "data.global_batch": 12}, "data.global_batch", "not divisible by data-parallel size"),
    ({"optimizer.lr": 0.0}, "optimizer.lr", "must be positive"),
    ({"optimizer.lr": -1e-3}, "optimizer.lr", "must be positive"),
    ({"train.steps": 0}, "train.steps", "must be positive"),
    ({"data.seq_len": -5}, "data.seq_len", "must be positive"),
    ({"optimizer.name": "adamax"}, "optimizer.name", "choose one of sgd, momentum"),
    ({"optimizer.schedule": "triangle"}, "optimizer.schedule", "choose one of constant, cosine"),
    ({"model.family": "rnn"}, "model.family", "choose one of transformer"),
    ({"mesh.preset": "zero3"}, "mesh.preset", "choose one of dp, fsdp, fsdp_tp"),
    ({"mesh.preset": "fsdp_tp", "model.n_heads": 1, "model.d_model": 32}, "mesh.tensor", "not divisible by the tensor-parallel size"),
    ({"train.eval_tokens": 0}, "train.eval_tokens", "must be positive"),
    ({"train.eval_tokens": 4 * 64}, "train.eval_tokens", "4 rows (eval_tokens 256 / seq_len 64, rounded up) is not divisible by the data-parallel size (data*fsdp*expert = 8); use a multiple of 512 tokens"),
    ({"data.synth_zipf": 1.0}, "data.synth_zipf", "must be in (1, 10]"),
    ({"data.synth_vocab": 4}, "data.synth_vocab", "needs at least 5 tokens"),
    ({"data.synth_filler_len": 0}, "data.synth_filler_len", "needs at least 1 filler token"),
    ({"data.synth_id_digits": -1}, "data.synth_id_digits", "use 1..12, or 0 for 12"),
]


@pytest.mark.parametrize("overrides,field,fix", BAD)
def test_each_bad_config_names_the_field_and_the_fix(overrides, field, fix):
    with pytest.raises(ConfigError) as e:
        validate(RunConfig().with_overrides(overrides), device_count=8)
    assert str(e.value).startswith(f"{field}:") and fix in str(e.value) and "\n" not in str(e.value)


def test_the_default_config_is_valid_on_one_and_eight_devices():
    validate(RunConfig(), 1)
    validate(RunConfig(), 8)


def test_unknown_set_key_is_an_error_listing_the_known_fields():
    with pytest.raises(ConfigError, match=r"unknown config key 'model.d_modle'.*d_model"):
        RunConfig().with_overrides({"model.d_modle": 64})
    with pytest.raises(ConfigError, match="unknown config key 'modle.d_model'"):
        RunConfig().with_overrides({"modle.d_model": 64})


def test_set_values_parse_as_json_where_they_parse():
    assert parse_set_args(["model.d_model=256", "tracking.wandb=true", "name=abc", "optimizer.lr=1e-3"]) == {
        "model.d_model": 256, "tracking.wandb": True, "name": "abc", "optimizer.lr": 1e-3,
    }
    cfg = RunConfig().with_overrides(parse_set_args(["model.d_model=256", "optimizer.lr=1e-3", "tracking.wandb=true"]))
    assert (cfg.model.d_model, cfg.optimizer.lr, cfg.tracking.wandb) == (256, 1e-3, True)
    with pytest.raises(ConfigError, match="'model.d_model' must be an integer"):
        RunConfig().with_overrides({"model.d_model": "big"})


def test_json_round_trip_and_hash_stability():
    cfg = RunConfig().with_overrides({"model.d_model": 96, "model.n_heads": 6, "optimizer.lr": 1e-3})
    again = RunConfig.from_json(cfg.to_json())
    assert again == cfg and again.content_hash() == cfg.content_hash()
    assert cfg.content_hash() != RunConfig().content_hash()
    # Layout, tracking and naming do not change what a run computes, so not its id either.
    same = cfg.with_overrides({"mesh.preset": "fsdp", "tracking.wandb": True, "name": "other", "train.log_every": 3})
    assert same.content_hash() == cfg.content_hash()
    assert len(cfg.content_hash()) == 6 and cfg.content_hash() == RunConfig.from_dict(json.loads(cfg.to_json())).content_hash()
    # How often a run evaluates is bookkeeping; how many tokens its eval_loss averages over is not.
    assert cfg.with_overrides({"train.eval_every": 7}).content_hash() == cfg.content_hash()
    assert cfg.with_overrides({"train.eval_tokens": 4096}).content_hash() != cfg.content_hash()


def test_cli_reports_a_bad_config_before_compiling(tmp_path):
    """Exit code 2 with the message, no traceback, before anything is compiled (JAX_LOG_COMPILES
    makes jax log every compilation to stderr)."""
    env = {**os.environ, "JAX_LOG_COMPILES": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.cli", "train", "--config", "tiny", "--workdir", str(tmp_path / "r"),
         "--set", "model.d_model=30"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 2, proc.stderr
    assert "config error: model.d_model:" in proc.stderr and "Traceback" not in proc.stderr
    assert "Compiling" not in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "r" / "checkpoints").exists()
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.cli", "train", "--config", "tiny", "--workdir", str(tmp_path / "r"),
         "--set", "optimizer.nme=sgd"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 2 and "unknown config key 'optimizer.nme'" in proc.stderr
    assert "Compiling" not in proc.stderr


# The fields that joined the config after run ids were first recorded, hashed only off their default
# (the list lib/config.py kept by hand before the rule covered every field).
ADDED_AFTER_V1 = {
    "model": {"parametrization", "base_width", "rnn_hidden", "rnn_proj", "context", "kernel_size", "dilation_cycle", "n_experts",
              "top_k", "capacity_factor", "moe_aux_weight", "moe_z_weight", "image_size", "image_channels", "widths", "depths",
              "norm", "norm_groups", "patch_size", "pool"},
    "data": {"image_size", "image_channels", "num_classes", "image_field", "label_field", "augment", "crop_pad", "synth_img_modes",
             "synth_img_zipf", "synth_img_band", "synth_img_noise", "synth_img_label_noise"},
    "optimizer": {"wsd_decay_shape", "lr_factor"},
    "train": {"keep_steps", "trunk", "branch_start"},
}
SECTIONS = {"model": ModelConfig, "data": DataConfig, "optimizer": OptimizerConfig, "train": TrainConfig}


def test_the_fields_hashed_always_are_real_fields_none_of_them_added_later():
    for section, names in HASHED_ALWAYS_V1.items():
        known = {f.name for f in dataclasses.fields(SECTIONS[section] if section else RunConfig)}
        assert set(names) <= known, set(names) - known
        assert not set(names) & ADDED_AFTER_V1.get(section, set())
    # each field added later leaves the id alone at its default and changes it off it
    base = RunConfig()
    for section, names in ADDED_AFTER_V1.items():
        for name in names:
            default = getattr(getattr(base, section), name)
            other = (3, 4) if isinstance(default, tuple) else "batch" if name == "norm" else "cls" if name == "pool" else \
                "cosine" if name == "wsd_decay_shape" else "x" if isinstance(default, str) else default + 1
            moved = base.with_overrides({f"{section}.{name}": other})
            assert moved.content_hash() != base.content_hash(), f"{section}.{name}"


def test_a_new_field_with_a_default_keeps_every_run_id_and_setting_it_changes_it():
    """Add a field to each section (and the top level) as a later commit would: no id moves until a run sets it."""
    configs = [RunConfig(), RunConfig().with_overrides({"model.family": "moe", "model.n_experts": 4, "optimizer.lr": 1e-3,
                                                        "data.source": "hf", "data.dataset": "text", "train.steps": 77})]
    for section, cls in SECTIONS.items():
        plus = dataclasses.make_dataclass(f"{cls.__name__}Plus", [("new_knob", float, dataclasses.field(default=0.5))], bases=(cls,), frozen=True)
        for cfg in configs:
            grown = dataclasses.replace(cfg, **{section: plus(**dataclasses.asdict(getattr(cfg, section)))})
            assert grown.content_hash() == cfg.content_hash(), section
            turned = dataclasses.replace(grown, **{section: dataclasses.replace(getattr(grown, section), new_knob=0.25)})
            assert turned.content_hash() != cfg.content_hash(), section
    top = dataclasses.make_dataclass("RunConfigPlus", [("new_top", int, dataclasses.field(default=0))], bases=(RunConfig,), frozen=True)
    for cfg in configs:
        grown = top(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(RunConfig)})
        assert grown.content_hash() == cfg.content_hash()
        assert dataclasses.replace(grown, new_top=1).content_hash() != cfg.content_hash()


def test_the_shape_tag_names_heads_only_for_the_families_that_declare_attention():
    from lib.models import shape_tag

    model = RunConfig().with_overrides({"model.d_model": 48, "model.n_layers": 3, "model.n_heads": 6}).model
    tags = {f: shape_tag(dataclasses.replace(model, family=f)) for f in ("transformer", "moe", "vit", "lstm", "cnn", "resnet")}
    assert tags == {"transformer": "transformer d_model 48, n_layers 3, n_heads 6", "moe": "moe d_model 48, n_layers 3, n_heads 6",
                    "vit": "vit d_model 48, n_layers 3, n_heads 6", "lstm": "lstm d_model 48, n_layers 3",
                    "cnn": "cnn d_model 48, n_layers 3", "resnet": "resnet d_model 48, n_layers 3"}
