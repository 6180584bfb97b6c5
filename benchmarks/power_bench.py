"""How long `scaling plan --power` takes: K simulations of an experiment's own design (default the
quickstart's 3 budgets x 5 sizes), each fitted by approaches 3 and 2 with bootstrap intervals, plus
the allocation check's power. Goal: 100 simulations in under a minute on 2 CPU cores.

    python benchmarks/power_bench.py [--experiment quickstart] [--sims 100] [--bootstrap 50]
        [--truth alpha=0.2,beta=0.45,A=2.7132,B=90.661] [--noise 0.01]

"cold" is the first call in a fresh process (JAX compiles the batched L-BFGS for the new batch
sizes), "warm" a second call with another seed. Wall and CPU seconds are both given: on a machine
shared with other work the CPU seconds say what the computation costs. The default truth puts the
quickstart's budgets' optima inside their sizes (alpha 0.2, beta 0.45: a = 0.69, as its design
assumes) with E at the language's floor. Prints a table; writes benchmarks/results/power_bench.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.results_io import write_json  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="quickstart")
    p.add_argument("--sims", type=int, default=100)
    p.add_argument("--bootstrap", type=int, default=50)
    p.add_argument("--truth", default="alpha=0.2,beta=0.45,A=2.7132,B=90.661")
    p.add_argument("--noise", type=float, default=0.01)
    p.add_argument("--out", default="power_bench.json")
    args = p.parse_args(argv)

    from analysis import power as P
    from experiments.workflow.plan import PlanOptions, parse_truth, power_design

    t0 = time.time()
    _, design = power_design(PlanOptions(spec=args.experiment))
    plan_s = time.time() - t0
    truth = P.with_defaults(parse_truth(args.truth), design.floor)
    rows = []
    for label, seed in (("cold", 0), ("warm", 1)):
        w, c = time.time(), time.process_time()
        rec = P.power(design, truth, P.PowerOptions(n_sims=args.sims, noise=args.noise, seed=seed, bootstrap=args.bootstrap))
        rows.append({"call": label, "seed": seed, "wall_s": time.time() - w, "cpu_s": time.process_time() - c,
                     "check_power": rec["check_power"], "bracketed_fraction": rec["bracketed_fraction"],
                     "a3": rec["approaches"]["approach3"]["a"], "a2": rec["approaches"]["approach2"]["a"]})
    print(f"{args.experiment}: {design.N.size} points, {len(design.budgets)} budgets; {args.sims} simulations x {args.bootstrap} "
          f"bootstrap resamples; planning took {plan_s:.1f} s")
    print(f"{'call':<5} {'wall s':>7} {'cpu s':>7} {'a3 sd':>7} {'a3 cov':>7} {'a2 sd':>7} {'a2 cov':>7} {'bracketed':>9} {'check power':>11}")
    for r in rows:
        f = lambda v, s: "-" if v is None else format(v, s)  # noqa: E731
        print(f"{r['call']:<5} {r['wall_s']:>7.1f} {r['cpu_s']:>7.1f} {f(r['a3']['sd'], '.3f'):>7} {f(r['a3']['coverage'], '.0%'):>7} "
              f"{f(r['a2']['sd'], '.3f'):>7} {f(r['a2']['coverage'], '.0%'):>7} {f(r['bracketed_fraction'], '.0%'):>9} {f(r['check_power'], '.0%'):>11}")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    path = write_json(args.out, {"experiment": args.experiment, "sims": args.sims, "bootstrap": args.bootstrap, "truth": truth,
                                 "noise": args.noise, "rows": rows, "plan_s": plan_s, "cpu_count": os.cpu_count(),
                                 "load_average": load, "machine": platform.platform()})
    print(f"load average {load}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
