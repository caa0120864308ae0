"""Make the exercise stubs: copies of minipeft modules with the key lines taken out.

In the reference module, the lines between a ``# exercise: <hint>`` comment and the matching
``# end exercise`` comment are what the learner writes. This script replaces each such region
with ``raise NotImplementedError("exercise: <hint>")`` and writes the copy here, next to itself:

    python lessons/exercises/make.py           # regenerate every stub
    pytest tests/test_attention.py --exercise attention   # test your version of attention.py

``tests/test_exercises.py`` checks that the stubs are up to date and that the tests catch them.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parent.parent / "minipeft"
MODULES = ("attention", "t5", "objectives")

START = re.compile(r"^(?P<indent>\s*)# exercise: (?P<hint>.+)$")
END = re.compile(r"^\s*# end exercise\s*$")

HEADER = '''# EXERCISE COPY of minipeft/{name}.py: fill in every `raise NotImplementedError("exercise: …")`.
# Check your work with:   pytest tests/test_{name}.py --exercise {name}
# Start over with:        python lessons/exercises/make.py
'''


def make_stub(source: str, name: str, only: int | None = None) -> str:
    """The reference source with each exercise region (or just region number ``only``) replaced
    by a NotImplementedError."""
    out, inside, region = [HEADER.format(name=name)], False, -1
    for number, line in enumerate(source.splitlines(keepends=True), start=1):
        start = START.match(line)
        if start:
            if inside:
                raise ValueError(f"minipeft/{name}.py:{number}: exercise regions cannot nest")
            inside, region = True, region + 1
            hint = start["hint"].replace('"', "'")
            if only is None or only == region:
                out.append(f'{start["indent"]}raise NotImplementedError("exercise: {hint}")\n')
        elif END.match(line):
            if not inside:
                raise ValueError(f"minipeft/{name}.py:{number}: '# end exercise' without a start")
            inside = False
        elif not inside or (only is not None and only != region):
            out.append(line)
    if inside:
        raise ValueError(f"minipeft/{name}.py: an exercise region is never closed")
    return "".join(out)


def count_regions(source: str) -> int:
    return sum(1 for line in source.splitlines() if START.match(line))


def main(names=MODULES):
    for name in names:
        stub = make_stub((PACKAGE / f"{name}.py").read_text(), name)
        (HERE / f"{name}.py").write_text(stub)
        print(f"wrote lessons/exercises/{name}.py")


if __name__ == "__main__":
    main(sys.argv[1:] or MODULES)
