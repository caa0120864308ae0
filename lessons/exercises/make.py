"""Make the exercise stubs: copies of minipeft modules with the key lines taken out.

In the reference module, the lines between a ``# exercise: <hint>`` comment and the matching
``# end exercise`` comment are what the learner writes. This script replaces each such region
with ``raise NotImplementedError("exercise: <hint>")`` and writes the copy here, next to itself:

    python lessons/exercises/make.py           # regenerate every stub
    pytest tests/test_attention.py --exercise attention   # test your version of attention.py

A module inside a subpackage is named with dots: ``methods.prompt`` is ``minipeft/methods/prompt.py``,
its stub ``lessons/exercises/methods.prompt.py``, its tests ``tests/test_prompt.py`` (or the file
named in ``TEST_FILES``).

``tests/test_exercises.py`` checks that the stubs are up to date and that the tests catch them.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parent.parent / "minipeft"
MODULES = ("attention", "t5", "optim.adam", "optim.adafactor", "methods.prompt", "methods.prefix", "methods.ptuning",
           "methods.lora", "methods.adalora", "methods.adapter", "methods.fusion", "methods.bitfit", "methods.mixed", "objectives",
           "proxy", "discrete_prompt")
# The tests of a module are tests/test_<last part of its name>.py, unless listed here.
TEST_FILES = {"optim.adam": "tests/test_optim.py", "optim.adafactor": "tests/test_optim.py"}

START = re.compile(r"^(?P<indent>\s*)# exercise: (?P<hint>.+)$")
END = re.compile(r"^\s*# end exercise\s*$")

HEADER = '''# EXERCISE COPY of {path}: fill in every `raise NotImplementedError("exercise: …")`.
# Check your work with:   pytest {tests} --exercise {name}
# Start over with:        python lessons/exercises/make.py
'''


def source_path(name: str) -> Path:
    """The reference module: ``minipeft/attention.py`` for ``attention``, ``minipeft/optim/adam.py`` for ``optim.adam``."""
    return PACKAGE.joinpath(*name.split(".")).with_suffix(".py")


def test_file(name: str) -> str:
    """The test file that checks module ``name``, relative to the repository root."""
    return TEST_FILES.get(name, f"tests/test_{name.rsplit('.', 1)[-1]}.py")


def make_stub(source: str, name: str, only: int | None = None) -> str:
    """The reference source with each exercise region (or just region number ``only``) replaced
    by a NotImplementedError."""
    path = source_path(name).relative_to(PACKAGE.parent).as_posix()
    out, inside, region = [HEADER.format(path=path, tests=test_file(name), name=name)], False, -1
    for number, line in enumerate(source.splitlines(keepends=True), start=1):
        start = START.match(line)
        if start:
            if inside:
                raise ValueError(f"{path}:{number}: exercise regions cannot nest")
            inside, region = True, region + 1
            hint = start["hint"].replace('"', "'")
            if only is None or only == region:
                out.append(f'{start["indent"]}raise NotImplementedError("exercise: {hint}")\n')
        elif END.match(line):
            if not inside:
                raise ValueError(f"{path}:{number}: '# end exercise' without a start")
            inside = False
        elif not inside or (only is not None and only != region):
            out.append(line)
    if inside:
        raise ValueError(f"{path}: an exercise region is never closed")
    return "".join(out)


def count_regions(source: str) -> int:
    return sum(1 for line in source.splitlines() if START.match(line))


def main(names=MODULES):
    for name in names:
        stub = make_stub(source_path(name).read_text(), name)
        (HERE / f"{name}.py").write_text(stub)
        print(f"wrote lessons/exercises/{name}.py")


if __name__ == "__main__":
    main(sys.argv[1:] or MODULES)
