"""`emi bench scale`: generated datasets of growing size through every stage, each stage its own process as DVC
runs it: wall time and peak RSS per stage, growth, a linear extrapolation."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emi.config import Params


@dataclass
class StageRun:
    clips: int
    stage: str
    seconds: float
    peak_rss_mb: float
    gpu_busy: float | None = None  # mean share of samples the GPU was busy (nvidia-smi's utilization.gpu)
    peak_gpu_mb: float | None = None  # most GPU memory in use while the stage ran
    disk_mb: float | None = None  # what the size's folders hold after the stage


def device_name() -> str:
    """The GPU the stages can use (torch's name for device 0), or ``cpu``."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def gpu_samples(text: str) -> tuple[float | None, float | None]:
    """Busy share and peak memory (MB) from ``nvidia-smi --query-gpu=utilization.gpu,memory.used
    --format=csv,noheader,nounits`` lines; None, None without a sample."""
    rows = []
    for line in text.splitlines():
        try:
            util, mem = (float(x) for x in line.split(","))
        except ValueError:
            continue
        rows.append((util, mem))
    if not rows:
        return None, None
    return round(float(np.mean([u for u, _ in rows])) / 100, 3), max(m for _, m in rows)


class GpuWatch:
    """``nvidia-smi`` polled every ``interval_ms`` while the block runs (nothing where there is no nvidia-smi):
    ``busy`` and ``peak_mb`` afterwards."""

    def __init__(self, interval_ms: int = 200):
        self.interval_ms, self.busy, self.peak_mb = interval_ms, None, None

    def __enter__(self) -> GpuWatch:
        import shutil
        import subprocess
        import tempfile

        exe = shutil.which("nvidia-smi")
        self._proc = self._out = None
        if exe:
            self._out = tempfile.TemporaryFile(mode="w+")
            self._proc = subprocess.Popen([exe, "--query-gpu=utilization.gpu,memory.used",
                                           "--format=csv,noheader,nounits", "-lms", str(self.interval_ms)],
                                          stdout=self._out, stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        self._proc.wait()
        self._out.seek(0)
        self.busy, self.peak_mb = gpu_samples(self._out.read())
        self._out.close()


def folder_mb(*folders: Path) -> float:
    """Bytes under ``folders`` (files, not following links), in MB."""
    import os

    total = 0
    for folder in folders:
        for dirpath, _, files in os.walk(folder):
            total += sum(os.lstat(os.path.join(dirpath, f)).st_size for f in files)
    return round(total / 2**20, 1)


def stage_commands(dvc_yaml: Path, stages: tuple[str, ...] | None = None) -> dict[str, list[str]]:
    """Each stage's command as dvc.yaml runs it (the one place the commands are written); every stage, in the
    pipeline's order, when ``stages`` is None."""
    import shlex

    import yaml

    declared = yaml.safe_load(Path(dvc_yaml).read_text())["stages"]
    stages = tuple(declared) if stages is None else stages
    missing = [s for s in stages if s not in declared]
    if missing:
        raise ValueError(f"{dvc_yaml}: no stage {', '.join(missing)}")
    return {s: shlex.split(" ".join(declared[s]["cmd"].split())) for s in stages}


# A small interpreter between us and the measured command: a child's peak RSS (wait4's ru_maxrss) includes the
# memory of the process it was forked from at exec time, so a stage forked straight from this (torch-laden) process
# would report at least our size. The launcher is forked fresh, stays tiny and reports its one child's peak.
_LAUNCHER = """
import json, resource, subprocess, sys
try:
    code = subprocess.call(sys.argv[2:])
except OSError as exc:
    print(f"cannot run {sys.argv[2]}: {exc}", file=sys.stderr)
    code = 127
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
open(sys.argv[1], "w").write(json.dumps({"code": code, "peak_kib": peak}))
"""


def run_measured(argv: list[str], cwd: Path, env: dict[str, str], log_path: Path) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (MB) of that process alone and its exit status; its output goes to ``log_path``."""
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "rusage.json"
        start = time.perf_counter()
        with open(log_path, "w") as log:
            subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, str(report), *argv], cwd=cwd, env=env or None,
                           stdout=log, stderr=subprocess.STDOUT, check=False)
        seconds = time.perf_counter() - start
        measured = json.loads(report.read_text())
    return seconds, measured["peak_kib"] / 1024, int(measured["code"])


def sized_params(params: Params, n: int, store: str, scale_people: bool = False) -> Params:
    """``params`` generating ``n`` clips (``scale_people``: persons in proportion, so clips per person stay the
    profile's) and tracking into ``store``."""
    synthetic = params.download.synthetic
    update: dict = {"n_clips": n}
    if scale_people:
        people = max(3, round(synthetic.people.count * n / synthetic.n_clips))  # splits are by person: 3 at least
        update["people"] = synthetic.people.model_copy(update={"count": people})
    return params.model_copy(update={
        "download": params.download.model_copy(update={"source": "synthetic",
                                                       "synthetic": synthetic.model_copy(update=update)}),
        "tracking": params.tracking.model_copy(update={"uri": store})})


def run_stages(sized: Params, n: int, root: Path, commands: dict[str, list[str]], echo=print) -> list[StageRun]:
    """The ``commands`` (``stage_commands``) on the ``n``-clip dataset in ``root`` with its own params.yaml
    (``sized``) and MLflow store, each its own measured process, as DVC runs them."""
    import os
    import sys

    from emi.params_yaml import write

    emi = str(Path(sys.executable).parent / "emi")
    root.mkdir(parents=True, exist_ok=True)
    write(sized, root / "params.yaml")
    env = {**os.environ, "MLFLOW_TRACKING_URI": sized.tracking.uri}
    env.pop("EMI_MLFLOW_PARENT_RUN_ID", None)
    runs = []
    for stage, argv in commands.items():
        with GpuWatch() as gpu:
            seconds, rss, code = run_measured([emi, *argv[1:]], root, env, root / f"{stage}.log")
        if code != 0:
            raise RuntimeError(f"{stage} failed on {n} clips (exit {code}); see {root / f'{stage}.log'}")
        runs.append(StageRun(n, stage, seconds, rss, gpu.busy, gpu.peak_mb,
                             folder_mb(root / "data", root / "models", root / "reports")))
        busy = "" if gpu.busy is None else f"  GPU busy {100 * gpu.busy:.0f} %, {gpu.peak_mb:,.0f} MB"
        echo(f"{n:>6} clips  {stage:<10} {seconds:8.1f} s  {rss:8.0f} MB{busy}")
    return runs


def bench_scale(params: Params, sizes: list[int], work: Path, dvc_yaml: Path,
                stages: tuple[str, ...] | None = None, echo=print) -> list[StageRun]:
    """Generate ``n`` clips for each size and run every stage (or ``stages``) on them as its own process, as DVC
    would: wall time and peak RSS per stage. Each size runs in ``work/n<size>`` with its own params.yaml and MLflow
    store."""
    commands = stage_commands(dvc_yaml, stages)
    runs: list[StageRun] = []
    for n in sizes:
        root = Path(work) / f"n{n}"
        runs += run_stages(sized_params(params, n, f"sqlite:///{(root / 'mlflow.db').resolve()}"), n, root,
                           commands, echo)
    return runs


def scale_summary(runs: list[StageRun], target_clips: int) -> list[str]:
    """Per stage: time and RSS at each size, time per clip, growth of time and RSS between the two largest sizes,
    and a linear fit (a + b * clips) of both extrapolated to ``target_clips``."""
    sizes = sorted({r.clips for r in runs})
    stages = list(dict.fromkeys(r.stage for r in runs))
    by = {(r.stage, r.clips): r for r in runs}
    head = (["stage"] + [f"{n} clips: s / MB" for n in sizes] +
            ([f"time x ({sizes[-2]}->{sizes[-1]})", f"RSS growth ({sizes[-2]}->{sizes[-1]})"] if len(sizes) > 1
             else []) + [f"fit at {target_clips}: s / MB"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for stage in stages:
        cells = [stage] + [f"{by[(stage, n)].seconds:.1f} / {by[(stage, n)].peak_rss_mb:.0f}" for n in sizes]
        if len(sizes) > 1:
            a, b = by[(stage, sizes[-2])], by[(stage, sizes[-1])]
            cells += [f"{b.seconds / a.seconds:.2f} (clips x{sizes[-1] / sizes[-2]:.2f})",
                      f"{100 * (b.peak_rss_mb / a.peak_rss_mb - 1):+.0f} %"]
        x = np.array(sizes, float)
        t = np.array([by[(stage, n)].seconds for n in sizes])
        m = np.array([by[(stage, n)].peak_rss_mb for n in sizes])
        if len(sizes) > 1:
            tb, ta = np.polyfit(x, t, 1)
            mb, ma = np.polyfit(x, m, 1)
            cells.append(f"{ta + tb * target_clips:.0f} / {ma + mb * target_clips:.0f}")
        else:
            cells.append("n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return lines
