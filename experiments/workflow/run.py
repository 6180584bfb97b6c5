"""`scaling run`: the stages of an experiment chained --

    tune (when the sweep's lr rule is "tuned") -> sweep -> sensitivity -> fit + report -> check

Each stage is its own module's function over typed options; this module only orders them, passes
what one stage leaves to the next, and keeps the worst exit code. An experiment with its own
`analyse(root)` (e.g. experiments/families.py: a law per family) replaces fit, report and check.
"""

from __future__ import annotations

import os

from experiments.workflow.experiment import load_experiment
from experiments.workflow.options import CheckOptions, RunOptions, TuneOptions
from experiments.workflow.sweep import sweep_stage


def run_experiment(options: RunOptions) -> int:
    from lib.parallel.distributed import process_index

    from experiments.workflow.fit import fit_and_summarise, next_budget
    from experiments.workflow.sensitivity import sensitivity_stage
    from experiments.workflow.tune import tune_stage

    spec, root, sweep = options.spec, options.root, options.sweep
    # a no-op unless the sweep's lr_rule is "tuned" and <root>/tune/lr_rule.json does not exist yet
    code = tune_stage(root, TuneOptions(sweep=sweep, extend=options.extend), options.distributed)
    if code:
        return code
    code = sweep_stage(root, sweep, options.distributed)
    if code in (0, 1):  # the experiment's sensitivity sweeps (e.g. the old single lr), into <root>/sensitivity/
        code = max(code, sensitivity_stage(root, sweep))
    experiment = load_experiment(spec)
    own_fit = getattr(experiment, "analyse", None)
    if own_fit is not None:
        return max(code, own_fit(root)) if code in (0, 1) and process_index() == 0 else code
    if code not in (0, 1) or process_index() != 0:  # fit what finished, even if some runs failed
        return code
    section: list[str] = []  # the lr rule and the sensitivity lines: report.md carries them after the fit's own

    def sections(record: dict) -> list[str]:
        from experiments.workflow.report import report_section

        section[:] = report_section(spec, root, record)
        return section

    fit_code = fit_and_summarise(root, sections)
    code = max(code, fit_code)
    if fit_code != 0:
        return code
    if section:
        from experiments.workflow.report import console_lines

        print("\n" + "\n".join(console_lines(section)))
    if options.verify:  # the prediction check at the next budget (experiments/workflow/check.py)
        from experiments.workflow.check import check_stage

        check = CheckOptions(fit_dir=os.path.join(os.fspath(root), "fit"), root=root, at=next_budget(root), experiment=spec,
                             neighbours=options.neighbours, allocation=_allocation(options, experiment), sweep=sweep,
                             report_sections=tuple(section))
        code = max(code, check_stage(check))
    return code


def _allocation(options: RunOptions, experiment) -> bool:
    """--allocation, or the experiment asks for the allocation check itself (`verify_allocation = True`,
    e.g. experiments/ladder.py)."""
    return options.allocation or bool(getattr(experiment, "verify_allocation", False))
