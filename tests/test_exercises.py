"""The tests are exercises: each stub in lessons/exercises/ must be current and must fail its tests.

The reference passing is the rest of the suite. Here each exercise region is removed *on its
own* and the module's tests are run against that copy: every region must make some test fail,
so no part of an exercise can be left unwritten and still pass.
"""

import os
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "lessons" / "exercises"))
import make  # noqa: E402  (lessons/exercises/make.py)

REGIONS = [(name, region) for name in make.MODULES
           for region in range(make.count_regions(make.source_path(name).read_text()))]


@pytest.mark.parametrize("name", make.MODULES)
def test_stub_is_current(name):
    stub = make.make_stub(make.source_path(name).read_text(), name)
    assert (make.HERE / f"{name}.py").read_text() == stub, "run: python lessons/exercises/make.py"


@pytest.mark.parametrize("name, region", REGIONS)
def test_tests_catch_each_missing_piece(name, region, tmp_path):
    (tmp_path / f"{name}.py").write_text(make.make_stub(make.source_path(name).read_text(), name, only=region))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", make.test_file(name), "--exercise", name, "-x", "-q",
         "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "MINIPEFT_EXERCISE_DIR": str(tmp_path)},
    )
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "NotImplementedError: exercise:" in result.stdout
