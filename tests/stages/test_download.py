"""``emi download``: local copy or links, URL archives (resume, checksum), validation, the CLI."""

import hashlib
import http.server
import os
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from emi.config import load_params
from emi.contracts.report import DataValidationError
from emi.data.sources import DownloadError, fetch_archive
from emi.stages.download import download
from tests.conftest import EMI


def tree_digest(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
            for p in sorted(root.rglob("*")) if p.is_file()}


def params_for(**overrides):
    return load_params(None, [f"{k}={v}" for k, v in overrides.items()], profile="tiny")


def shipped_copy(tiny_dataset: Path, dst: Path) -> list[str]:
    """The dataset as Hume-Vidmimic2 ships: train + valid split files, the test clips in raw/ without a row."""
    import shutil

    shutil.copytree(tiny_dataset, dst, ignore=shutil.ignore_patterns("test_split.csv", "_generator"))
    return [line.split(",")[0] for line in (tiny_dataset / "test_split.csv").read_text().splitlines()[1:]]


@pytest.mark.slow  # renders the tiny dataset twice
def test_a_resumed_synthetic_download_writes_the_same_bytes_as_a_fresh_one(tmp_path):
    """A run killed mid-render leaves data/raw.partial with some clips and a temporary file; the next run renders
    the rest, and data/raw (a DVC output) is byte-equal to a fresh run's: no leftover, no run count inside."""
    from emi.synth.generate import generate

    params = params_for()
    fresh = download(params, tmp_path / "fresh" / "raw", None, show_progress=False)
    partial = tmp_path / "resumed" / "raw.partial"
    generate(params.download.synthetic, params.seed, partial, show_progress=False)
    clips = sorted((partial / "raw").glob("*.mp4"))
    for clip in clips[:2]:
        clip.unlink()
    (partial / "raw" / f".{clips[0].name}.k1ll3d.tmp.mp4").write_bytes(b"half a clip")
    resumed = download(params, tmp_path / "resumed" / "raw", None, show_progress=False)
    assert (fresh.rendered_now, resumed.rendered_now) == (len(clips), 2)
    assert tree_digest(tmp_path / "resumed" / "raw") == tree_digest(tmp_path / "fresh" / "raw")
    assert resumed.tracking()["metrics"]["rendered_now"] == 2  # the run's count goes to the tracking run
    again = download(params, tmp_path / "resumed" / "raw", None, show_progress=False)
    assert again.rendered_now == 0, "a finished dataset is not rendered again"
    assert tree_digest(tmp_path / "resumed" / "raw") == tree_digest(tmp_path / "fresh" / "raw")
    other = download(params_for(**{"download.synthetic.n_clips": 9}), tmp_path / "resumed" / "raw", None,
                     show_progress=False)
    assert other.rendered_now == 9 and len(list((tmp_path / "resumed" / "raw" / "raw").glob("*.mp4"))) == 9


@pytest.mark.slow  # the stage end to end
def test_unlisted_clips_become_the_unlabelled_test_split(tiny_dataset, tmp_path):
    test_ids = shipped_copy(tiny_dataset, tmp_path / "hume")
    params = params_for(**{"download.source": "local", "download.local.path": str(tmp_path / "hume")})
    result = download(params, tmp_path / "raw", tmp_path / "reports", show_progress=False)
    assert (tmp_path / "raw" / "test_split.csv").read_text() == "Filename\n" + "".join(f"{i}\n" for i in test_ids)
    assert result.report.passed and result.report.warnings == []  # no unlisted clip left
    assert result.report.facts["test_clips"] == f"test (unlabelled): {len(test_ids)} clip(s) in raw/ that no split file lists"
    assert "test (unlabelled)" in (tmp_path / "reports" / "download.md").read_text()
    assert not (tmp_path / "hume" / "test_split.csv").exists()  # the user's folder is never written to


