"""Atomic file writes: a run killed half-way never leaves a file that looks complete.

Neutral helper (standard library only) shared by every layer, like :mod:`synflow._parallel`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text", "split_ext"]


def split_ext(fname: str | os.PathLike) -> tuple[str, str]:
    """``os.path.splitext`` that keeps double extensions: ``("dir/sub-01_dwi", ".nii.gz")``.

    The one ``split_ext`` in synflow (``synflow.io.image`` and ``synflow.interfaces.bids``
    re-export it).  The root keeps the directory part, as ``os.path.splitext``; pass
    ``Path(fname).name`` for the bare stem.  ``.nii.gz`` and ``.tar.gz`` are matched
    case-insensitively and returned as spelled in ``fname``.
    """
    name = os.fspath(fname)
    low = name.lower()
    for ext in (".nii.gz", ".tar.gz"):
        if low.endswith(ext):
            return name[: -len(ext)], name[-len(ext):]
    root, ext = os.path.splitext(name)
    return root, ext


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (thread-safe)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(fname: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``fname``; move it onto ``fname`` when the block succeeds.

    The temporary file lives in the destination directory (so ``os.replace`` is atomic on POSIX
    and Windows), starts with ``.`` (hidden, never matches a BIDS pattern) and keeps the final
    extension (``.nii.gz`` stays gzipped).  Parent directories are created.  The file gets the
    permissions an ordinary ``open()`` would give (``0o666 & ~umask``), not ``mkstemp``'s 0600,
    so colleagues sharing the output folder can read it.  If the block raises, the temporary
    file is removed and ``fname`` is left untouched.

    Example::

        with atomic_path("out/sub-01_desc-b0_dwiref.nii.gz") as tmp:
            nib.save(img, tmp)
    """
    dest = Path(fname)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _, ext = split_ext(dest.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".partial{ext}", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, dest)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_text(fname: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``fname`` through :func:`atomic_path` (flushed and fsync-ed first)."""
    with atomic_path(fname) as tmp:
        with open(tmp, "w", encoding=encoding) as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(fname)
