"""Where a dataset comes from, brought into a staging folder in the Hume-Vidmimic2 layout: a local copy (copied or
symlinked; the source is only read), an archive (downloaded resumably, checked, unpacked safely), and which clips
are the test set. The synthetic source is ``emi.synth``."""

from __future__ import annotations

import os
import shutil
import tarfile
import time
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import requests
from rich.progress import Progress

from emi.config import DownloadParams, TestClipsParams
from emi.data.dataset import (CLIP_DIR, CLIP_SUFFIX, FACE_IMAGES_DIR, GENERATOR_DIR, SPLITS, DatasetError,
                              split_path, unlisted_ids)
from emi.utils import sha256_file

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """The dataset cannot be brought in as configured (the message says what to set or fix)."""


# ----------------------------------------------------------------------------- local
def find_dataset_root(folder: Path) -> Path:
    """The folder (itself or one level down) holding ``train_split.csv`` and ``raw/``."""
    candidates = [folder, *sorted(p for p in folder.iterdir() if p.is_dir())] if folder.is_dir() else []
    for c in candidates:
        if (c / "train_split.csv").is_file() and (c / "raw").is_dir():
            return c
    raise DownloadError(
        f"{folder}: not a Hume-Vidmimic2 folder: expected train_split.csv, valid_split.csv and raw/<id>.mp4 "
        "(at the top or one folder down)"
    )


def _link_tree(root: Path, staging: Path, mode: str) -> int:
    """Bring ``root``'s dataset files into ``staging``; the source is only read."""
    if staging.exists():
        shutil.rmtree(staging)
    (staging / "raw").mkdir(parents=True)
    for split in SPLITS:
        if (root / f"{split}_split.csv").is_file():
            shutil.copy2(root / f"{split}_split.csv", staging / f"{split}_split.csv")
    n = 0
    for clip in sorted((root / "raw").iterdir()):
        if not clip.is_file():
            continue
        target = staging / "raw" / clip.name
        if mode == "symlink":
            target.symlink_to(clip.resolve())
        else:
            shutil.copy2(clip, target)
        n += 1
    if (root / GENERATOR_DIR).is_dir():  # a generated dataset keeps its ground truth for the ceiling
        shutil.copytree(root / GENERATOR_DIR, staging / GENERATOR_DIR)
    if (root / FACE_IMAGES_DIR).is_dir():  # the organisers' face crops (extract.visual_source: face_images)
        if mode == "symlink":
            (staging / FACE_IMAGES_DIR).symlink_to((root / FACE_IMAGES_DIR).resolve())
        else:
            shutil.copytree(root / FACE_IMAGES_DIR, staging / FACE_IMAGES_DIR)
    return n


# ----------------------------------------------------------------------------- the test split
def test_split(staging: Path, cfg: TestClipsParams, mode: str) -> dict:
    """Settle which clips are the test set and write them as ``test_split.csv`` (ids only when unlabelled), so
    every later stage reads one split file per split. Returns what was done, for the provenance and the report."""
    path = split_path(staging, "test")
    has_split = path.is_file()
    clips = cfg.clips
    if clips == "auto":
        clips = "split" if has_split else "unlisted"
    if clips == "split":
        if not has_split:
            raise DownloadError(f"download.test.clips is 'split' but the dataset has no {path.name}")
        return {"clips": "split", "description": f"{path.name} as shipped"}
    if clips == "none":
        if has_split:
            path.unlink()
        return {"clips": "none", "description": "none (download.test.clips: none)"}
    if has_split:
        raise DownloadError(f"download.test.clips is {clips!r} but the dataset ships a {path.name}: set "
                            "download.test.clips to 'split' (or 'auto') to use it")
    if clips == "folder":
        ids = _bring_test_folder(Path(cfg.folder).expanduser(), staging, mode)
        description = f"test (unlabelled): {len(ids)} clip(s) from {cfg.folder}"
    else:
        try:
            ids = unlisted_ids(staging)
        except DatasetError as exc:
            raise DownloadError(str(exc)) from None
        description = f"test (unlabelled): {len(ids)} clip(s) in raw/ that no split file lists"
    if ids:
        path.write_text("Filename\n" + "".join(f"{i}\n" for i in ids), encoding="utf-8")
    else:
        description = "none: no unlisted clip in raw/" if clips == "unlisted" else description
    return {"clips": clips, "n": len(ids), "description": description}


