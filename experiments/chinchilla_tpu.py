"""A Chinchilla-style IsoFLOP plan for a TPU pod: budgets 1e18..1e20 FLOPs, models of ~60M..2B.

    tpu_scripts/sweep.sh chinchilla_tpu            (every host of the slice trains each run together)
    scaling sweep chinchilla_tpu --root gs://BUCKET/sweeps/chinchilla_tpu   (on each host)

Checked on CPU only by expansion (tests/test_sweep.py). Data: web text through the Hugging Face
source (lib/data/text.py), GPT-2 tokenizer; override with --set data.dataset=... etc.
FSDP over the pod, layers scanned (compile time flat in depth) and rematerialised, bf16 compute.
Batch 512 x 2048 tokens (~1M) as in Chinchilla, one batch per budget (halved for the smallest token counts).
Learning rate: lr*(N) from the tune stage (`scaling run` tunes first, into <root>/tune/).
"""

from lib.config import DataConfig, MeshConfig, ModelConfig, OptimizerConfig, RunConfig, TrainConfig
from lib.sweeps.plans import IsoFlop, Tune

# (d_model, n_layers): head_dim 128; neighbours ~1.5x apart in parameters.
SHAPES = [(384, 6), (384, 8), (512, 6), (512, 8), (640, 10), (768, 12), (896, 14), (1024, 16), (1280, 18), (1536, 20), (1792, 22), (2048, 24), (2560, 24), (2560, 32)]
SIZES = [dict(d_model=d, n_layers=L, n_heads=d // 128) for d, L in SHAPES]
BUDGETS = [1e18, 3e18, 1e19, 3e19, 1e20]

BASE = RunConfig(
    model=ModelConfig(vocab_size=50257, compute_dtype="bfloat16", mlp="swiglu", scan_layers=True, remat=True, tie_embeddings=False),
    data=DataConfig(source="hf", dataset="HuggingFaceFW/fineweb-edu", split="train", streaming=True, tokenizer="gpt2",
                    seq_len=2048, global_batch=512),
    optimizer=OptimizerConfig(name="adamw", lr=2e-3, b2=0.95, weight_decay=0.1, schedule="cosine", final_lr_frac=0.1),
    mesh=MeshConfig(preset="fsdp"),
    train=TrainConfig(eval_tokens=16 * 512 * 2048, keep_checkpoints=2, flops_convention="chinchilla"),
)


def sweep() -> IsoFlop:
    return IsoFlop(BUDGETS, SIZES, base=BASE, name="chin", tpp_range=(2, 200), per_budget=7, center_tpp=20, min_steps=500, min_batch=64,
                   lr_rule="tuned")


def tune() -> Tune:
    """4 sizes spanning the plan (53M..1.8B) x 5 lrs (factors of 2 around 2e-3) x 500 steps: ~5e19 FLOPs, ~5% of the sweep."""
    return Tune([SIZES[i] for i in (0, 5, 8, 11)], [5e-4, 1e-3, 2e-3, 4e-3, 8e-3], base=BASE, steps=500)
