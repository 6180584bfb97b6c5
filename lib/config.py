"""Run configuration: frozen dataclasses, validation, overrides, JSON round trip, content hash.

A `RunConfig` fully describes one training run. `validate()` runs before anything is traced and
raises `ConfigError` naming the field and the fix. `with_overrides({"model.d_model": 256})`
returns a new config; unknown keys are errors, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any, Mapping

MODEL_FAMILIES = ("transformer", "lstm", "gru", "mlp", "cnn", "moe", "resnet", "vit")  # lib/models/__init__.py registers each
IMAGE_FAMILIES = ("resnet", "vit")  # classifiers of images (lib/tasks/classify.py); the others are LMs over tokens
NORMS = ("group", "batch")  # resnet normalisation
POOLS = ("mean", "cls")  # vit: mean over patch tokens, or a class token
ATTENTION_FAMILIES = ("transformer", "moe")  # the families n_heads / RoPE / tensor-parallel heads apply to
PIPELINE_FAMILIES = MUP_FAMILIES = ("transformer", "moe")  # the transformer shell (lib/models/transformer.py): stages, muP
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
DATA_SOURCES = ("synthetic", "hf", "synthetic_images", "hf_images")
IMAGE_SOURCES = ("synthetic_images", "hf_images")  # batches are {"image", "label"} (lib/data/images.py, image_store.py)
AUGMENTS = ("none", "flip", "crop", "crop_flip")  # training-time image augmentation (lib/data/augment.py)
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
        """Hash of what determines the numbers (not mesh layout, tracking or naming)."""
        d = self.to_dict()
        for key in ("mesh", "tracking", "name", "sweep"):
            d.pop(key)
        d["train"] = {k: v for k, v in d["train"].items() if k not in _BOOKKEEPING_TRAIN_FIELDS + _LAYOUT_TRAIN_FIELDS}
        for key in ("data_root", "streaming"):  # where the token store lives / how it was read
            d["data"].pop(key)
        for section, fields in _HASHED_UNLESS_DEFAULT.items():  # fields added later: old run ids stay valid
            for key, default in fields.items():
                if d[section].get(key) == default:
                    d[section].pop(key)
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
        """Raise ConfigError for the first invalid field; returns self so calls chain."""
        _validate(self, device_count)
        return self


# eval_tokens is not bookkeeping: it decides which tokens the summary's eval_loss averages over.
# Fields that joined the config after runs were recorded: hashed only when they differ from the
# default, so a run recorded before they existed keeps its id.
_HASHED_UNLESS_DEFAULT = {"model": {"parametrization": "sp", "base_width": 0, "rnn_hidden": 0, "rnn_proj": 0, "context": 8,
                                     "kernel_size": 4, "dilation_cycle": 1, "n_experts": 8, "top_k": 2, "capacity_factor": 1.25,
                                     "moe_aux_weight": 0.01, "moe_z_weight": 0.001, "image_size": 0, "image_channels": 0,
                                     "widths": (), "depths": (), "norm": "group", "norm_groups": 8, "patch_size": 4, "pool": "mean"},
                          "data": {"image_size": 16, "image_channels": 3, "num_classes": 0, "image_field": "image", "label_field": "label",
                                   "augment": "none", "crop_pad": 2, "synth_img_modes": 0, "synth_img_zipf": 1.3, "synth_img_band": 3,
                                   "synth_img_noise": 0.5, "synth_img_label_noise": 0.1},
                          "optimizer": {"wsd_decay_shape": "linear", "lr_factor": 1.0},
                          "train": {"keep_steps": (), "trunk": "", "branch_start": 0}}
_BOOKKEEPING_TRAIN_FIELDS = ("log_every", "checkpoint_every", "keep_checkpoints", "eval_every")
# Layout, like the mesh: how the layer stack is scheduled over the devices (lib/parallel/pipeline.py)
# moves only the order of float sums, so a run may resume under another stage layout (or none).
_LAYOUT_TRAIN_FIELDS = ("microbatches",)


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


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{field}: {message}")


def _one_of(value: str, options, field: str) -> None:
    _require(value in options, field, f"unknown value '{value}'; choose one of {', '.join(options)}")


def _validate_images(d: DataConfig) -> None:
    _require(d.image_size >= 4, "data.image_size", f"must be at least 4 pixels, got {d.image_size}")
    _require(d.image_channels in (1, 3), "data.image_channels", f"must be 1 (grayscale) or 3 (RGB), got {d.image_channels}")
    _require(d.num_classes >= 0, "data.num_classes", f"must be >= 0 (0: the default / the dataset's), got {d.num_classes}")
    _one_of(d.augment, AUGMENTS, "data.augment")
    _require(0 <= d.crop_pad < d.image_size, "data.crop_pad", f"must be in 0..image_size-1 ({d.image_size - 1}), got {d.crop_pad}")
    if d.source == "hf_images":
        _require(bool(d.dataset), "data.dataset", "set a hub name (e.g. uoft-cs/cifar10) or imagefolder with data.data_files=<folder>")
        return
    _require(d.num_classes != 1, "data.num_classes", "a classification task needs at least 2 classes (0: 10)")
    _require(d.synth_img_modes == 0 or d.synth_img_modes >= 2, "data.synth_img_modes", f"needs at least 2 modes (0: 2^62 - 1), got {d.synth_img_modes}")
    _require(1.0 < d.synth_img_zipf <= 10.0 and math.isfinite(d.synth_img_zipf), "data.synth_img_zipf",
             f"must be in (1, 10] so the mode law has a finite mean tail, got {d.synth_img_zipf}; e.g. 1.3")
    _require(1 <= d.synth_img_band and 2 * d.synth_img_band < d.image_size, "data.synth_img_band",
             f"must be in 1..{(d.image_size - 1) // 2} (below half the image size {d.image_size}), got {d.synth_img_band}")
    _require(d.synth_img_noise >= 0 and math.isfinite(d.synth_img_noise), "data.synth_img_noise", f"must be >= 0, got {d.synth_img_noise}")
    _require(0.0 <= d.synth_img_label_noise < 1.0, "data.synth_img_label_noise", f"must be in [0, 1), got {d.synth_img_label_noise}")


def _validate(cfg: RunConfig, device_count: int | None) -> None:
    m, d, o, t, mesh = cfg.model, cfg.data, cfg.optimizer, cfg.train, cfg.mesh
    _one_of(m.family, MODEL_FAMILIES, "model.family")
    _one_of(m.mlp, MLP_KINDS, "model.mlp")
    _one_of(m.compute_dtype, DTYPES, "model.compute_dtype")
    _one_of(m.attention_impl, ATTENTION_IMPLS, "model.attention_impl")
    for name in ("d_model", "n_layers", "n_heads"):
        _require(getattr(m, name) > 0, f"model.{name}", "must be positive")
    _require(m.vocab_size >= 0, "model.vocab_size", "must be positive (or 0 to take it from the data)")
    _require(m.d_ff >= 0, "model.d_ff", "must be positive (or 0 for 4 * d_model)")
    if m.family in ATTENTION_FAMILIES:
        _require(
            m.d_model % m.n_heads == 0,
            "model.d_model",
            f"d_model={m.d_model} is not divisible by n_heads={m.n_heads}; pick d_model a multiple of n_heads",
        )
        _require(m.head_dim % 2 == 0, "model.d_model", f"head_dim = d_model/n_heads = {m.head_dim} must be even for RoPE")
    _validate_family(m)
    _require(0.0 <= m.dropout < 1.0, "model.dropout", "must be in [0, 1)")
    _one_of(m.parametrization, PARAMETRIZATIONS, "model.parametrization")
    _require(m.base_width >= 0, "model.base_width", f"must be >= 0, got {m.base_width}")
    if m.parametrization == "mup":
        _require(m.family in MUP_FAMILIES, "model.parametrization",
                 f"mup is implemented for the {' and '.join(MUP_FAMILIES)} families, not '{m.family}'; use sp")
        _require(m.base_width > 0, "model.base_width", "muP needs the width its learning rate was tuned at, e.g. --set model.base_width=32")
        _require(
            m.base_width <= m.d_model,
            "model.base_width",
            f"base_width {m.base_width} is larger than the model (d_model {m.d_model}); use the smallest width of the ladder",
        )
        _require(
            cfg.optimizer.name in ("adam", "adamw"),
            "model.parametrization",
            f"mup implements Adam's per-layer rates; optimizer.name '{cfg.optimizer.name}' is not Adam: use adam or adamw",
        )

    _one_of(d.source, DATA_SOURCES, "data.source")
    _require(d.seq_len > 0, "data.seq_len", f"sequence length must be positive, got {d.seq_len}")
    _require(d.global_batch > 0, "data.global_batch", "must be positive")
    if d.source == "synthetic":
        _require(d.synth_vocab >= 5, "data.synth_vocab", f"needs at least 5 tokens (boundary, 2 ID digits, 2 filler tokens), got {d.synth_vocab}")
        _require(
            1.0 < d.synth_zipf <= 10.0 and math.isfinite(d.synth_zipf),
            "data.synth_zipf",
            f"must be in (1, 10] so the rank law has a finite entropy, got {d.synth_zipf}; e.g. 1.3",
        )
        _require(d.synth_filler_len >= 1, "data.synth_filler_len", f"needs at least 1 filler token (it ends the ID), got {d.synth_filler_len}")
        limit = synth_max_id_digits(d.synth_vocab)
        _require(
            0 <= d.synth_id_digits <= limit,
            "data.synth_id_digits",
            f"got {d.synth_id_digits}; ranks of more than {limit} base-{(d.synth_vocab - 1) // 2} digits overflow int64: "
            f"use 1..{limit}, or 0 for {limit}",
        )
    elif d.source == "hf":
        _require(bool(d.dataset), "data.dataset", "set a hub name or a builder (text|json|parquet|csv), e.g. --set data.dataset=text")
        _require(d.max_tokens >= 0, "data.max_tokens", f"must be >= 0 (0: the whole split), got {d.max_tokens}")
    else:
        _validate_images(d)
    _require(0.0 < d.holdout_fraction < 1.0, "data.holdout_fraction", "must be in (0, 1)")
    _validate_task(cfg)  # after the data's own fields: a bad data field is named before the family/data pairing

    _require(t.steps > 0, "train.steps", f"step count must be positive, got {t.steps}")
    _require(t.grad_accum > 0, "train.grad_accum", "must be positive")
    for name in ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
        _require(getattr(t, name) > 0, f"train.{name}", "must be positive")
    _require(t.eval_tokens > 0, "train.eval_tokens", f"held-out tokens per evaluation must be positive, got {t.eval_tokens}; e.g. 65536")
    _one_of(t.flops_convention, FLOPS_CONVENTIONS, "train.flops_convention")

    _one_of(o.name, OPTIMIZERS, "optimizer.name")
    _one_of(o.schedule, SCHEDULES, "optimizer.schedule")
    _require(o.lr > 0 and math.isfinite(o.lr), "optimizer.lr", f"learning rate must be positive, got {o.lr}")
    _require(o.lr_factor > 0 and math.isfinite(o.lr_factor), "optimizer.lr_factor", f"must be positive (1: no lr grid), got {o.lr_factor}")
    _require(o.warmup_steps >= 0, "optimizer.warmup_steps", "must be >= 0")
    _require(o.warmup_steps < t.steps, "optimizer.warmup_steps", f"warmup ({o.warmup_steps}) must be shorter than train.steps ({t.steps})")
    _require(0.0 <= o.final_lr_frac <= 1.0, "optimizer.final_lr_frac", "must be in [0, 1]")
    _require(o.clip_norm >= 0, "optimizer.clip_norm", "must be >= 0 (0 disables clipping)")
    if o.schedule == "step":
        _require(o.decay_every > 0, "optimizer.decay_every", "the step schedule needs decay_every > 0")
    _require(0.0 < o.wsd_decay_frac <= 1.0, "optimizer.wsd_decay_frac", "must be in (0, 1]")
    _one_of(o.wsd_decay_shape, WSD_DECAY_SHAPES, "optimizer.wsd_decay_shape")
    _require(all(0 < k <= t.steps for k in t.keep_steps), "train.keep_steps",
             f"steps to keep checkpoints at must be in 1..train.steps ({t.steps}), got {list(t.keep_steps)}")
    if t.trunk:
        _require(o.schedule == "wsd", "optimizer.schedule", f"a branch (train.trunk set) cools down with the wsd schedule, got '{o.schedule}'")
        _require(o.warmup_steps <= t.branch_start < t.steps, "train.branch_start",
                 f"a branch starts after its warmup ({o.warmup_steps} steps) and before its end ({t.steps}), got {t.branch_start}")
    else:
        _require(t.branch_start == 0, "train.branch_start", "only a branch (train.trunk set) has a start step; set train.trunk or drop it")

    _one_of(mesh.preset, tuple(MESH_PRESETS), "mesh.preset")
    sizes = mesh.axis_sizes()
    for name, size in zip(MESH_AXES, sizes):
        _require(size == -1 or size >= 1, f"mesh.{name}", f"must be a positive size or -1 (the rest), got {size}")
    _require(sizes.count(-1) <= 1, "mesh", f"at most one axis may be -1, got stage,data,fsdp,expert,tensor = {sizes}")
    _validate_pipeline_shape(cfg, sizes[0])
    if device_count is not None:
        fixed = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            ok = device_count % fixed == 0
        else:
            ok = fixed == device_count
        _require(
            ok,
            "mesh",
            f"mesh sizes stage,data,fsdp,expert,tensor = {sizes} do not multiply to the {device_count} devices; "
            f"set them so the product is {device_count}, or use -1 for one axis",
        )
        stage, data, fsdp, expert, tensor = resolve_axis_sizes(mesh, device_count)
        _require(
            m.family not in ATTENTION_FAMILIES + ("vit",) or m.n_heads % tensor == 0,
            "mesh.tensor",
            f"n_heads={m.n_heads} is not divisible by the tensor-parallel size {tensor}; pick a tensor size dividing n_heads",
        )
        per_step = d.global_batch
        if m.family == "moe":
            _require(
                m.n_experts % expert == 0,
                "mesh.expert",
                f"n_experts={m.n_experts} is not divisible by the expert-parallel size {expert}; pick mesh.expert dividing "
                f"n_experts (e.g. --set mesh.expert={math.gcd(m.n_experts, expert)}) or more experts",
            )
        # The batch is split over the expert axis too (the experts' tokens arrive by all-to-all); every
        # pipeline stage sees the whole batch of its data slice, so `stage` splits no rows.
        dp = data * fsdp * expert
        _require(
            per_step % (dp * t.grad_accum) == 0,
            "data.global_batch",
            f"global batch {per_step} is not divisible by data-parallel size (data*fsdp*expert = {dp}) x grad_accum "
            f"({t.grad_accum}); use a multiple of {dp * t.grad_accum}",
        )
        units = units_per_row(cfg)  # classify: eval_tokens counts images, one a row
        per_row = f"seq_len {d.seq_len}" if task_kind(cfg) == "lm" else "1 image per row"
        rows = eval_rows(t.eval_tokens, units)
        _require(
            rows % dp == 0,
            "train.eval_tokens",
            f"the eval set of {rows} rows (eval_tokens {t.eval_tokens} / {per_row}, rounded up) is not "
            f"divisible by the data-parallel size (data*fsdp*expert = {dp}); use a multiple of {dp * units} {unit_name(cfg)}",
        )
        if sizes[0] == -1:
            _validate_pipeline_shape(cfg, stage)  # the stage count the devices left
        if t.microbatches:
            _validate_pipeline_batch(cfg, dp, rows)


def _validate_pipeline_shape(cfg: RunConfig, stage: int) -> None:
    """mesh.stage / train.microbatches against the model (lib/parallel/pipeline.py's assumptions)."""
    m, t = cfg.model, cfg.train
    _require(t.microbatches >= 0, "train.microbatches", f"must be >= 0 (0: no pipeline schedule), got {t.microbatches}")
    if stage == 1 and not t.microbatches:
        return
    if stage != 1:  # -1 (the rest): checked again once the device count resolves it
        _require(t.microbatches > 0, "train.microbatches",
                 f"a pipeline over mesh.stage={stage} stages needs microbatches >= stages (bubble (S-1)/(M+S-1)); "
                 f"e.g. --set train.microbatches={4 * max(stage, 1)}")
    _require(m.family in PIPELINE_FAMILIES, "mesh.stage",
             f"pipeline stages are implemented for the {' and '.join(PIPELINE_FAMILIES)} families' scanned layers, not '{m.family}'; use mesh.stage=1 "
             "and train.microbatches=0")
    _require(m.scan_layers, "model.scan_layers", "the pipeline splits the scanned layer stack [L, ...]; use --set model.scan_layers=true")
    _require(m.dropout == 0.0, "model.dropout", f"the pipeline schedule runs without dropout, got {m.dropout}; use --set model.dropout=0")
    if stage > 1:
        _require(m.n_layers % stage == 0, "model.n_layers",
                 f"n_layers={m.n_layers} does not split into mesh.stage={stage} equal stages; use a multiple of {stage} layers "
                 f"or a stage count dividing {m.n_layers}")
        _require(t.microbatches >= stage, "train.microbatches",
                 f"{t.microbatches} microbatches cannot fill {stage} stages (every stage must hold one); use >= {stage}, "
                 f"e.g. --set train.microbatches={4 * stage}")


def _validate_pipeline_batch(cfg: RunConfig, dp: int, eval_set_rows: int) -> None:
    """Each microbatch takes an equal share of every data-parallel replica's rows (no rows move)."""
    t, d = cfg.train, cfg.data
    per_replica = d.global_batch // (dp * t.grad_accum)
    _require(per_replica % t.microbatches == 0, "train.microbatches",
             f"{t.microbatches} microbatches do not divide the per-replica batch of {per_replica} rows (global_batch "
             f"{d.global_batch} / (data*fsdp*expert {dp} x grad_accum {t.grad_accum})); pick a divisor of {per_replica}")
    chunk = eval_chunk_rows(eval_set_rows, d.global_batch) // dp  # what each replica scores per eval batch
    _require(chunk % t.microbatches == 0, "train.eval_tokens",
             f"eval chunks of {chunk} rows per replica (gcd(eval rows {eval_set_rows}, global_batch {d.global_batch}) / {dp}) "
             f"do not split into {t.microbatches} microbatches; use eval_tokens a multiple of "
             f"{dp * t.microbatches * d.seq_len} tokens")


def synth_max_id_digits(vocab: int) -> int:
    """The synthetic language's ID digits are base b = (vocab - 1) // 2; ranks b^digits <= 2^62 fit int64."""
    base, n = (vocab - 1) // 2, 1
    while base ** (n + 1) <= 1 << 62:
        n += 1
    return n


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
        _require(given in (0, data), f"model.{name}",
                 f"{given} does not match data.{name}={data}; leave model.{name} at 0 to take it from the data")
    model = dataclasses.replace(m, image_size=d.image_size, image_channels=d.image_channels)
    return dataclasses.replace(cfg, model=model)


def _validate_task(cfg: RunConfig) -> None:
    """The family must fit the data: image classifiers on image sources, LMs on token sources."""
    m, d = cfg.model, cfg.data
    if task_kind(cfg) == "classify":
        _require(m.family in IMAGE_FAMILIES, "model.family",
                 f"data.source '{d.source}' gives images and labels; '{m.family}' is a language model: use one of {', '.join(IMAGE_FAMILIES)}")
        _require(d.image_size > 0 and d.image_channels > 0, "data.image_size", f"images need a positive size and channel count, "
                 f"got {d.image_size} x {d.image_channels}")
        _require(cfg.train.flops_convention == "chinchilla", "train.flops_convention",
                 f"'{cfg.train.flops_convention}' counts each weight once per image, but an image model applies its convolution / "
                 "block weights at every position; use chinchilla (the closed-form forward FLOPs per image)")
        if m.family == "vit":
            _require(m.patch_size > 0 and d.image_size % m.patch_size == 0, "model.patch_size",
                     f"image size {d.image_size} is not divisible by patch_size {m.patch_size}; pick a patch size dividing it "
                     f"(e.g. {max(p for p in (1, 2, 4, 8) if d.image_size % p == 0)})")
    else:
        _require(m.family not in IMAGE_FAMILIES, "data.source",
                 f"model.family '{m.family}' classifies images, but data.source '{d.source}' gives tokens; "
                 f"use --set data.source={IMAGE_SOURCES[0]} (or {IMAGE_SOURCES[1]}), or a language-model family")


def _validate_family(m: ModelConfig) -> None:
    """The fields of the non-transformer families (lib/models/): each named with its fix."""
    if m.family in ("lstm", "gru"):
        _require(m.rnn_hidden >= 0, "model.rnn_hidden", f"must be positive (or 0 for d_model), got {m.rnn_hidden}")
        _require(m.rnn_proj >= 0, "model.rnn_proj", f"must be positive (or 0 for no projection), got {m.rnn_proj}")
        out = m.rnn_proj or m.rnn_hidden or m.d_model
        _require(
            out == m.d_model or not m.tie_embeddings,
            "model.tie_embeddings",
            f"the {m.family}'s output size ({out}: rnn_proj, else rnn_hidden) differs from d_model={m.d_model}, so the "
            f"embedding cannot be tied to the output head; set model.rnn_proj={m.d_model} or model.tie_embeddings=false",
        )
        _require(not m.scan_layers, "model.scan_layers",
                 f"{m.family} layers differ in input size and are not scanned; use --set model.scan_layers=false")
    if m.family == "mlp":
        _require(m.context >= 1, "model.context", f"the window must hold at least the current token, got {m.context}; e.g. 8")
        _require(not m.scan_layers, "model.scan_layers", "the mlp family does not scan its layers; use --set model.scan_layers=false")
    if m.family == "cnn":
        _require(m.kernel_size >= 1, "model.kernel_size", f"must be >= 1 tap, got {m.kernel_size}; e.g. 4")
        _require(1 <= m.dilation_cycle <= 16, "model.dilation_cycle",
                 f"must be in 1..16 (layer l is dilated by 2^(l mod dilation_cycle); 1: no dilation), got {m.dilation_cycle}")
        _require(not m.scan_layers, "model.scan_layers", "the cnn family does not scan its layers (dilations differ); use --set model.scan_layers=false")
    if m.family in IMAGE_FAMILIES:
        _require(m.image_size >= 0 and m.image_channels >= 0, "model.image_size", "must be >= 0 (0: from the data)")
        _require(not m.scan_layers, "model.scan_layers", f"the {m.family} family does not scan its layers; use --set model.scan_layers=false")
        _require(m.parametrization == "sp", "model.parametrization", f"mup is implemented for the transformer family, not '{m.family}'; use sp")
    if m.family == "resnet":
        widths, depths = m.stage_widths, m.stage_depths
        _require(len(widths) >= 1 and all(w > 0 for w in widths), "model.widths", f"stage widths must be positive, got {list(widths)}; e.g. [16, 32, 64]")
        _require(len(depths) == len(widths) and all(k >= 1 for k in depths), "model.depths",
                 f"one depth (>= 1 block) per stage of model.widths {list(widths)}, got {list(depths)}; e.g. {[1] * len(widths)}")
        _one_of(m.norm, NORMS, "model.norm")
        if m.norm == "group":
            _require(m.norm_groups >= 1 and all(w % m.norm_groups == 0 for w in widths), "model.norm_groups",
                     f"every stage width {list(widths)} must be divisible by norm_groups={m.norm_groups}; pick a divisor of "
                     f"{math.gcd(*widths)}, or widths that are multiples of {m.norm_groups}")
    if m.family == "vit":
        _require(m.patch_size >= 1, "model.patch_size", f"must be >= 1, got {m.patch_size}; e.g. 4")
        _one_of(m.pool, POOLS, "model.pool")
        _require(m.d_model % m.n_heads == 0, "model.d_model",
                 f"d_model={m.d_model} is not divisible by n_heads={m.n_heads}; pick d_model a multiple of n_heads")
    if m.family == "moe":
        _require(m.n_experts >= 1, "model.n_experts", f"must be >= 1, got {m.n_experts}; e.g. 8")
        _require(1 <= m.top_k <= m.n_experts, "model.top_k",
                 f"top_k={m.top_k} must be in 1..n_experts ({m.n_experts}); e.g. --set model.top_k={min(2, max(m.n_experts, 1))}")
        _require(m.capacity_factor > 0 and math.isfinite(m.capacity_factor), "model.capacity_factor",
                 f"must be > 0 (slots per expert = capacity_factor * top_k * seq_len / n_experts), got {m.capacity_factor}; e.g. 1.25")
        for name in ("moe_aux_weight", "moe_z_weight"):
            value = getattr(m, name)
            _require(value >= 0 and math.isfinite(value), f"model.{name}", f"must be >= 0 (0 turns the loss off), got {value}")


def resolve_axis_sizes(mesh: MeshConfig, device_count: int) -> tuple[int, int, int, int, int]:
    """Replace the -1 axis by whatever is left of `device_count`: (stage, data, fsdp, expert, tensor)."""
    sizes = mesh.axis_sizes()
    fixed = math.prod(s for s in sizes if s != -1)
    return tuple(device_count // fixed if s == -1 else s for s in sizes)
