"""Run configuration: frozen dataclasses, the sections' shared checks, overrides, JSON, content hash.

A `RunConfig` fully describes one training run. `lib.config_rules.validate(cfg)` runs before anything
is traced and raises `ConfigError` naming the field and the fix: this module checks the fields the
sections share; each family (lib/models/spec.py) and data source (lib/data/base.py) checks its own.
`with_overrides({"model.d_model": 256})` returns a new config; unknown keys are errors, never
silently ignored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any, Mapping

MLP_KINDS = ("gelu", "swiglu")
DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_IMPLS = ("xla", "cudnn")
PARAMETRIZATIONS = ("sp", "mup")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "linear", "step", "exponential", "wsd")
WSD_DECAY_SHAPES = ("linear", "cosine", "1-sqrt")  # the wsd schedule's cooldown (Hägele et al. 2024)
# lib/parallel/sharding.py builds the mesh in this order: stage outermost (pipeline stages may sit on
# slices joined by slow links: only activations cross them), tensor innermost (fastest links).
MESH_AXES = ("stage", "data", "fsdp", "expert", "tensor")
MESH_PRESETS = {
    # preset -> (stage, data, fsdp, expert, tensor); -1 means "all remaining devices".
    "dp": (1, -1, 1, 1, 1),
    "fsdp": (1, 1, -1, 1, 1),
    "fsdp_tp": (1, 1, -1, 1, 2),
    "ep": (1, 1, 1, -1, 1),  # experts (and the batch) over every device: expert parallelism for moe
    "fsdp_ep": (1, 1, -1, 2, 1),  # experts 2 ways, the rest fsdp
}
FLOPS_CONVENTIONS = ("6N", "kaplan", "chinchilla")
# The data sources whose batches are {"image", "label"} (task "classify"); lib/data registers each source
# with its task and checks that its image sources are these (lib.tasks picks the task from this).
IMAGE_SOURCES = ("synthetic_images", "hf_images")
SYNTH_IMG_DEFAULT_CLASSES = 10


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the fix."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    family: str = "transformer"
    vocab_size: int = 0  # 0: taken from the data source (see lib.data.resolve_vocab)
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 0  # 0: 4 * d_model
    mlp: str = "gelu"
    tie_embeddings: bool = True
    dropout: float = 0.0
    rope_theta: float = 10000.0
    compute_dtype: str = "float32"  # bfloat16 on accelerators; parameters stay float32
    attention_impl: str = "xla"
    scan_layers: bool = False
    remat: bool = False
    # sp: every matrix N(0, 0.02), one Adam learning rate, 1/sqrt(head_dim) attention.
    # mup: Tensor Programs V (Yang et al. 2022): hidden matrices init std 0.02*sqrt(base_width/d_model)
    # and Adam lr x base_width/d_model, embeddings and vectors unscaled, 1/head_dim attention,
    # logits x base_width/d_model (lib/models/transformer.py, lib/train/optim.py). Equal to sp's
    # init, rates and logits at d_model == base_width (attention aside), so an lr tuned there transfers.
    parametrization: str = "sp"
    base_width: int = 0  # mup: the d_model whose hyperparameters transfer; 0 (unused) with sp
    # -- the other families (lib/models/): fields a family does not use are ignored by it --------
    # lstm / gru: n_layers stacked recurrent layers of rnn_hidden units (0: d_model), scanned over time;
    # rnn_proj > 0 projects each layer's output to rnn_proj units (lstm: LSTMP, Sak et al. 2014, the
    # projection is also the recurrent state; gru: the output only).
    rnn_hidden: int = 0
    rnn_proj: int = 0
    # mlp: each position sees the embeddings of its last `context` tokens (itself included), concatenated
    # and projected to d_model, then n_layers residual MLP blocks (Bengio et al. 2003 with a residual stack).
    context: int = 8
    # cnn: n_layers residual blocks of a causal 1-D convolution (kernel_size taps, d_model -> 2 d_model)
    # and a gated linear unit (Dauphin et al. 2017); layer l is dilated by 2^(l mod dilation_cycle).
    kernel_size: int = 4
    dilation_cycle: int = 1
    # moe: the transformer with each MLP replaced by n_experts experts (each an MLP of d_ff), top_k
    # routing, capacity_factor * top_k * seq_len / n_experts slots per expert and sequence; the
    # load-balancing loss (x moe_aux_weight) and router z-loss (x moe_z_weight) join the LM loss.
    n_experts: int = 8
    top_k: int = 2
    capacity_factor: float = 1.25
    moe_aux_weight: float = 0.01
    moe_z_weight: float = 0.001
    # -- image classifiers (task "classify": data.source in IMAGE_SOURCES); vocab_size = number of classes --
    # image_size / image_channels: the input geometry, 0 = from data.image_size / data.image_channels
    # (resolve_model_input); the closed-form FLOPs per image need it.
    image_size: int = 0
    image_channels: int = 0
    # resnet: pre-activation ResNet (He et al. 2016b). Stage i has widths[i] channels and depths[i]
    # basic blocks; () = (d_model, 2 d_model, 4 d_model) and n_layers blocks per stage. Stages after
    # the first halve the resolution. norm: group (GroupNorm, norm_groups groups) or batch (BatchNorm).
    widths: tuple = ()
    depths: tuple = ()
    norm: str = "group"
    norm_groups: int = 8
    # vit: patch_size x patch_size patches, the transformer's Block (non-causal, no RoPE, learned
    # position embeddings), pooled by the mean over patches or a class token.
    patch_size: int = 4
    pool: str = "mean"

    @property
    def stage_widths(self) -> tuple[int, ...]:
        return tuple(self.widths) or (self.d_model, 2 * self.d_model, 4 * self.d_model)

    @property
    def stage_depths(self) -> tuple[int, ...]:
        return tuple(self.depths) or (self.n_layers,) * len(self.stage_widths)

    @property
    def ffw_size(self) -> int:
        return self.d_ff or 4 * self.d_model

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: str = "synthetic"
    seq_len: int = 64
    global_batch: int = 32
    seed: int = 0
    # synthetic phrase language (lib/data/synthetic.py): phrase = ID digits of its rank + filler + boundary
    synth_vocab: int = 64  # boundary 0, ID digits 1..(vocab-1)//2, filler tokens above
    synth_zipf: float = 1.3  # p_rank ~ rank^-zipf; the unmemorised tail mass falls as rank^-(zipf-1)
    synth_filler_len: int = 5  # filler tokens per phrase (what a model memorises per phrase)
    synth_id_digits: int = 0  # the lexicon has base^digits - 1 phrases; 0: the most int64 ranks allow (~1e17)
    # Hugging Face datasets / local files (lib/data/text.py)
    dataset: str = ""  # hub name, or a builder: text | json | parquet | csv
    dataset_config: str = ""  # hub config (subset) name, e.g. "en" for allenai/c4, "sample-10BT" for fineweb
    data_files: str = ""  # comma-separated paths or globs for local builders (split=path names a split)
    text_field: str = "text"
    split: str = "train"
    eval_split: str = ""  # "": hold out `holdout_fraction` of the training documents
    holdout_fraction: float = 0.01
    tokenizer: str = "bytes"  # bytes | bpe:<vocab> | <pretrained name or tokenizer.json path>
    data_root: str = ""  # token store folder; "": <workdir>/../.data (never ~/.cache)
    streaming: bool = False
    max_tokens: int = 0  # 0: tokenize the whole split; else stop after this many training tokens
    # images (synthetic_images, hf_images): square image_size x image_size x image_channels; seq_len unused
    image_size: int = 16  # hf images are resized (shorter side) and center-cropped to it
    image_channels: int = 3  # 1 (grayscale) or 3 (RGB); must match an hf dataset's images
    num_classes: int = 0  # 0: synthetic -> 10, hf -> from the dataset's labels
    image_field: str = "image"
    label_field: str = "label"
    augment: str = "none"  # training batches only: none | flip | crop | crop_flip
    crop_pad: int = 2  # crop: pad by this many pixels (zeros = the mean pixel), random-crop back to image_size
    # synthetic image classes (lib/data/images.py): Zipfian modes of band-limited textures, exact floor
    synth_img_modes: int = 0  # modes (ranks 1..modes); 0: 2^62 - 1, effectively unbounded
    synth_img_zipf: float = 1.3  # p_mode ~ rank^-zipf; the unmemorised tail mass falls as rank^-(zipf-1)
    synth_img_band: int = 3  # prototypes hold spatial frequencies |ky|, |kx| <= band (pixel noise only above)
    synth_img_noise: float = 0.5  # per-pixel std of the (out-of-band) Gaussian pixel noise; prototypes have RMS 1
    synth_img_label_noise: float = 0.1  # probability a label is replaced by a uniform draw over the classes


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adamw"
    lr: float = 3e-3
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    momentum: float = 0.9
    weight_decay: float = 0.1
    clip_norm: float = 1.0  # 0 disables global-norm clipping
    schedule: str = "cosine"
    warmup_steps: int = 0
    final_lr_frac: float = 0.1  # cosine/linear/wsd end at lr * final_lr_frac on the last step
    decay_every: int = 0  # step schedule: multiply by decay_factor every decay_every steps
    decay_factor: float = 0.1
    decay_rate: float = 0.0  # exponential: 0 -> reach final_lr_frac at the last step
    wsd_decay_frac: float = 0.2  # warmup-stable-decay: fraction of steps spent decaying
    wsd_decay_shape: str = "linear"  # wsd cooldown: linear | cosine | 1-sqrt (lr falls as 1 - sqrt(progress))
    # A sweep's lr grid (lib/sweeps/plans.py Sweep.lr_grid): this run's lr is its point's lr x lr_factor.
    # Bookkeeping for the fit (which run is x0.5, x1, x2 of the rule); lr above is what trains.
    lr_factor: float = 1.0


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    preset: str = "dp"
    data: int = 0  # 0: from the preset; -1: all remaining devices
    fsdp: int = 0
    tensor: int = 0
    expert: int = 0  # shards the experts of a moe model (and, like data, the batch)
    # pipeline stages: the scanned layer stack split into `stage` contiguous groups of layers, one per
    # device group, run as a microbatched schedule (train.microbatches; lib/parallel/pipeline.py)
    stage: int = 0

    def axis_sizes(self) -> tuple[int, int, int, int, int]:
        """(stage, data, fsdp, expert, tensor), the order of MESH_AXES."""
        preset = MESH_PRESETS[self.preset]
        given = (self.stage, self.data, self.fsdp, self.expert, self.tensor)
        return tuple(g or default for g, default in zip(given, preset))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 200
    grad_accum: int = 1
    # The layer stack as a pipeline schedule over this many microbatches of each (grad_accum) batch:
    # needed (>= mesh.stage) when mesh.stage > 1; 0: no schedule. Layout, not numbers: it changes
    # only the order of float sums, so it is not hashed (like the mesh; see content_hash).
    microbatches: int = 0
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100  # also evaluated at the last step
    # Held-out tokens scored per evaluation, the same rows for every run whatever its batch: the
    # first ceil(eval_tokens / seq_len) rows of the eval stream.
    eval_tokens: int = 65536
    checkpoint_every: int = 100  # also at the last step and on SIGTERM
    keep_checkpoints: int = 2
    flops_convention: str = "chinchilla"
    # Trunks and branches (lib/sweeps/cooldowns.py). A trunk keeps its checkpoints at keep_steps
    # (where its branches start) whatever keep_checkpoints says. A branch names its trunk's run id
    # (a sibling folder in the same root) and the step it starts from: with no checkpoint of its
    # own it restores the trunk's checkpoint at branch_start, then trains to its own end.
    keep_steps: tuple = ()
    trunk: str = ""
    branch_start: int = 0


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
    wandb: bool = False
    project: str = "scaling"
    group: str = ""  # "": the sweep name, if any
    name: str = ""  # "": the run id
    console: bool = True


@dataclasses.dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    mesh: MeshConfig = MeshConfig()
    train: TrainConfig = TrainConfig()
    tracking: TrackingConfig = TrackingConfig()
    name: str = "run"
    sweep: str = ""  # the sweep this run belongs to, if any
    budget: float = 0.0  # the sweep's nominal FLOP budget for this run, if any

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunConfig":
        return _from_dict(cls, d, prefix="")

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        return cls.from_dict(json.loads(text))

    def content_hash(self, length: int = 6) -> str:
        """Hash of what determines the numbers (not mesh layout, tracking or naming).

        A field is hashed when it differs from its default, except the fields of run id version 1
        (HASHED_ALWAYS_V1), hashed always as they were then: so adding a field with a default to any
        section leaves every existing run id as it was, with no list to keep."""
        d: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in _NOT_HASHED:
                continue
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                skip = _NOT_HASHED_FIELDS.get(f.name, ())
                d[f.name] = {k: v for k, v in dataclasses.asdict(value).items()
                             if k not in skip and _hashed(f.name, k, v, type(value))}
            elif _hashed("", f.name, value, type(self)):
                d[f.name] = value
        blob = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:length]

    # -- overrides -----------------------------------------------------------------------------
    def with_overrides(self, overrides: Mapping[str, Any]) -> "RunConfig":
        """`{"model.d_model": 256, "name": "x"}` -> a new config. Unknown keys raise ConfigError."""
        d = self.to_dict()
        for key, value in overrides.items():
            node, parts = d, key.split(".")
            for i, part in enumerate(parts):
                if not isinstance(node, dict) or part not in node:
                    known = sorted(node) if isinstance(node, dict) else []
                    where = ".".join(parts[:i]) or "the top level"
                    raise ConfigError(
                        f"unknown config key '{key}': '{part}' is not a field of {where}; "
                        f"known fields there: {', '.join(known)}"
                    )
                if i == len(parts) - 1:
                    if isinstance(node[part], dict):
                        raise ConfigError(f"config key '{key}' is a section; set one of its fields, e.g. '{key}.{next(iter(node[part]))}'")
                    node[part] = value
                else:
                    node = node[part]
        return RunConfig.from_dict(d)

    def validate(self, device_count: int | None = None) -> "RunConfig":
        # The rules need the families and data sources (above this module): they live in lib/config_rules.py.
        raise TypeError("RunConfig.validate moved: call lib.config_rules.validate(cfg, device_count) (the families' and "
                        "data sources' own rules and the rules across sections)")


# -- what the run id hashes (RunConfig.content_hash) -------------------------------------------------
# Never hashed: where a run is laid out, tracked and named; how often it logs, evaluates and
# checkpoints (eval_tokens is not bookkeeping: it decides which tokens eval_loss averages over); the
# pipeline schedule (layout, like the mesh: it moves only the order of float sums, so a run may resume
# under another stage layout or none); where the token store lives and how it was read.
_NOT_HASHED = ("mesh", "tracking", "name", "sweep")
_NOT_HASHED_FIELDS = {
    "train": ("log_every", "checkpoint_every", "keep_checkpoints", "eval_every", "microbatches"),
    "data": ("data_root", "streaming"),
}
# Run id version 1: the fields hashed whatever their value, as they were before the rule "hashed
# when it differs from the default" (which every other field follows). Frozen: a new field never
# joins it (that would change every id); tests/test_config.py pins it and tests/test_run_ids.py the ids.
HASHED_ALWAYS_V1 = {
    "": ("budget",),
    "model": ("family", "vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "mlp", "tie_embeddings", "dropout",
              "rope_theta", "compute_dtype", "attention_impl", "scan_layers", "remat"),
    "data": ("source", "seq_len", "global_batch", "seed", "synth_vocab", "synth_zipf", "synth_filler_len", "synth_id_digits",
             "dataset", "dataset_config", "data_files", "text_field", "split", "eval_split", "holdout_fraction", "tokenizer",
             "max_tokens"),
    "optimizer": ("name", "lr", "b1", "b2", "eps", "momentum", "weight_decay", "clip_norm", "schedule", "warmup_steps",
                  "final_lr_frac", "decay_every", "decay_factor", "decay_rate", "wsd_decay_frac"),
    "train": ("steps", "grad_accum", "seed", "eval_tokens", "flops_convention"),
}


def _hashed(section: str, name: str, value: Any, cls: type) -> bool:
    if name in HASHED_ALWAYS_V1.get(section, ()):
        return True
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default is not dataclasses.MISSING:
        default = field.default
    elif field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    else:
        return True  # no default: always part of what the run computes
    return value != default


def parse_set_args(items: list[str] | None) -> dict[str, Any]:
    """`["model.d_model=256", "tracking.wandb=true"]` -> dict; values parsed as JSON where they parse."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}' (e.g. --set model.d_model=256)")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key.strip()] = value
    return out