@pytest.mark.slow
def test_test_clips_from_a_folder_or_none(tiny_dataset, tmp_path):
    import shutil

    test_ids = shipped_copy(tiny_dataset, tmp_path / "hume")
    (tmp_path / "testset").mkdir()
    for i in test_ids:  # the test clips in a folder of their own
        shutil.move(tmp_path / "hume" / "raw" / f"{i}.mp4", tmp_path / "testset" / f"{i}.mp4")
    (tmp_path / "testset" / "Thumbs.db").write_bytes(b"x")
    local = {"download.source": "local", "download.local.path": str(tmp_path / "hume")}
    result = download(params_for(**local, **{"download.test.clips": "folder",
                                             "download.test.folder": str(tmp_path / "testset")}),
                      tmp_path / "raw", None, show_progress=False)
    assert (tmp_path / "raw" / "test_split.csv").read_text().split() == ["Filename", *test_ids]
    assert all((tmp_path / "raw" / "raw" / f"{i}.mp4").is_file() for i in test_ids)
    assert result.report.facts["rows_per_split"]["test"] == len(test_ids)

    result = download(params_for(**local, **{"download.test.clips": "none"}), tmp_path / "raw2", None,
                      show_progress=False)
    assert not (tmp_path / "raw2" / "test_split.csv").exists() and result.report.facts["test_clips"].startswith("none")


def test_test_clip_settings_that_contradict_the_data_are_refused(tiny_dataset, tmp_path):
    shipped_copy(tiny_dataset, tmp_path / "hume")
    local = {"download.source": "local", "download.local.path": str(tmp_path / "hume")}
    with pytest.raises(DownloadError, match="download.test.clips is 'split' but the dataset has no test_split.csv"):
        download(params_for(**local, **{"download.test.clips": "split"}), tmp_path / "raw", None, show_progress=False)
    labelled = {"download.source": "local", "download.local.path": str(tiny_dataset)}
    with pytest.raises(DownloadError, match="ships a test_split.csv"):
        download(params_for(**labelled, **{"download.test.clips": "unlisted"}), tmp_path / "raw", None,
                 show_progress=False)
    (tmp_path / "clash").mkdir()
    shutil_copy = __import__("shutil").copy2
    shutil_copy(tiny_dataset / "raw" / "00000.mp4", tmp_path / "clash" / "00000.mp4")
    with pytest.raises(DownloadError, match="00000.mp4 has the id of a clip already in the dataset"):
        download(params_for(**local, **{"download.test.clips": "folder", "download.test.folder": str(tmp_path / "clash")}),
                 tmp_path / "raw", None, show_progress=False)
    with pytest.raises(Exception, match="download.test.folder is not set"):
        params_for(**local, **{"download.test.clips": "folder"})


@pytest.mark.slow  # the stage end to end
@pytest.mark.parametrize("mode", ["copy", "symlink"])
def test_local_source_links_or_copies_and_never_touches_the_source(tiny_dataset, tmp_path, mode):
    before = tree_digest(tiny_dataset)
    params = params_for(**{"download.source": "local", "download.local.path": str(tiny_dataset),
                           "download.local.mode": mode})
    result = download(params, tmp_path / "raw", tmp_path / "reports", show_progress=False)
    assert result.report.passed
    clip = tmp_path / "raw" / "raw" / "00000.mp4"
    assert clip.is_symlink() == (mode == "symlink")
    assert (tmp_path / "raw" / "train_split.csv").read_bytes() == (tiny_dataset / "train_split.csv").read_bytes()
    assert tree_digest(tiny_dataset) == before


@pytest.mark.slow  # the stage end to end
def test_local_source_reports_bad_rows_and_keeps_source(dataset_copy, tmp_path):
    (dataset_copy / "raw" / "00003.mp4").unlink()
    before = tree_digest(dataset_copy)
    params = params_for(**{"download.source": "local", "download.local.path": str(dataset_copy)})
    with pytest.raises(DataValidationError) as err:
        download(params, tmp_path / "raw", tmp_path / "reports", show_progress=False)
    assert "raw/00003.mp4 does not exist" in str(err.value)
    assert (tmp_path / "reports" / "download.md").is_file()
    assert tree_digest(dataset_copy) == before
    tolerant = params_for(**{"download.source": "local", "download.local.path": str(dataset_copy),
                             "data.max_error_fraction": 0.1})
    assert download(tolerant, tmp_path / "raw", tmp_path / "reports", show_progress=False).report.n_bad_rows == 1


