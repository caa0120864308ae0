"""Shared test set-up: the exercise switch and the reference-implementation guard.

Exercises. ``pytest tests/test_attention.py --exercise attention`` runs the attention tests
against the learner's copy ``lessons/exercises/attention.py`` instead of ``minipeft/attention.py``.
The copy is imported *as* ``minipeft.attention`` before anything else imports minipeft, so the
models built in the tests use the learner's code too. Method exercises stand in for their module under
minipeft/methods/ (``--exercise lora`` → ``minipeft.methods.lora``; the table is in make.py).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXERCISES = Path(os.environ.get("MINIPEFT_EXERCISE_DIR", ROOT / "lessons" / "exercises"))


def pytest_addoption(parser):
    parser.addoption("--exercise", action="append", default=[], metavar="MODULE",
                     help="run the tests against lessons/exercises/MODULE.py instead of minipeft/MODULE.py")


def exercise_modules() -> dict[str, str]:
    """Exercise name → module under minipeft (``lora`` → ``methods.lora``): the table in make.py."""
    spec = importlib.util.spec_from_file_location("exercise_make", ROOT / "lessons" / "exercises" / "make.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    return make.MODULES


class ExerciseFinder(importlib.abc.MetaPathFinder):
    """Import ``minipeft.<module>`` from ``lessons/exercises/<name>.py`` for the chosen names."""

    def __init__(self, names):
        modules = exercise_modules()
        self.files = {f"minipeft.{modules[name]}": EXERCISES / f"{name}.py" for name in names}

    def find_spec(self, fullname, path=None, target=None):
        if fullname in self.files:
            return importlib.util.spec_from_file_location(fullname, self.files[fullname])
        return None


def pytest_configure(config):
    names = config.getoption("exercise")
    missing = [name for name in names if not (EXERCISES / f"{name}.py").exists()]
    if missing:
        available = sorted(p.stem for p in EXERCISES.glob("*.py") if p.stem != "make")
        raise pytest.UsageError(f"no exercise named {missing}; available: {available}")
    if names:
        if any(module.startswith("minipeft") for module in sys.modules):
            raise pytest.UsageError("minipeft was imported before the exercise switch could take effect")
        sys.meta_path.insert(0, ExerciseFinder(names))


def pytest_report_header(config):
    names = config.getoption("exercise")
    if names:
        return f"exercise mode: {', '.join(f'lessons/exercises/{n}.py' for n in names)} stand in for minipeft"


def reference(module: str):
    """Import a reference implementation used for parity (transformers, peft).

    Outside CI a missing package skips the test with the reason. In CI (``CI`` set) it must be
    installed: a parity test that silently skips proves nothing, so there it fails instead.
    """
    if os.environ.get("CI"):
        return __import__(module)
    return pytest.importorskip(module, reason=f"parity test needs `{module}`: pip install -r requirements-test.txt")
