"""The DVC pipeline run stage by stage, for an orchestrator (the Prefect flow's tasks are thin calls into this).

DVC decides what is stale, runs the stage's command and records dvc.lock, the cache and its run-cache: a stage
DVC has seen with the same deps, params and command (here, or on the default remote) is restored, not run. Each
call is a ``dvc`` subprocess in the repository, so what a flow run leaves behind is exactly what ``dvc repro``
would: ``dvc status`` is clean afterwards.

Concurrency: a pipeline run holds ``.dvc/tmp/emi-pipeline.lock`` from start to end, so a second run on the same
checkout waits (``orchestration.lock_wait_s``) or stops naming the holder. Inside a stage DVC's own repository lock
serializes this with a plain ``dvc repro``; a stage that finds the repository locked waits as well.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml
from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

PIPELINE_LOCK = ".dvc/tmp/emi-pipeline.lock"
STAGE_FLOW = "emi-stage"  # the flow a work pool runs one stage with: its deployment there is emi-stage/<pool>
POOL_POLL_S = 2.0
DVC_LOCKED = "Unable to acquire lock"  # what DVC prints when another dvc process holds the repository
LOCK_POLL_S = 2.0

# how `dvc repro` says what it did with a stage
_UP_TO_DATE = re.compile(r"Stage '([^']+)' didn't change, skipping")
_RESTORED = re.compile(r"Stage '([^']+)' is cached - skipping run")
_PULLED = re.compile(r"Pulling data for stage: '([^']+)'")
_RAN = re.compile(r"Running stage '([^']+)'")


class PipelineError(RuntimeError):
    """A DVC command failed or the checkout is busy (the message says which and what to do)."""


@dataclass
class StageRun:
    """What ``dvc repro`` did with one stage: ``ran`` it, ``restored`` it from the run-cache (or pulled its
    outputs), or found it ``up to date``."""

    stage: str
    outcome: str
    seconds: float
    command: list[str]
    output: list[str] = field(repr=False, default_factory=list)

    def summary(self) -> str:
        what = {"ran": "ran its command", "restored": "restored from DVC's run-cache, command not run",
                "up to date": "up to date, nothing to do"}[self.outcome]
        return f"stage '{self.stage}': {what} ({self.seconds:.1f} s; {' '.join(self.command)})"


def dvc_executable() -> str:
    """The ``dvc`` of this interpreter's environment (a worker's PATH may not hold the virtualenv)."""
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.is_file() else "dvc"


def outcome_of(stage: str, lines: list[str]) -> str:
    text = "\n".join(lines)
    if any(m.group(1) == stage for m in _RAN.finditer(text)):
        return "ran"
    if any(m.group(1) == stage for m in [*_RESTORED.finditer(text), *_PULLED.finditer(text)]):
        return "restored"
    if any(m.group(1) == stage for m in _UP_TO_DATE.finditer(text)):
        return "up to date"
    raise PipelineError(f"could not tell from DVC's output what happened to stage '{stage}':\n" + text[-2000:])


class DvcPipeline:
    """One DVC repository (a git checkout with dvc.yaml) and the commands an orchestrator runs in it."""

    def __init__(self, root: Path | str = ".", lock_wait_s: float = 0.0, logger: logging.Logger | None = None):
        self.root = Path(root).resolve()
        if not (self.root / "dvc.yaml").is_file():
            raise PipelineError(f"{self.root}: no dvc.yaml here; run the pipeline from the repository's root")
        self.lock_wait_s = lock_wait_s
        self.log = logger or log

    # ------------------------------------------------------------------ reading dvc.yaml / dvc.lock
    def _yaml(self, name: str) -> dict:
        path = self.root / name
        return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}

    def stages(self) -> list[str]:
        """The stages in dvc.yaml's order (which is the pipeline's order)."""
        return list(self._yaml("dvc.yaml").get("stages", {}))

    def select(self, stages: list[str] | None) -> list[str]:
        """``stages`` in dvc.yaml's order (all of them when None); an unknown name is an error naming the known."""
        known = self.stages()
        unknown = sorted(set(stages or []) - set(known))
        if unknown:
            raise PipelineError(f"{self.root / 'dvc.yaml'}: no stage {', '.join(unknown)}; stages: {', '.join(known)}")
        return [s for s in known if stages is None or s in stages]

    def deps(self, stage: str) -> list[str]:
        return [d if isinstance(d, str) else next(iter(d)) for d in self._yaml("dvc.yaml")["stages"][stage]["deps"]]

    def source_tree(self) -> str:
        """The git tree of the checkout's HEAD: the code a stage runs with (equal trees, equal DVC stage hashes)."""
        done = subprocess.run(["git", "rev-parse", "HEAD^{tree}"], cwd=self.root, capture_output=True, text=True)
        if done.returncode != 0:
            raise PipelineError(f"{self.root}: not a git checkout with a commit ({done.stderr.strip()})")
        return done.stdout.strip()

    def output_hashes(self) -> dict[str, dict[str, str]]:
        """stage -> {output path: md5} as dvc.lock records them."""
        out: dict[str, dict[str, str]] = {}
        for stage, entry in self._yaml("dvc.lock").get("stages", {}).items():
            out[stage] = {o["path"]: o.get("md5", "") for o in entry.get("outs", [])}
        return out

    # ------------------------------------------------------------------ DVC commands
    def _dvc(self, *args: str, stream: bool = False) -> tuple[int, list[str]]:
        cmd = [dvc_executable(), *args]
        lines: list[str] = []
        with subprocess.Popen(cmd, cwd=self.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              bufsize=1) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                lines.append(line)
                if stream and line.strip():
                    self.log.info("%s", line)
        return proc.returncode, lines

    def _dvc_waiting(self, *args: str, stream: bool = False) -> list[str]:
        """Run ``dvc args``; while another dvc process holds the repository, wait (up to lock_wait_s)."""
        deadline = time.monotonic() + self.lock_wait_s
        announced = False
        while True:
            rc, lines = self._dvc(*args, stream=stream)
            if rc == 0:
                return lines
            locked = any(DVC_LOCKED in line for line in lines)
            if locked and time.monotonic() < deadline:
                if not announced:
                    self.log.warning("%s: the DVC repository is locked by another dvc process (a `dvc repro` or "
                                     "another pipeline run); waiting up to %.0f s", self.root, self.lock_wait_s)
                    announced = True
                time.sleep(LOCK_POLL_S)
                continue
            tail = "\n".join(lines[-40:])
            if locked:
                raise PipelineError(f"{self.root}: `dvc {' '.join(args)}` could not start: another dvc process holds "
                                    f"the repository (waited {self.lock_wait_s:.0f} s, orchestration.lock_wait_s)")
            raise PipelineError(f"`dvc {' '.join(args)}` failed in {self.root} (exit {rc}):\n{tail}")

    def has_remote(self) -> bool:
        rc, lines = self._dvc("config", "core.remote")
        return rc == 0 and any(line.strip() for line in lines)

    def stale(self, stage: str) -> bool:
        """True when DVC would not call ``stage`` up to date (its deps, params, command or outputs changed)."""
        lines = self._dvc_waiting("status", "--json", stage)
        text = "\n".join(line for line in lines if line.strip().startswith(("{", "}", '"', "[", "]", " ")))
        try:
            return bool(json.loads(text or "{}"))
        except ValueError:
            raise PipelineError(f"`dvc status --json {stage}` printed no JSON:\n" + "\n".join(lines[-20:])) from None

    def repro(self, stage: str, pull: bool = False) -> StageRun:
        """``dvc repro --single-item [--pull] stage``. When a dependency is missing from this checkout (a fresh
        one on another worker), the upstream stages are reproduced too, so DVC restores them from the remote."""
        missing = [d for d in self.deps(stage) if not (self.root / d).exists()]
        args = ["repro", *([] if missing else ["--single-item"]), *(["--pull"] if pull else []), stage]
        if missing:
            self.log.info("stage '%s': %s missing here, reproducing its upstream stages too", stage,
                          ", ".join(missing[:3]))
        started = time.perf_counter()
        lines = self._dvc_waiting(*args, stream=True)
        run = StageRun(stage, outcome_of(stage, lines), time.perf_counter() - started, ["dvc", *args], lines)
        self.log.info("%s", run.summary())
        return run

    def push(self, stage: str) -> None:
        """The stage's outputs and the run-cache to the default remote."""
        self._dvc_waiting("push", "--run-cache", stage, stream=True)

    def needs_run(self, stage: str, pull: bool = False) -> bool:
        """True when reproducing ``stage`` would run its command: it is stale and DVC's run-cache (pulled from the
        remote when ``pull``) cannot restore it. Outputs a run-cache entry restores are checked out on the way."""
        if not self.stale(stage):
            return False
        from dvc.stage.cache import RunCacheNotFoundError

        # DVC's Python API resolves paths against the working directory: the flow's already is the checkout
        with contextlib.chdir(self.root), self.repo_lock() as repo:
            target = repo.stage.collect(stage)[0]
            if pull:
                repo.stage_cache.pull(None)
            try:
                repo.stage_cache.restore(target, pull=pull)
            except RunCacheNotFoundError:
                return True
        return False

    @contextlib.contextmanager
    def repo_lock(self) -> Iterator:
        """DVC's own repository lock, held by this process: a `dvc repro` started meanwhile stops with DVC's
        lock message, and so does a stage of another pipeline run (which then waits, see ``_dvc_waiting``)."""
        from dvc.lock import LockError
        from dvc.repo import Repo

        deadline = time.monotonic() + self.lock_wait_s
        repo = Repo(str(self.root))
        try:
            while True:
                try:
                    repo.lock.lock()
                    break
                except LockError:
                    if time.monotonic() >= deadline:
                        raise PipelineError(f"{self.root}: another dvc process holds the repository "
                                            f"(waited {self.lock_wait_s:.0f} s, orchestration.lock_wait_s)") from None
                    time.sleep(LOCK_POLL_S)
            try:
                yield repo
            finally:
                repo.lock.unlock()
        finally:
            repo.close()


