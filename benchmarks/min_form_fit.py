"""What the Chinchilla sum E + A N^-alpha + B D^-beta makes of a surface that follows the synthetic
language's theory exactly, at an experiment's own points (docs/results.md, "Ladder results").

The theory's mechanism (lib/data/synthetic.py) is a frontier, not a sum: a model knows the phrases
above a rank r* and none below, with r* = min(capacity, data) -- capacity ~ N (a phrase costs a
fixed number of parameters), data = the rank seen c times in D tokens (p_r M = c). The memory part
of the loss is then memory_beyond(r*) (lib/data/synthetic.py), whose exponents
are alpha = a in N and beta = a / (1 + a) in D. This script evaluates that surface, noise-free, at
the (N, D, C) of the points in a loss-parts table and fits it with approach 3 and E held at 0, the
same fitter as `scaling loss-parts`, for a few (parameters per phrase, sightings) pairs.

    python benchmarks/min_form_fit.py runs/ladder/loss_parts/parts.csv [--out min_form.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from analysis.report import fit_and_report  # noqa: E402
from lib.config import DataConfig  # noqa: E402
from lib.data.synthetic import PhraseLanguage  # noqa: E402

# (parameters per remembered phrase, sightings a phrase needs): around what the ladder measured
# (30-48 parameters per phrase where capacity binds, c50 25-47 where data binds).
SETTINGS = ((40, 35), (40, 25), (30, 35))


def frontier_memory(lang: PhraseLanguage, N, D, params_per_phrase: float, sightings: float) -> np.ndarray:
    phrases = np.asarray(D, float) / lang.mean_tokens_per_phrase
    r_star = np.minimum(np.asarray(N, float) / params_per_phrase, lang.rank_of_prob(sightings / phrases))
    return lang.memory_beyond(r_star)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("parts", help="a loss-parts table (ROOT/loss_parts/parts.csv): its N, D, C and measured memory part")
    ap.add_argument("--out", default=None, help="JSON output (default: beside the table, min_form.json)")
    args = ap.parse_args(argv)
    parts = pd.read_csv(args.parts)
    lang = PhraseLanguage(DataConfig(seq_len=32, global_batch=32))  # the quickstart's and the ladder's language
    theory = lang.theory()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ppp, c in SETTINGS:
            loss = frontier_memory(lang, parts["N"], parts["D"], ppp, c)
            csv = os.path.join(tmp, f"min_{ppp}_{c}.csv")
            pd.DataFrame({"N": parts["N"], "D": parts["D"], "C": parts["C"], "loss": loss}).to_csv(csv, index=False)
            rec = fit_and_report(csv, os.path.join(tmp, f"fit_{ppp}_{c}"), {"approach": "3", "fix_E": 0.0, "figures": False, "bootstrap": 0})
            e = rec["fits"]["approach3"]
            rows.append({"params_per_phrase": ppp, "sightings": c, "alpha": e["params"]["alpha"]["value"], "beta": e["params"]["beta"]["value"],
                         "a": e["a"]["value"], "rmse_vs_measured_memory": float(np.sqrt(np.mean((loss - parts["later_filler"]) ** 2)))})
    print(f"{len(parts)} points; the surface's own exponents (the theory): alpha {theory['alpha']:.3f}, beta {theory['beta']:.3f}, a {theory['a']:.3f}")
    print("params/phrase  sightings   fitted alpha  fitted beta  fitted a   rmse vs measured memory")
    for r in rows:
        print(f"{r['params_per_phrase']:13g}  {r['sightings']:9g}   {r['alpha']:12.3f}  {r['beta']:11.3f}  {r['a']:8.3f}   {r['rmse_vs_measured_memory']:.3f}")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.parts)), "min_form.json")
    with open(out, "w") as f:
        json.dump({"points": len(parts), "theory": theory, "fits": rows}, f, indent=1)
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