def _from_dict(cls, d: Mapping[str, Any], prefix: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(fields)
    if unknown:
        raise ConfigError(f"unknown config key(s) {sorted(prefix + k for k in unknown)}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in d.items():
        f = fields[name]
        default = f.default if f.default is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key '{prefix}{name}' must be a mapping of fields")
            kwargs[name] = _from_dict(type(default), value, prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(f"{prefix}{name}", value, default)
    return cls(**kwargs)


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Match the type of the field's default: ints may become floats, not the other way round."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"'{key}' must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"'{key}' must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{key}' must be a number, got {value!r}")
        return float(value)
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"'{key}' must be a list of integers, got {value!r}")
        return tuple(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            value = json.dumps(value) if not isinstance(value, (int, float)) else str(value)
        return value
    return value


def require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{field}: {message}")


def one_of(value: str, options, field: str) -> None:
    require(value in options, field, f"unknown value '{value}'; choose one of {', '.join(options)}")


# -- the checks of each section's shared fields (lib/config_rules.py runs them with the family's and
# the data source's own rules and the rules across sections) ----------------------------------------
def check_model(m: ModelConfig) -> None:
    """The fields every family reads; a family's own fields are its FamilySpec's (lib/models/spec.py)."""
    one_of(m.mlp, MLP_KINDS, "model.mlp")
    one_of(m.compute_dtype, DTYPES, "model.compute_dtype")
    one_of(m.attention_impl, ATTENTION_IMPLS, "model.attention_impl")
    for name in ("d_model", "n_layers", "n_heads"):
        require(getattr(m, name) > 0, f"model.{name}", "must be positive")
    require(m.vocab_size >= 0, "model.vocab_size", "must be positive (or 0 to take it from the data)")
    require(m.d_ff >= 0, "model.d_ff", "must be positive (or 0 for 4 * d_model)")


def check_model_training(m: ModelConfig) -> None:
    """The fields that say how any family trains (checked after the family's own)."""
    require(0.0 <= m.dropout < 1.0, "model.dropout", "must be in [0, 1)")
    one_of(m.parametrization, PARAMETRIZATIONS, "model.parametrization")
    require(m.base_width >= 0, "model.base_width", f"must be >= 0, got {m.base_width}")


def check_data(d: DataConfig) -> None:
    """The fields every data source reads; a source's own fields are its SourceSpec's (lib/data/base.py)."""
    require(d.seq_len > 0, "data.seq_len", f"sequence length must be positive, got {d.seq_len}")
    require(d.global_batch > 0, "data.global_batch", "must be positive")
    require(0.0 < d.holdout_fraction < 1.0, "data.holdout_fraction", "must be in (0, 1)")


def check_train_and_optimizer(cfg: RunConfig) -> None:
    o, t = cfg.optimizer, cfg.train
    require(t.steps > 0, "train.steps", f"step count must be positive, got {t.steps}")
    require(t.grad_accum > 0, "train.grad_accum", "must be positive")
    for name in ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
        require(getattr(t, name) > 0, f"train.{name}", "must be positive")
    require(t.eval_tokens > 0, "train.eval_tokens", f"held-out tokens per evaluation must be positive, got {t.eval_tokens}; e.g. 65536")
    one_of(t.flops_convention, FLOPS_CONVENTIONS, "train.flops_convention")

    one_of(o.name, OPTIMIZERS, "optimizer.name")
    one_of(o.schedule, SCHEDULES, "optimizer.schedule")
    require(o.lr > 0 and math.isfinite(o.lr), "optimizer.lr", f"learning rate must be positive, got {o.lr}")
    require(o.lr_factor > 0 and math.isfinite(o.lr_factor), "optimizer.lr_factor", f"must be positive (1: no lr grid), got {o.lr_factor}")
    require(o.warmup_steps >= 0, "optimizer.warmup_steps", "must be >= 0")
    require(o.warmup_steps < t.steps, "optimizer.warmup_steps", f"warmup ({o.warmup_steps}) must be shorter than train.steps ({t.steps})")
    require(0.0 <= o.final_lr_frac <= 1.0, "optimizer.final_lr_frac", "must be in [0, 1]")
    require(o.clip_norm >= 0, "optimizer.clip_norm", "must be >= 0 (0 disables clipping)")
    if o.schedule == "step":
        require(o.decay_every > 0, "optimizer.decay_every", "the step schedule needs decay_every > 0")
    require(0.0 < o.wsd_decay_frac <= 1.0, "optimizer.wsd_decay_frac", "must be in (0, 1]")
    one_of(o.wsd_decay_shape, WSD_DECAY_SHAPES, "optimizer.wsd_decay_shape")
    require(all(0 < k <= t.steps for k in t.keep_steps), "train.keep_steps",
            f"steps to keep checkpoints at must be in 1..train.steps ({t.steps}), got {list(t.keep_steps)}")
    if t.trunk:
        require(o.schedule == "wsd", "optimizer.schedule", f"a branch (train.trunk set) cools down with the wsd schedule, got '{o.schedule}'")
        require(o.warmup_steps <= t.branch_start < t.steps, "train.branch_start",
                f"a branch starts after its warmup ({o.warmup_steps} steps) and before its end ({t.steps}), got {t.branch_start}")
    else:
        require(t.branch_start == 0, "train.branch_start", "only a branch (train.trunk set) has a start step; set train.trunk or drop it")


def check_mesh(mesh: MeshConfig) -> tuple[int, int, int, int, int]:
    """The preset and the axis sizes (-1 unresolved): (stage, data, fsdp, expert, tensor)."""
    one_of(mesh.preset, tuple(MESH_PRESETS), "mesh.preset")
    sizes = mesh.axis_sizes()
    for name, size in zip(MESH_AXES, sizes):
        require(size == -1 or size >= 1, f"mesh.{name}", f"must be a positive size or -1 (the rest), got {size}")
    require(sizes.count(-1) <= 1, "mesh", f"at most one axis may be -1, got stage,data,fsdp,expert,tensor = {sizes}")
    return sizes


def eval_rows(eval_tokens: int, seq_len: int) -> int:
    """Rows in the eval set: whole rows of seq_len scored tokens, at least eval_tokens tokens."""
    return -(-eval_tokens // seq_len)


def eval_chunk_rows(eval_set_rows: int, global_batch: int) -> int:
    """Rows per eval batch: the eval set in equal chunks of one compiled shape (lib.train.loop)."""
    return math.gcd(eval_set_rows, global_batch)


def task_kind(cfg: RunConfig) -> str:
    """"classify" for image sources (lib/tasks/classify.py), else "lm" (next-token prediction)."""
    return "classify" if cfg.data.source in IMAGE_SOURCES else "lm"


def units_per_row(cfg: RunConfig) -> int:
    """What D counts per row of a batch: seq_len tokens (lm), or one image (classify). Sweeps plan
    D = C / flops_per_token(model, units_per_row) units and steps = D / (global_batch * units_per_row)."""
    return 1 if task_kind(cfg) == "classify" else cfg.data.seq_len


def unit_name(cfg: RunConfig) -> str:
    return "images" if task_kind(cfg) == "classify" else "tokens"


def resolve_model_input(cfg: RunConfig) -> RunConfig:
    """An image classifier's input geometry from the data (model.image_size/image_channels 0 = from
    data.image_size/image_channels); a different explicit value is an error. Other tasks: unchanged."""
    if task_kind(cfg) != "classify":
        return cfg
    m, d = cfg.model, cfg.data
    for name in ("image_size", "image_channels"):
        given, data = getattr(m, name), getattr(d, name)
        require(given in (0, data), f"model.{name}",
                 f"{given} does not match data.{name}={data}; leave model.{name} at 0 to take it from the data")
    model = dataclasses.replace(m, image_size=d.image_size, image_channels=d.image_channels)
    return dataclasses.replace(cfg, model=model)


def resolve_axis_sizes(mesh: MeshConfig, device_count: int) -> tuple[int, int, int, int, int]:
    """Replace the -1 axis by whatever is left of `device_count`: (stage, data, fsdp, expert, tensor)."""
    sizes = mesh.axis_sizes()
    fixed = math.prod(s for s in sizes if s != -1)
    return tuple(device_count // fixed if s == -1 else s for s in sizes)
