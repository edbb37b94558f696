"""``emi download``: get a dataset into the Hume-Vidmimic2 layout under ``data/raw`` and validate it.

Sources: ``synthetic`` (the embedded generator), ``local`` (a user's copy, never modified) and ``url``
(an archive with a sha256, downloaded resumably). Every source ends in the same folder layout and the
same Great Expectations checkpoint.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from emi.config import Params
from emi.contracts.raw import validate_raw
from emi.contracts.report import ValidationReport, write_report
from emi.data.dataset import GENERATOR_DIR
from emi.data.sources import from_local, from_url, test_split
from emi.synth.generate import generate
from emi.tracking.runs import tracked
from emi.utils import replace_dir, write_json

SOURCE_FILE = "_source.json"  # provenance of data/raw: which source, path/url, checksum


@dataclass
class DownloadResult:
    raw_dir: Path
    source: str
    report: ValidationReport
    seconds: float
    rendered_now: int | None = None  # synthetic source: clips rendered by this run (the rest resumed)

    def tracking(self) -> dict:
        run = {} if self.rendered_now is None else {"rendered_now": self.rendered_now}
        return {"metrics": {"rows": self.report.n_rows, "bad_rows": self.report.n_bad_rows,
                            "error_fraction": self.report.error_fraction, "seconds": self.seconds, **run},
                "artifacts": [self.report.json_path, self.report.md_path]}


@tracked("download")
def download(params: Params, out_dir: Path, report_dir: Path | None, show_progress: bool = True) -> DownloadResult:
    """Fetch or generate the dataset into ``out_dir``, then validate it (raises on a failed contract)."""
    start = time.perf_counter()
    cfg = params.download
    out_dir = Path(out_dir)
    staging = out_dir.with_name(out_dir.name + ".partial")
    rendered_now = None
    if cfg.source == "synthetic":
        if not staging.exists() and (Path(out_dir) / GENERATOR_DIR / "clips").is_dir():
            # a finished dataset is resumed like a partial one: generate keeps every clip rendered for the same params
            # and seed (and renders all again for others); run by hand or by a bench, not by DVC, which removes
            # data/raw before the stage runs
            os.replace(out_dir, staging)
        summary = generate(cfg.synthetic, params.seed, staging, cfg.workers, show_progress=show_progress)
        # how many clips this run rendered is a fact of the run, not of the data: it goes to the tracking run, and
        # _source.json (inside the DVC output) stays the same whether the clips were rendered now or resumed
        rendered_now = summary.pop("rendered_now")
        provenance = {"source": "synthetic", "seed": params.seed, **summary}
    elif cfg.source == "local":
        provenance = from_local(cfg, staging)
    else:
        provenance = from_url(cfg, staging, show_progress)
    provenance["test"] = test_split(staging, cfg.test, cfg.local.mode)
    write_json(staging / SOURCE_FILE, provenance)
    replace_dir(staging, out_dir)

    report = validate_raw(out_dir, params.data, report_dir=None)
    report.facts["source"] = provenance
    report.facts["test_clips"] = provenance["test"]["description"]
    report.facts["size_on_disk_mb"] = round(_du(out_dir) / 1e6, 2)
    if report_dir is not None:
        write_report(report, Path(report_dir))
    report.raise_if_failed()
    return DownloadResult(out_dir, cfg.source, report, time.perf_counter() - start, rendered_now)


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file() and not p.is_symlink())


