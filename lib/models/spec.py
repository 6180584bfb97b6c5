"""What a family declares about its configuration, next to its module (a marked section at the end
of each family's file); `lib/models/__init__.py` registers it beside the family's `Family`.

lib/config_rules.py runs these rules for whatever family `model.family` names, so lib/config.py
never branches on a family: a new family adds its fields' checks here, not there.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from lib.config import DataConfig, ModelConfig, require

TASKS = ("lm", "classify")  # lm: tokens in, next-token logits; classify: images in, class logits


def _no_rule(*args) -> None:
    return None


@dataclasses.dataclass(frozen=True)
class FamilySpec:
    name: str
    task: str = "lm"  # which data it reads (lib/config_rules.py pairs it with data sources of that task)
    # n_heads attention heads: n_heads must divide over mesh.tensor and shows in the shape tag
    attention: bool = False
    pipeline: bool = False  # its scanned layer stack runs as pipeline stages (mesh.stage, lib/parallel/pipeline.py)
    mup: bool = False  # implements model.parametrization=mup
    # Its own fields: raise lib.config.ConfigError naming the field and the fix (lib.config.require).
    validate: Callable[[ModelConfig], None] = _no_rule
    # Its fields against the data it reads (run once the task matches the data source).
    check_data: Callable[[ModelConfig, DataConfig], None] = _no_rule
    # Its fields against the mesh's resolved axis sizes {"stage": .., "data": .., "fsdp": .., "expert": .., "tensor": ..}.
    check_mesh: Callable[[ModelConfig, dict[str, int]], None] = _no_rule
    # The short name of a model's shape in reports (verify); None: family, d_model, n_layers (+ n_heads).
    shape_tag: Callable[[ModelConfig], str] | None = None

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"FamilySpec({self.name!r}).task: unknown task {self.task!r}; choose one of {', '.join(TASKS)}")

    def tag(self, m: ModelConfig) -> str:
        if self.shape_tag is not None:
            return self.shape_tag(m)
        heads = f", n_heads {m.n_heads}" if self.attention else ""
        return f"{m.family} d_model {m.d_model}, n_layers {m.n_layers}{heads}"


def check_heads(m: ModelConfig, rope: bool) -> None:
    """The attention families' heads: d_model splits into n_heads heads (of even size for RoPE)."""
    require(m.d_model % m.n_heads == 0, "model.d_model",
            f"d_model={m.d_model} is not divisible by n_heads={m.n_heads}; pick d_model a multiple of n_heads")
    if rope:
        require(m.head_dim % 2 == 0, "model.d_model", f"head_dim = d_model/n_heads = {m.head_dim} must be even for RoPE")


def check_image_input(m: ModelConfig) -> None:
    """An image family's input geometry: 0 takes it from the data (lib.config.resolve_model_input)."""
    require(m.image_size >= 0 and m.image_channels >= 0, "model.image_size", "must be >= 0 (0: from the data)")
