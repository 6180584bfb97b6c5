"""IsoFLOP sweep for one GPU: budgets 1e15..1e17 FLOPs, models of ~1M..100M parameters.

    scaling run isoflop_gpu --root runs/isoflop_gpu

Data: the embedded synthetic language (vocab 512, Zipf 1.3 over ~7e16 phrases: the mass a model
has not memorised falls as rank^-0.3, one power law over every rank these models can store; no
download, so it runs on machines without network). For real text:
    --set data.source=hf --set data.dataset=<hub name> --set model.vocab_size=<tokenizer size>
FLOPs: Chinchilla appendix-F convention (attention included). bf16 compute, fp32 parameters.
Rough cost: 5 budgets x ~5 sizes, ~7e17 FLOPs in all -- about an hour on an H100 at 40% MFU.
Learning rate: lr*(N) from the tune stage (`scaling run` tunes first, into <root>/tune/; ~2e17 FLOPs).
"""

from lib.config import DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrainConfig
from lib.sweeps.plans import IsoFlop, Tune

# (d_model, n_layers): head_dim 64; neighbours ~1.5-2x apart in parameters.
SHAPES = [(128, 2), (128, 4), (192, 4), (256, 4), (256, 6), (320, 6), (384, 8), (512, 8), (640, 10), (768, 12), (1024, 12), (1024, 16)]
SIZES = [dict(d_model=d, n_layers=L, n_heads=d // 64) for d, L in SHAPES]
BUDGETS = [1e15, 3e15, 1e16, 3e16, 1e17]

BASE = RunConfig(
    model=ModelConfig(compute_dtype="bfloat16", mlp="swiglu", d_ff=0),
    data=DataConfig(seq_len=1024, global_batch=256, synth_vocab=512, synth_zipf=1.3),
    optimizer=OptimizerConfig(name="adamw", lr=3e-3, weight_decay=0.1, schedule="cosine", final_lr_frac=0.1),
    train=TrainConfig(eval_tokens=8 * 256 * 1024, keep_checkpoints=1, flops_convention="chinchilla"),
)


def sweep() -> IsoFlop:
    return IsoFlop(BUDGETS, SIZES, base=BASE, name="gpu", tpp_range=(2, 500), per_budget=6, center_tpp=20, min_steps=200, min_batch=32,
                   lr_rule="tuned")


def tune() -> Tune:
    """4 sizes spanning the plan (0.6M..66M) x 5 lrs (factors of 2 around 3e-3) x 200 steps: ~2e17 FLOPs."""
    return Tune([SIZES[i] for i in (0, 3, 6, 8)], [7.5e-4, 1.5e-3, 3e-3, 6e-3, 1.2e-2], base=BASE, steps=200)
