"""`scaling loss-parts`: the loss split by what each predicted token is, and phrase memory by sightings."""

import json
import math
import shutil

import numpy as np
import pandas as pd

from lib.config import DataConfig
from lib.data.synthetic import ROLE_BOUNDARY, ROLE_FIRST_FILLER, ROLE_ID, ROLE_LATER_FILLER, PhraseLanguage


def test_roles_and_ranks_name_each_tokens_phrase_and_place():
    lang = PhraseLanguage(DataConfig(seq_len=32, global_batch=16, synth_filler_len=4))
    tokens_BT1 = lang.eval_rows(0, 64)
    roles_BT, ranks_BT = lang.target_roles(tokens_BT1), lang.target_ranks(tokens_BT1)
    F = lang.filler_len
    for i in range(tokens_BT1.shape[0]):
        pos = 0  # where the next phrase starts in the row's predicted tokens
        row = tokens_BT1[i, 1:]
        while pos < row.size:
            # Walk the row by the phrases the ranks name: each must spell out exactly there.
            end = pos
            while end < row.size and ranks_BT[i, end] < 0:
                end += 1
            if end == row.size:  # a phrase cut in its ID: no filler seen, no rank
                assert (roles_BT[i, pos:] == ROLE_ID).all()
                break
            phrase = lang.phrase_tokens([ranks_BT[i, end]])[0]
            n_id = len(phrase) - F
            assert end - pos == n_id and tuple(row[pos:end]) == phrase[:n_id]
            assert (roles_BT[i, pos:end] == ROLE_ID).all()
            fill = row[end:end + F]
            assert tuple(fill) == phrase[n_id:n_id + fill.size]
            assert roles_BT[i, end] == ROLE_FIRST_FILLER and (roles_BT[i, end + 1:end + fill.size] == ROLE_LATER_FILLER).all()
            assert (ranks_BT[i, end:end + fill.size] == ranks_BT[i, end]).all()
            pos = end + F
            if pos < row.size:
                assert row[pos] == 0 and roles_BT[i, pos] == ROLE_BOUNDARY and ranks_BT[i, pos] == -1
                pos += 1


def test_half_memory_sightings_recovers_a_known_threshold():
    from experiments.workflow.loss_parts import half_memory_sightings

    rng = np.random.default_rng(0)
    sightings = np.exp(rng.uniform(np.log(0.5), np.log(5000), 20000))
    remembered = rng.random(sightings.size) < 1 / (1 + (40.0 / sightings) ** 3)  # P = 1/2 at 40 sightings
    losses = np.where(remembered, 0.01, math.log(32))
    assert abs(half_memory_sightings(sightings, losses, math.log(32)) / 40.0 - 1) < 0.05
    assert math.isnan(half_memory_sightings(sightings, np.zeros_like(sightings), math.log(32)))


def test_loss_parts_sum_to_each_runs_eval_loss_and_fit_each_part(mini_run, tmp_path, monkeypatch):
    from experiments.workflow.loss_parts import loss_parts

    _, root, proc = mini_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    copy = tmp_path / "root"
    shutil.copytree(root, copy)  # the fixture's root is shared: write the parts into a copy
    # A seed replicate of one point (sweep "mini-seed1" at train.seed 1) that beat it: another draw of
    # the point, not another lr, so it must not become the point's best run (the fit sets it aside too).
    first = sorted(p for p in copy.iterdir() if (p / "summary.json").exists())[0]
    replicate = copy / f"{first.name}-seed1"
    shutil.copytree(first, replicate)
    summary, config = (json.loads((replicate / f).read_text()) for f in ("summary.json", "config.json"))
    (replicate / "summary.json").write_text(json.dumps({**summary, "sweep": "mini-seed1", "eval_loss": summary["eval_loss"] - 0.5}))
    (replicate / "config.json").write_text(json.dumps({**config, "sweep": "mini-seed1", "train": {**config["train"], "seed": 1}}))
    monkeypatch.chdir(tmp_path)
    assert loss_parts("root") == 0  # a relative root, as `scaling loss-parts runs/x` gives it (orbax wants absolute paths)
    parts = pd.read_csv(copy / "loss_parts" / "parts.csv")
    runs = [p for p in root.iterdir() if (p / "summary.json").exists()]
    assert len(parts) == len(runs) > 0 and replicate.name not in set(parts["run_id"])
    recorded = {p.name: json.loads((p / "summary.json").read_text())["eval_loss"] for p in runs}
    for _, r in parts.iterrows():
        assert abs(r["eval_loss"] - recorded[r["run_id"]]) < 1e-5  # the same held-out rows as the run's own eval
        assert abs(r[["id", "first_filler", "later_filler", "boundary"]].sum() - r["eval_loss"]) < 1e-9
        assert r["tokens_id"] + r["tokens_first_filler"] + r["tokens_later_filler"] + r["tokens_boundary"] == r["rows"] * 16
        counted = sum(r[c] for c in parts.columns if c.startswith("n_c"))
        assert counted == r["tokens_later_filler"]  # every later filler token has a decoded rank
    record = json.loads((copy / "loss_parts" / "loss_parts.json").read_text())
    assert set(record["fits"]) == {"memory", "rest"} and record["fits"]["memory"]["E"] == 0.0
    for fit in record["fits"].values():
        assert fit["alpha"]["value"] > 0 and fit["beta"]["value"] > 0


def test_tail_mass_and_rank_of_prob_match_the_rank_probabilities():
    lang = PhraseLanguage(DataConfig(seq_len=32, global_batch=16))
    ranks = np.arange(1, 300_001)
    p_r = lang.rank_probs(ranks)
    for r in (0, 7, 100, 5000):
        assert abs(lang.tail_mass(r) - (p_r[r:].sum() + lang.tail_mass(ranks[-1]))) < 1e-12  # the sum beyond r, brute force
    assert np.allclose(lang.rank_of_prob(lang.rank_probs(np.array([3, 250, 40_000]))), [3, 250, 40_000], rtol=1e-9)


def test_frontier_exponents_recover_a_known_capacity_and_data_law():
    """A frontier that is the theory's mechanism exactly -- r* = min(N / 40 phrases' worth of
    parameters, the rank seen 30 times) -- gives alpha = a and beta = a / (1 + a) back."""
    from experiments.workflow.loss_parts import frontier_exponents

    lang = PhraseLanguage(DataConfig(seq_len=32, global_batch=16))
    rows = []
    for C in (1e10, 1e11, 1e12, 1e13):
        for N in np.geomspace(1e3, 1e6, 13):
            D = C / (6 * N)
            M = D / lang.mean_tokens_per_phrase
            r_star = min(N / 40, float(lang.rank_of_prob(30 / M)))
            c50 = M * float(lang.rank_probs(np.array([r_star]))[0])  # the sightings of the frontier's phrase
            tail = float(lang.tail_mass(r_star))
            rows.append({"run_id": f"{C:g}-{N:.0f}", "N": N, "D": D, "c50": c50, "r_star": r_star,
                         "later_filler": tail, "memory_if_frontier": tail})
    out = frontier_exponents(pd.DataFrame(rows), lang.alpha, resamples=50)
    assert abs(out["alpha"]["value"] - lang.alpha) < 0.01
    assert abs(out["beta"]["value"] - lang.alpha / (1 + lang.alpha)) < 0.01
    assert out["memory_over_frontier_tail"]["median"] == 1.0
