"""Scaling-law analysis: fit laws to runs or a CSV, derive the compute-optimal frontier, plot.

    from analysis.report import fit_and_report, summary
    record = fit_and_report("runs/quickstart", "runs/quickstart/fit", {"approach": "all"})
    print(summary(record))

Modules: laws (functional forms), lbfgs (batched L-BFGS in JAX), fit (Huber loss on log
residuals, grid of starts, warnings), bootstrap (intervals), approaches (Chinchilla approaches
1-3 and the frontier), data (CSV / run store loading and validation), pipeline (options -> the
fit record), plots (figures), report (fit.json, report.md, entry points), errors.
"""
