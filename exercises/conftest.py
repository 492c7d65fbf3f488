"""The exercise graders fail on purpose until the exercises are solved, so they run only when asked:

    pytest exercises/test_01_advantages.py     # grade one (any path inside exercises/ counts)
    GRADE_EXERCISES=1 python -m pytest -q      # grade them all from anywhere

A plain `python -m pytest -q` at the repository root collects them and skips them with this reason.
The graders themselves are tested against the reference code in tests/test_exercises.py
(instructor only, like tests/test_student_copy.py).
"""
import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SKIP_REASON = ("exercise grader: runs only when named, e.g. "
               "`pytest exercises/test_01_advantages.py`, or with GRADE_EXERCISES=1 "
               "(an untouched exercise fails on purpose)")


def named_explicitly(args, invocation_dir) -> bool:
    """True if a command-line path (`exercises/`, `exercises/test_05_selection.py::test_x`) is
    this folder or lies inside it."""
    for arg in args:
        path = Path(invocation_dir, str(arg).split("::")[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


@pytest.fixture(autouse=True)
def _grade_only_when_asked(request):
    if os.environ.get("GRADE_EXERCISES") == "1":
        return
    if not named_explicitly(request.config.args, request.config.invocation_params.dir):
        pytest.skip(SKIP_REASON)
