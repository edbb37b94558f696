"""Shared mechanics: atomic writes, hashing, fingerprints, the CPU allocator setting."""

import hashlib
import platform

import pytest

from emi.utils import (atomic_path, fingerprint, finite, keep_freed_memory, remove_temporaries, sha256_file, write_json,
                       write_text)


def test_atomic_write_leaves_no_temp_file_and_the_old_content_on_exception(tmp_path):
    target = tmp_path / "out" / "table.csv"
    write_text(target, "old\n")
    with pytest.raises(RuntimeError, match="killed"), atomic_path(target) as tmp:
        tmp.write_text("half written")
        assert tmp.parent == target.parent and tmp != target
        raise RuntimeError("killed")
    assert target.read_text() == "old\n", "a failed write must leave the previous file intact"
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.csv"], "temporary file left behind"


def test_a_killed_atomic_write_leaves_a_temporary_that_remove_temporaries_deletes(tmp_path):
    import subprocess
    import sys

    write_text(tmp_path / "clip.mp4", "done")
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").write_text("a user's file")
    killed = ("import os, sys; from emi.utils import atomic_path\n"
              "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_text('half')\n    os._exit(9)")
    assert subprocess.run([sys.executable, "-c", killed, str(tmp_path / "next.mp4")]).returncode == 9
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".next.mp4.")]
    assert len(left) == 1  # a kill skips the cleanup
    assert [p.name for p in remove_temporaries(tmp_path)] == left
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "clip.mp4", "sub"]
    assert remove_temporaries(tmp_path / "missing") == []


def test_atomic_write_replaces_the_file_with_the_usual_mode(tmp_path):
    target = write_json(tmp_path / "a" / "x.json", {"k": 1})
    assert target.read_text() == '{\n  "k": 1\n}\n'
    assert target.stat().st_mode & 0o777 != 0o600, "finished files must not keep mkstemp's private mode"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.json"]


def test_sha256_and_fingerprint_are_stable(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(b"abc" * 1000)
    assert sha256_file(f, chunk=7) == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2}) and len(fingerprint(1)) == 16


def test_allocator_tuning_applies_on_glibc_and_is_idempotent():
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    # the cached wrapper answers once per process; the function itself must succeed on every call
    assert keep_freed_memory.__wrapped__() is True
    assert keep_freed_memory.__wrapped__() is True
    assert keep_freed_memory() is True and keep_freed_memory() is True


def test_finite_makes_json_numbers_and_null_for_nan():
    import numpy as np

    assert finite(np.float64(0.25)) == 0.25 and type(finite(np.float64(0.25))) is float
    assert finite(np.int64(3)) == 3 and finite(np.bool_(True)) is True
    assert finite(float("nan")) is None and finite(np.float32("inf")) is None
    assert finite("text") == "text" and finite(None) is None


POOL_OWNER = """
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from emi.utils import end_with_parent
init = dict(initializer=end_with_parent, initargs=(os.getpid(),)) if sys.argv[1] == "1" else {}
pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), **init)
pool.submit(exec, "import os, time; print(os.getpid(), flush=True); time.sleep(60)")  # a long training, under way
time.sleep(60)                                                                           # once it prints its pid
"""


def _alive(pid: int) -> bool:
    from pathlib import Path

    try:  # a zombie (state Z) waits for init to reap it: it no longer runs
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.slow  # two spawned pools, owners killed (~4 s)
@pytest.mark.skipif(platform.system() != "Linux", reason="prctl(PR_SET_PDEATHSIG) is Linux's")
def test_a_pools_workers_end_when_its_owner_is_killed():
    """SIGKILL on the owner of a process pool: without ``end_with_parent`` its busy worker runs on (an orphan
    beside the resumed run); with it the worker ends within seconds."""
    import os
    import signal
    import subprocess
    import sys
    import time

    for guarded in (True, False):
        owner = subprocess.Popen([sys.executable, "-c", POOL_OWNER, str(int(guarded))], stdout=subprocess.PIPE,
                                 text=True)
        worker = int(owner.stdout.readline())
        owner.kill()
        owner.wait()
        deadline = time.monotonic() + (10 if guarded else 2)  # the control: alive 2 s after its owner
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            assert _alive(worker) != guarded, "guarded: the worker outlived its owner" if guarded else "control"
        finally:
            if _alive(worker):
                os.kill(worker, signal.SIGKILL)
