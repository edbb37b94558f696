"""Shared mechanics: atomic writes, hashing, JSON output, the CPU allocator setting, worker processes that end with
their parent."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


TEMP_MARK = ".tmp"
"""In the name of ``atomic_path``'s temporary files (``.<name>.<random>.tmp<suffix>``)."""


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; it replaces ``path`` only if the block succeeds.

    A reader therefore never sees a half-written file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_MARK + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; finished files get the usual mode
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files ``atomic_path`` left in ``folder`` (not below it) when its process was killed
    mid-write (a kill skips the cleanup); returns them. Run before resuming into a folder whose files all become an
    output, or the leftovers would become part of it."""
    folder = Path(folder)
    stale = sorted(p for p in folder.glob(f".*{TEMP_MARK}*") if p.is_file()) if folder.is_dir() else []
    for p in stale:
        p.unlink()
    return stale


def link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` becomes ``src``'s content: a hard link where the file system allows one, else a copy; atomically
    either way, and a no-op when ``dst`` already is ``src``."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and os.path.samefile(src, dst):
        return
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def finite(value: Any) -> Any:
    """``value`` for a JSON file: numpy scalars as Python numbers, NaN and infinities as None (JSON has neither)."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(data: Any) -> str:
    """Short stable hash of a JSON-able value (params sections, file lists)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def replace_dir(src: Path, dst: Path) -> None:
    """Move a fully built directory into place, removing what was there."""
    dst = Path(dst)
    if dst.is_symlink() or dst.is_file():
        dst.unlink()
    elif dst.exists():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)


# glibc's mallopt parameters (malloc.h) and its largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
_TRIM_THRESHOLD = 1024 * 1024 * 1024
@functools.cache
def keep_freed_memory() -> bool:
    """Keep freed multi-MB buffers in the heap instead of handing them back to the OS.

    CPU inference allocates and frees activations of a few MB in every layer; glibc serves those with fresh
    mmaps (and trims the freed heap), so every layer page-faults its output in again. For the FER CNN that was
    half of a batch's time (28 -> 13 ms per 32 frames; ``emi bench extract``). PyTorch's CPU performance guide
    gets the same with jemalloc/tcmalloc preloaded; this needs no preload. Once per process; a no-op off glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False


_PR_SET_PDEATHSIG = 1  # prctl(2)


def end_with_parent(parent: int) -> None:
    """A process pool's initializer: the worker gets SIGTERM when ``parent`` (the pool's owner) dies.

    A killed ``emi ablate`` or ``emi download`` otherwise leaves its workers running: each finishes its training or
    clip and then the work queued for it, beside the resumed run, for minutes. Linux only (prctl); elsewhere the
    workers still stop at the end of their queued work. Pass ``os.getpid()`` of the process creating the pool: a
    parent that died before this ran is caught by the check of the worker's parent after the call. The signal comes
    when the *thread* that started the worker ends: create the pool in a thread that outlives it (the stages do, in
    their main thread)."""
    import ctypes
    import ctypes.util
    import signal

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux
        return
    if os.getppid() != parent:  # the parent died between the fork and the prctl call
        os._exit(1)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