def apply_overrides(params_yaml: Path, overrides: list[str]) -> None:
    """``key=value`` overrides written into params.yaml the way ``dvc exp run -S`` writes them (DVC's own code:
    comments and order are kept; a key the file does not hold is an error)."""
    if not overrides:
        return
    from dvc.utils.hydra import apply_overrides as dvc_apply

    try:
        dvc_apply(params_yaml, list(overrides))
    except Exception as exc:  # hydra's grammar and unknown-key errors carry the reason in their message
        raise PipelineError(f"{params_yaml}: cannot apply {overrides}: {exc}") from None


# ----------------------------------------------------------------------------- stages on other work pools
def pool_deployment(pool: str) -> str:
    return f"{STAGE_FLOW}/{pool}"


def check_pools(pools: dict[str, str], stages: list[str], remote: bool) -> None:
    """``orchestration.pools`` names stages of dvc.yaml, and the DVC remote their outputs come back through."""
    unknown = sorted(set(pools) - set(stages))
    if unknown:
        raise PipelineError(f"orchestration.pools: no stage {', '.join(unknown)} in dvc.yaml; stages: "
                            f"{', '.join(stages)}")
    if pools and not remote:
        raise PipelineError(f"orchestration.pools sends {', '.join(f'{s} to {p}' for s, p in pools.items())}, but "
                            "this checkout has no default DVC remote (or orchestration.use_remote is false): a stage "
                            "run by another worker comes back only through one (`dvc remote add -d NAME URL`)")