@pytest.mark.slow  # ~9 s when first: the stage's MLflow run creates the store
def test_local_source_errors_are_clear(tmp_path):
    with pytest.raises(DownloadError, match="download.local.path is not set"):
        download(params_for(**{"download.source": "local"}), tmp_path / "raw", None, show_progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DownloadError, match="not a Hume-Vidmimic2 folder"):
        download(params_for(**{"download.source": "local", "download.local.path": str(tmp_path / "empty")}),
                 tmp_path / "raw", None, show_progress=False)


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with HTTP Range support (what resumable downloads rely on)."""

    requests_seen: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        type(self).requests_seen.append(rng)
        if rng:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            data = data[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def archive_server(tiny_dataset, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    archive = served / "vidmimic.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tiny_dataset, arcname="Hume-Vidmimic2")
    handler = lambda *a, **k: RangeHandler(*a, directory=str(served), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    RangeHandler.requests_seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}/vidmimic.tar.gz", archive
    server.shutdown()
    server.server_close()


@pytest.mark.slow  # the stage end to end
def test_url_source_resumes_verifies_and_extracts(archive_server, tmp_path):
    url, archive = archive_server
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "vidmimic.tar.gz.part").write_bytes(archive.read_bytes()[:1000])  # an interrupted download
    params = params_for(**{"download.source": "url", "download.url.url": url, "download.url.sha256": digest,
                           "download.url.cache_dir": str(cache)})
    result = download(params, tmp_path / "raw", tmp_path / "reports", show_progress=False)
    assert result.report.passed and result.report.n_rows == 12
    assert RangeHandler.requests_seen == ["bytes=1000-"]
    assert (tmp_path / "raw" / "raw" / "00000.mp4").is_file()
    assert result.report.facts["source"]["sha256"] == digest


def test_url_checksum_mismatch_is_refused(archive_server, tmp_path):
    url, _ = archive_server
    with pytest.raises(DownloadError, match="checksum mismatch"):
        fetch_archive(url, tmp_path / "a.tar.gz", "0" * 64, timeout=10, retries=0, show_progress=False)
    assert not (tmp_path / "a.tar.gz").exists() and not (tmp_path / "a.tar.gz.part").exists()


@pytest.mark.slow  # the stage end to end
def test_file_url_and_missing_sha(tiny_dataset, tmp_path):
    archive = tmp_path / "d.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(tiny_dataset, arcname=".")
    with pytest.raises(DownloadError, match="sha256 is required"):
        download(params_for(**{"download.source": "url", "download.url.url": archive.as_uri()}), tmp_path / "raw",
                 None, show_progress=False)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    params = params_for(**{"download.source": "url", "download.url.url": archive.as_uri(),
                           "download.url.sha256": digest, "download.url.cache_dir": str(tmp_path / "cache")})
    assert download(params, tmp_path / "raw", None, show_progress=False).report.passed


@pytest.mark.slow
def test_cli_generates_and_validates_the_tiny_dataset(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [EMI, "download", "--profile", "tiny", "--out", str(tmp_path / "raw"), "--reports",
           str(tmp_path / "reports"), "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "download validation passed: 0/12 rows" in done.stderr
    assert (tmp_path / "reports" / "download.json").is_file()
    # now break a clip: the stage fails naming it
    victim = tmp_path / "raw" / "raw" / "00001.mp4"
    victim.write_bytes(b"not a video")
    bad = subprocess.run([EMI, "validate", "raw", str(tmp_path / "raw"), "--profile", "tiny", "--reports",
                          str(tmp_path / "reports")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert bad.returncode == 1
    assert "(id 00001)" in bad.stderr and "unreadable" in bad.stderr
