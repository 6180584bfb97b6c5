"""Errors and warnings raised by the analysis package.

`AnalysisError` is for input the analysis cannot use (missing columns, too few points, a single
FLOP budget for Approach 2, ...). Its message names the column/row and the fix; the command line
prints it and exits non-zero, no traceback. `FitWarning` is for a result that exists but should
be read with care (best start on the grid's edge, a parameter that never moved, dropped rows).
"""


class AnalysisError(ValueError):
    """Input the analysis cannot use; the message says what and how to fix it."""


class FitWarning(UserWarning):
    """A fit or a data step that succeeded but deserves a look."""
