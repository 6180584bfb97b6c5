"""`validate(cfg, device_count)`: every rule a run configuration is held to, before anything is traced.

It runs the sections' shared checks (lib/config.py), the named family's own rules (its FamilySpec,
lib/models/spec.py) and data source's (its SourceSpec, lib/data/base.py), then the rules across
sections, which live here and nowhere else: the family against the data (task), muP against the
family and optimizer, the mesh against the model and batch (heads, experts, pipeline stages, rows).
No rule here names a family or a source: each asks what the family or source declares.

Sits above lib.models and lib.data (tests/test_layout.py).
"""

from __future__ import annotations

import math

from lib import data, models
from lib.config import (
    MESH_AXES,
    RunConfig,
    check_data,
    check_mesh,
    check_model,
    check_model_training,
    check_train_and_optimizer,
    eval_chunk_rows,
    eval_rows,
    one_of,
    require,
    resolve_axis_sizes,
    task_kind,
    unit_name,
    units_per_row,
)
from lib.data.base import SourceSpec
from lib.models.spec import FamilySpec


def validate(cfg: RunConfig, device_count: int | None = None) -> RunConfig:
    """Raise ConfigError for the first invalid field; returns `cfg` so calls chain. With
    `device_count`, also check the mesh covers the devices and the batch splits over them."""
    m, d = cfg.model, cfg.data
    one_of(m.family, tuple(models.FAMILIES), "model.family")
    fam = models.spec(m.family)
    check_model(m)
    fam.validate(m)
    check_model_training(m)
    _check_mup(cfg, fam)
    one_of(d.source, tuple(data.SOURCES), "data.source")
    source = data.source_spec(d.source)
    check_data(d)
    source.validate(d)
    _check_task(cfg, fam, source)  # after the data's own fields: a bad data field is named before the pairing
    check_train_and_optimizer(cfg)
    sizes = check_mesh(cfg.mesh)
    _check_pipeline_shape(cfg, fam, sizes[0])
    if device_count is not None:
        _check_devices(cfg, fam, sizes, device_count)
    return cfg


def _check_mup(cfg: RunConfig, fam: FamilySpec) -> None:
    m = cfg.model
    if m.parametrization != "mup":
        return
    require(fam.mup, "model.parametrization", f"mup is implemented for the {_families(lambda s: s.mup)}, not '{m.family}'; use sp")
    require(m.base_width > 0, "model.base_width", "muP needs the width its learning rate was tuned at, e.g. --set model.base_width=32")
    require(m.base_width <= m.d_model, "model.base_width",
            f"base_width {m.base_width} is larger than the model (d_model {m.d_model}); use the smallest width of the ladder")
    require(cfg.optimizer.name in ("adam", "adamw"), "model.parametrization",
            f"mup implements Adam's per-layer rates; optimizer.name '{cfg.optimizer.name}' is not Adam: use adam or adamw")


def _check_task(cfg: RunConfig, fam: FamilySpec, source: SourceSpec) -> None:
    """The family must read what the source gives: image classifiers on image sources, LMs on tokens."""
    m, d = cfg.model, cfg.data
    if source.task == "classify":
        require(fam.task == "classify", "model.family",
                f"data.source '{d.source}' gives images and labels; '{m.family}' is a language model: use one of "
                f"{', '.join(models.families_of_task('classify'))}")
        require(d.image_size > 0 and d.image_channels > 0, "data.image_size", f"images need a positive size and channel count, "
                f"got {d.image_size} x {d.image_channels}")
        require(cfg.train.flops_convention == "chinchilla", "train.flops_convention",
                f"'{cfg.train.flops_convention}' counts each weight once per image, but an image model applies its convolution / "
                "block weights at every position; use chinchilla (the closed-form forward FLOPs per image)")
    else:
        image_sources = [n for n, s in data.SOURCES.items() if s.task == "classify"]
        require(fam.task == source.task, "data.source",
                f"model.family '{m.family}' classifies images, but data.source '{d.source}' gives tokens; "
                f"use --set data.source={image_sources[0]} (or {' or '.join(image_sources[1:])}), or a language-model family")
    fam.check_data(m, d)


