"""The stages of an experiment, as functions over typed options (options.py; see DESIGN "Rooms"):
experiments/cli.py and its *_cmd.py parsers are the only modules that know argparse; below them:

    experiment   experiment files by path or name, and the sweeps they define (sweep, tune grid, sensitivity)
    options      the frozen options of every stage (SweepOptions is what worker processes receive as JSON)
    sweep        plan a sweep and train what is missing with an executor (local, processes, ray)
    worker       a worker process of the processes executor: its share of a sweep, from JSON options
    status       the table of a root's runs
    tune         an lr grid per size, then the rule lr*(N) -> <root>/tune/lr_rule.json
    sensitivity  the experiment's sensitivity sweeps into <root>/sensitivity/<name>
    fit          the laws on a root's runs -> <root>/fit (fit.json, report.md, figures)
    report       the lr rule and sensitivity section that report.md carries after the fit's own
    analyse      `scaling fit`, `scaling plot`, `scaling predict` (thin wrappers over analysis)
    check        the prediction check at the next budget (`scaling verify`)
    run          `scaling run`: tune -> sweep -> sensitivity -> fit + report -> check
    plan         `scaling plan`: what a launch would train, without training
    lr_edges     after a sweep with an lr grid: one more run past the edge of each point whose best lr sits there
"""