def _bring_test_folder(folder: Path, staging: Path, mode: str) -> list[str]:
    if not folder.is_dir():
        raise DownloadError(f"download.test.folder {folder} is not a folder")
    videos = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(CLIP_SUFFIX))
    if not videos:
        raise DownloadError(f"download.test.folder {folder}: no {CLIP_SUFFIX} file in it")
    ids = []
    for video in videos:
        target = staging / CLIP_DIR / video.name
        if target.exists():
            raise DownloadError(f"download.test.folder: {video} has the id of a clip already in the dataset "
                                f"({CLIP_DIR}/{video.name})")
        if mode == "symlink":
            target.symlink_to(video.resolve())
        else:
            shutil.copy2(video, target)
        ids.append(video.stem)
    return ids


def from_local(cfg: DownloadParams, staging: Path) -> dict:
    if cfg.local.path is None:
        raise DownloadError("download.source is 'local' but download.local.path is not set in params.yaml")
    source = Path(cfg.local.path).expanduser()
    if not source.exists():
        raise DownloadError(f"download.local.path {source} does not exist")
    root = find_dataset_root(source)
    n = _link_tree(root, staging, cfg.local.mode)
    return {"source": "local", "path": str(root.resolve()), "mode": cfg.local.mode, "files": n}


# ----------------------------------------------------------------------------- url
def fetch_archive(url: str, dest: Path, sha256: str, timeout: float, retries: int, show_progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` resuming a ``.part`` file; verify the sha256; return ``dest``."""
    dest = Path(dest)
    if dest.is_file() and sha256_file(dest) == sha256.lower():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    scheme = urllib.parse.urlparse(url).scheme
    for attempt in range(retries + 1):
        try:
            if scheme == "file":
                shutil.copyfile(urllib.request.url2pathname(urllib.parse.urlparse(url).path), part)
            elif scheme in ("http", "https"):
                _http_resume(url, part, timeout, show_progress)
            else:
                raise DownloadError(f"unsupported URL scheme {scheme!r} in {url} (use http, https or file)")
            break
        except (requests.RequestException, OSError) as exc:
            if attempt == retries:
                raise DownloadError(f"download of {url} failed after {retries + 1} attempts: {exc}") from exc
            time.sleep(min(2**attempt, 30))
    digest = sha256_file(part)
    if digest != sha256.lower():
        part.unlink()
        raise DownloadError(f"checksum mismatch for {url}: expected sha256 {sha256.lower()}, got {digest}")
    os.replace(part, dest)
    return dest


def _http_resume(url: str, part: Path, timeout: float, show_progress: bool) -> None:
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as resp:
        if resp.status_code == 416:  # already complete
            return
        resp.raise_for_status()
        if have and resp.status_code != 206:  # server ignored the range: start over
            have = 0
        total = int(resp.headers.get("Content-Length", 0)) + have
        with open(part, "ab" if have else "wb") as fh, Progress(disable=not show_progress) as progress:
            task = progress.add_task(f"downloading {Path(urllib.parse.urlparse(url).path).name}",
                                     total=total or None, completed=have)
            for block in resp.iter_content(CHUNK):
                fh.write(block)
                progress.advance(task, len(block))


def extract_archive(archive: Path, into: Path) -> None:
    if into.exists():
        shutil.rmtree(into)
    into.mkdir(parents=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if Path(member).is_absolute() or ".." in Path(member).parts:
                    raise DownloadError(f"{archive}: unsafe path {member!r} in archive")
            zf.extractall(into)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            tf.extractall(into, filter="data")  # refuses absolute paths, '..', device files
    else:
        raise DownloadError(f"{archive}: not a zip or tar archive")


def from_url(cfg: DownloadParams, staging: Path, show_progress: bool) -> dict:
    if not cfg.url.url:
        raise DownloadError("download.source is 'url' but download.url.url is not set in params.yaml")
    if not cfg.url.sha256:
        raise DownloadError("download.url.sha256 is required with a URL source (the archive is verified)")
    name = Path(urllib.parse.urlparse(cfg.url.url).path).name or "dataset-archive"
    archive = fetch_archive(cfg.url.url, Path(cfg.url.cache_dir) / name, cfg.url.sha256, cfg.url.timeout_s,
                    cfg.url.retries, show_progress)
    unpacked = staging.with_name(staging.name + ".unpacked")
    extract_archive(archive, unpacked)
    try:
        root = find_dataset_root(unpacked)
        if staging.exists():
            shutil.rmtree(staging)
        os.replace(root, staging)
    finally:
        shutil.rmtree(unpacked, ignore_errors=True)
    return {"source": "url", "url": cfg.url.url, "sha256": cfg.url.sha256.lower(), "archive": str(archive)}
