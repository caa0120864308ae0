"""Promises the repository makes about itself: README commands, CI, lessons."""

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

LESSONS = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.py"))


def readme_commands():
    """The shell commands in README.md's first code block: the two set-up commands."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", readme, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_readme_opens_with_two_setup_commands():
    commands = readme_commands()
    assert len(commands) == 2, commands
    assert commands[0].startswith("pip install -r requirements.txt && python ")
    assert commands[1].startswith("pip install -r requirements-test.txt && python -m pytest")


def test_ci_runs_exactly_the_readme_test_command():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert readme_commands()[1].strip() in ci_lines
    assert ci_lines.index("pip install -q torch==2.13.0") < ci_lines.index(readme_commands()[1].strip())


def run_lesson(lesson) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(lesson)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "MINIPEFT_FAST": "1", "PYTHONPATH": str(ROOT)}, timeout=300)


@pytest.fixture(scope="module")
def lesson_results(request):
    """The lessons this pytest run selected, each run once, two at a time: every lesson sets torch to
    one thread, so a pair shares the machine's two cores (half the time of one after another)."""
    from concurrent.futures import ThreadPoolExecutor

    selected = [item.callspec.params["lesson"] for item in request.session.items
                if item.originalname == "test_lesson_runs"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(selected, pool.map(run_lesson, selected)))


@pytest.mark.parametrize("lesson", LESSONS, ids=[lesson.stem for lesson in LESSONS])
def test_lesson_runs(lesson, lesson_results):
    result = lesson_results[lesson]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
