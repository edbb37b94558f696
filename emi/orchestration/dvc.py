"""The DVC pipeline stage by stage, for an orchestrator (the Prefect flow's tasks are thin calls into this).

DVC decides what is stale, runs the stage's command and records dvc.lock, the cache and its run-cache: a stage
DVC has seen with the same deps, params and command (here, or on the default remote) is restored, not run. Each
``dvc`` call is a subprocess in the repository, so what a flow run leaves behind is exactly what ``dvc repro``
would: ``dvc status`` is clean afterwards. What DVC did is read from machine-readable sources, never its log text:
``dvc status --json`` before (stale or not), the run-cache (``restorable``) and ``dvc.lock`` after (the outputs'
hashes). DVC's Python internals are used in two functions only, each with a test that fails when DVC changes them:
``restorable`` (the run-cache) and ``repo_lock`` (DVC's repository lock).

Inside a stage DVC's own repository lock serializes a flow with a plain ``dvc repro``; a stage that finds the
repository locked waits (``orchestration.lock_wait_s``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

DVC_LOCKED = "Unable to acquire lock"  # DVC's message when another dvc process holds the repository
LOCK_POLL_S = 2.0


class PipelineError(RuntimeError):
    """A DVC command failed or the checkout is busy (the message says which and what to do)."""


@dataclass
class StageOutcome:
    """What reproducing one stage did: ``ran`` its command, ``restored`` it from DVC's run-cache, or found it ``up to
    date``."""

    stage: str
    outcome: str
    seconds: float
    command: list[str]

    def summary(self) -> str:
        what = {"ran": "ran its command", "restored": "restored from DVC's run-cache, command not run",
                "up to date": "up to date, nothing to do"}[self.outcome]
        return f"stage '{self.stage}': {what} ({self.seconds:.1f} s; {' '.join(self.command)})"


def dvc_executable() -> str:
    """The ``dvc`` of this interpreter's environment (a worker's PATH may not hold the virtualenv)."""
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.is_file() else "dvc"


class DvcPipeline:
    """One DVC repository (a git checkout with dvc.yaml) and the commands an orchestrator runs in it."""

    def __init__(self, root: Path | str = ".", lock_wait_s: float = 0.0, logger: logging.Logger | None = None):
        self.root = Path(root).resolve()
        if not (self.root / "dvc.yaml").is_file():
            raise PipelineError(f"{self.root}: no dvc.yaml here; run the pipeline from the repository's root")
        self.lock_wait_s = lock_wait_s
        self.log = logger or log

    # ------------------------------------------------------------------ dvc.yaml / dvc.lock
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

    def _paths(self, stage: str, *keys: str) -> list[str]:
        entry = self._yaml("dvc.yaml")["stages"][stage]
        return [d if isinstance(d, str) else next(iter(d)) for key in keys for d in entry.get(key, [])]

    def deps(self, stage: str) -> list[str]:
        return self._paths(stage, "deps")

    def producers(self, paths: list[str]) -> list[str]:
        """The stages (in pipeline order) whose outputs hold any of ``paths``."""
        def holds(out: str, path: str) -> bool:
            return path == out or path.startswith(out.rstrip("/") + "/")

        return [s for s in self.stages() if any(holds(o, p) for o in self._paths(s, "outs", "metrics", "plots")
                                                 for p in paths)]

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

    # ------------------------------------------------------------------ dvc commands
    def _dvc(self, *args: str, stream: bool = False) -> tuple[int, list[str]]:
        lines: list[str] = []
        with subprocess.Popen([dvc_executable(), *args], cwd=self.root, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                if stream and line.strip():
                    self.log.info("%s", line.rstrip("\n"))
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
            if locked:
                raise PipelineError(f"{self.root}: `dvc {' '.join(args)}` could not start: another dvc process holds "
                                    f"the repository (waited {self.lock_wait_s:.0f} s, orchestration.lock_wait_s)")
            tail = "\n".join(lines[-40:])
            raise PipelineError(f"`dvc {' '.join(args)}` failed in {self.root} (exit {rc}):\n{tail}")

    def has_remote(self) -> bool:
        rc, lines = self._dvc("config", "core.remote")
        return rc == 0 and any(line.strip() for line in lines)

    def stale(self, stage: str) -> bool:
        """True when DVC would not call ``stage`` up to date (``dvc status --json``: its deps, params, command or
        outputs changed)."""
        lines = self._dvc_waiting("status", "--json", stage)
        text = "\n".join(line for line in lines if line.strip().startswith(("{", "}", '"', "[", "]", " ")))
        try:
            return bool(json.loads(text or "{}"))
        except ValueError:
            raise PipelineError(f"`dvc status --json {stage}` printed no JSON:\n" + "\n".join(lines[-20:])) from None

    def restorable(self, stage: str, pull: bool = False) -> bool:
        """Whether DVC's run-cache (with ``pull``, the default remote's too) holds this state of ``stage``, so that
        reproducing it restores its outputs instead of running its command; the outputs it restores are checked out
        on the way. A DVC internal (``repo.stage_cache.restore``): tests/orchestration/test_dvc.py fails when DVC
        changes it."""
        from dvc.stage.cache import RunCacheNotFoundError

        # DVC's Python API resolves paths against the working directory
        with contextlib.chdir(self.root), self.repo_lock() as repo:
            target = repo.stage.collect(stage)[0]
            if pull:
                repo.stage_cache.pull(None)
            try:
                repo.stage_cache.restore(target, pull=pull)
            except RunCacheNotFoundError:
                return False
        return True

    def repro(self, stage: str, pull: bool = False) -> StageOutcome:
        """``dvc repro --single-item [--pull] stage`` when it is stale. A dependency missing from this checkout (a
        fresh one on another worker) is first reproduced by the stage that makes it, so DVC restores it."""
        started = time.perf_counter()
        missing = [d for d in self.deps(stage) if not (self.root / d).exists()]
        for upstream in self.producers(missing):
            self.log.info("stage '%s': %s missing here; reproducing stage '%s' first", stage, ", ".join(missing[:3]),
                          upstream)
            self.repro(upstream, pull)
        args = ["repro", "--single-item", *(["--pull"] if pull else []), stage]
        if not self.stale(stage):
            run = StageOutcome(stage, "up to date", time.perf_counter() - started, ["dvc", "status", stage])
        else:
            restored = self.restorable(stage, pull)
            self._dvc_waiting(*args, stream=True)
            run = StageOutcome(stage, "restored" if restored else "ran", time.perf_counter() - started,
                               ["dvc", *args])
        self.log.info("%s", run.summary())
        return run

    def push(self, stage: str) -> None:
        """The stage's outputs and the run-cache to the default remote."""
        self._dvc_waiting("push", "--run-cache", stage, stream=True)

    def needs_run(self, stage: str, pull: bool = False) -> bool:
        """True when reproducing ``stage`` would run its command: stale, and not restorable from the run-cache."""
        return self.stale(stage) and not self.restorable(stage, pull)

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