def run_on_pool(pool: str, stage: str, parameters: dict, start_timeout_s: float,
                logger: logging.Logger | None = None) -> dict:
    """Run ``stage`` by its pool's ``emi-stage/<pool>`` deployment (a subflow run of the calling flow) and wait
    for it. A run no worker of the pool has started within ``start_timeout_s`` is cancelled; a run that does not
    complete is an error naming the pool, the flow run and its final state."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Cancelled

    logger = logger or log
    name = pool_deployment(pool)
    try:
        submitted = run_deployment(name=name, parameters=parameters, timeout=0, flow_run_name=f"{stage}@{pool}")
    except ObjectNotFound:
        raise PipelineError(f"stage '{stage}' goes to work pool '{pool}' (orchestration.pools), but the Prefect "
                            f"server has no deployment {name}: on a worker machine of that pool run "
                            f"`EMI_WORK_POOL={pool} scripts/prefect-local.sh --worker`") from None
    logger.info("stage '%s': sent to work pool '%s' (flow run %s)", stage, pool, submitted.name)
    started = time.monotonic()
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(submitted.id)
            if run.state is not None and run.state.is_final():
                break
            if (run.state is None or run.state.is_scheduled()) and time.monotonic() - started > start_timeout_s:
                client.set_flow_run_state(submitted.id, Cancelled(message="no worker started it"), force=True)
                raise PipelineError(f"stage '{stage}': no worker of work pool '{pool}' started flow run {run.name} "
                                    f"within {start_timeout_s:.0f} s (orchestration.pool_start_timeout_s); is a "
                                    f"worker polling that pool?")
            time.sleep(POOL_POLL_S)
    seconds = time.monotonic() - started
    if not run.state.is_completed():
        raise PipelineError(f"stage '{stage}' on work pool '{pool}': flow run {run.name} ended "
                            f"{run.state.name}: {run.state.message or 'see its logs'}")
    logger.info("stage '%s': work pool '%s' finished it (flow run %s, %.1f s)", stage, pool, run.name, seconds)
    return {"outcome": f"ran on pool {pool}", "seconds": round(seconds, 2), "flow_run": run.name}


# ----------------------------------------------------------------------------- one pipeline run at a time
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
