"""Writing a file so that nobody ever sees half of it.

``atomic_write(path, write)`` lets ``write`` fill a temporary file beside ``path`` and then renames
it onto ``path`` (``os.replace``, atomic on one file system): a reader, or a run interrupted with
Ctrl-C, finds the old file or the whole new one. Every file the project writes goes through it:
checkpoints, metrics, predictions, exported models, the generated data.

``tempfile.mkstemp`` creates its file readable by its owner only (mode 0600); the file is given the
mode an ordinary ``open(path, "w")`` would have (0666 less the umask, usually 0644) before it
replaces ``path``, so checkpoints and results stay readable by the people they are shared with.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def umask() -> int:
    """The process's file-creation mask (reading it means setting it, so it is set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path, write) -> Path:
    """``write(temporary_path)``, then rename onto ``path``: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, 0o666 & ~umask())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def write_json(path, record: dict) -> Path:
    """``record`` as indented JSON, written atomically."""
    return atomic_write(path, lambda temporary: Path(temporary).write_text(json.dumps(record, indent=2) + "\n"))
