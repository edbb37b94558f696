"""One pipeline run per checkout: ``.dvc/tmp/emi-pipeline.lock`` is held from a flow run's start to its end."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from emi.orchestration.dvc import PipelineError

log = logging.getLogger(__name__)

PIPELINE_LOCK = ".dvc/tmp/emi-pipeline.lock"


@contextlib.contextmanager
def pipeline_lock(root: Path | str, wait_s: float, holder: dict[str, str],
                  logger: logging.Logger | None = None, inside: str | None = None) -> Iterator[None]:
    """Exclusive use of the checkout for one pipeline run. A second run waits up to ``wait_s`` seconds, then stops
    with a message naming the run that holds it (``holder``: e.g. the Prefect flow-run id).

    ``inside``: the flow run this one works for. When that run holds the lock (a pooled stage whose worker uses the
    flow's own checkout), the checkout is used without taking the lock: the holder is waiting for this run."""
    logger = logger or log
    path = Path(root).resolve() / PIPELINE_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    info = path.with_suffix(".json")
    if inside is not None and _holder_fields(info).get("flow run") == inside:
        logger.info("%s: held by flow run %s, which this run works for; using it", path.parent.parent.parent, inside)
        yield
        return
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.warning("%s: another pipeline run holds this checkout (%s); waiting up to %.0f s",
                       path.parent.parent.parent, _holder(info), wait_s)
        try:
            lock.acquire(timeout=wait_s)
        except Timeout:
            raise PipelineError(f"{path.parent.parent.parent}: another pipeline run holds this checkout "
                                f"({_holder(info)}); waited {wait_s:.0f} s (orchestration.lock_wait_s). Run in "
                                f"another clone, or wait for it to finish.") from None
    try:
        info.write_text(json.dumps({**holder, "pid": os.getpid(), "host": socket.gethostname(),
                                    "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}))
        yield
    finally:
        info.unlink(missing_ok=True)
        lock.release()


def _holder_fields(info: Path) -> dict:
    try:
        return json.loads(info.read_text())
    except (OSError, ValueError):
        return {}


def _holder(info: Path) -> str:
    return ", ".join(f"{k} {v}" for k, v in _holder_fields(info).items()) or "holder unknown"