def _check_pipeline_shape(cfg: RunConfig, fam: FamilySpec, stage: int) -> None:
    """mesh.stage / train.microbatches against the model (lib/parallel/pipeline.py's assumptions)."""
    m, t = cfg.model, cfg.train
    require(t.microbatches >= 0, "train.microbatches", f"must be >= 0 (0: no pipeline schedule), got {t.microbatches}")
    if stage == 1 and not t.microbatches:
        return
    if stage != 1:  # -1 (the rest): checked again once the device count resolves it
        require(t.microbatches > 0, "train.microbatches",
                f"a pipeline over mesh.stage={stage} stages needs microbatches >= stages (bubble (S-1)/(M+S-1)); "
                f"e.g. --set train.microbatches={4 * max(stage, 1)}")
    require(fam.pipeline, "mesh.stage",
            f"pipeline stages are implemented for the {_families(lambda s: s.pipeline, possessive=True)} scanned layers, not '{m.family}'; "
            "use mesh.stage=1 and train.microbatches=0")
    require(m.scan_layers, "model.scan_layers", "the pipeline splits the scanned layer stack [L, ...]; use --set model.scan_layers=true")
    require(m.dropout == 0.0, "model.dropout", f"the pipeline schedule runs without dropout, got {m.dropout}; use --set model.dropout=0")
    if stage > 1:
        require(m.n_layers % stage == 0, "model.n_layers",
                f"n_layers={m.n_layers} does not split into mesh.stage={stage} equal stages; use a multiple of {stage} layers "
                f"or a stage count dividing {m.n_layers}")
        require(t.microbatches >= stage, "train.microbatches",
                f"{t.microbatches} microbatches cannot fill {stage} stages (every stage must hold one); use >= {stage}, "
                f"e.g. --set train.microbatches={4 * stage}")


def _check_devices(cfg: RunConfig, fam: FamilySpec, sizes: tuple[int, ...], device_count: int) -> None:
    m, d, t, mesh = cfg.model, cfg.data, cfg.train, cfg.mesh
    fixed = math.prod(s for s in sizes if s != -1)
    ok = device_count % fixed == 0 if -1 in sizes else fixed == device_count
    require(ok, "mesh", f"mesh sizes stage,data,fsdp,expert,tensor = {sizes} do not multiply to the {device_count} devices; "
            f"set them so the product is {device_count}, or use -1 for one axis")
    stage, data_, fsdp, expert, tensor = resolve_axis_sizes(mesh, device_count)
    require(not fam.attention or m.n_heads % tensor == 0, "mesh.tensor",
            f"n_heads={m.n_heads} is not divisible by the tensor-parallel size {tensor}; pick a tensor size dividing n_heads")
    fam.check_mesh(m, dict(zip(MESH_AXES, (stage, data_, fsdp, expert, tensor))))
    # The batch is split over the expert axis too (the experts' tokens arrive by all-to-all); every
    # pipeline stage sees the whole batch of its data slice, so `stage` splits no rows.
    dp = data_ * fsdp * expert
    require(d.global_batch % (dp * t.grad_accum) == 0, "data.global_batch",
            f"global batch {d.global_batch} is not divisible by data-parallel size (data*fsdp*expert = {dp}) x grad_accum "
            f"({t.grad_accum}); use a multiple of {dp * t.grad_accum}")
    units = units_per_row(cfg)  # classify: eval_tokens counts images, one a row
    per_row = f"seq_len {d.seq_len}" if task_kind(cfg) == "lm" else "1 image per row"
    rows = eval_rows(t.eval_tokens, units)
    require(rows % dp == 0, "train.eval_tokens",
            f"the eval set of {rows} rows (eval_tokens {t.eval_tokens} / {per_row}, rounded up) is not "
            f"divisible by the data-parallel size (data*fsdp*expert = {dp}); use a multiple of {dp * units} {unit_name(cfg)}")
    if sizes[0] == -1:
        _check_pipeline_shape(cfg, fam, stage)  # the stage count the devices left
    if t.microbatches:
        _check_pipeline_batch(cfg, dp, rows)


def _check_pipeline_batch(cfg: RunConfig, dp: int, eval_set_rows: int) -> None:
    """Each microbatch takes an equal share of every data-parallel replica's rows (no rows move)."""
    t, d = cfg.train, cfg.data
    per_replica = d.global_batch // (dp * t.grad_accum)
    require(per_replica % t.microbatches == 0, "train.microbatches",
            f"{t.microbatches} microbatches do not divide the per-replica batch of {per_replica} rows (global_batch "
            f"{d.global_batch} / (data*fsdp*expert {dp} x grad_accum {t.grad_accum})); pick a divisor of {per_replica}")
    chunk = eval_chunk_rows(eval_set_rows, d.global_batch) // dp  # what each replica scores per eval batch
    require(chunk % t.microbatches == 0, "train.eval_tokens",
            f"eval chunks of {chunk} rows per replica (gcd(eval rows {eval_set_rows}, global_batch {d.global_batch}) / {dp}) "
            f"do not split into {t.microbatches} microbatches; use eval_tokens a multiple of "
            f"{dp * t.microbatches * d.seq_len} tokens")


def _families(declares, possessive: bool = False) -> str:
    """The registered families that declare something, for a message: "transformer family" (possessive
    "transformer's"), or "transformer and moe families" ("transformer and moe families'")."""
    names = [name for name, s in models.SPECS.items() if declares(s)] or ["no"]
    if len(names) == 1:
        return f"{names[0]}'s" if possessive else f"{names[0]} family"
    return f"{' and '.join(names)} families" + ("'" if possessive else "")
