"""A standard BitTorrent client (aria2) joins a swarm our seeder serves and gets the archive.

The seeder and the tracker are started through the ``lssd`` module; aria2c is given the
.torrent exactly as ``create_torrent`` wrote it (announce URL, passkey and all) and must end
with a byte-identical archive. SSL torrents (``lssd:ssl``, the default) admit only peers that
hold the deploy's certificate, which no standard client can, so this seeder runs with
``ssl: false``, as a fleet that wants such clients must.
"""

import hashlib
import shutil
import subprocess
import time

import pytest
from lssd_testutil import make_build_tree
from loaderutil import free_port

TAG = "Standard1"


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture
def aria2c():
    path = shutil.which("aria2c")
    if path is None:
        pytest.skip("aria2c is not installed (apt-get install -y aria2)")
    return path


def test_aria2_downloads_a_byte_identical_archive_from_our_seeder(aria2c, make_minion, tracker_port, tmp_path):
    build = make_build_tree(tmp_path / "build", data_mb=16)
    tracker = make_minion("tracker")
    seeder = make_minion("seeder", seeder_files_path=str(build), ssl=False)
    tracker.modules.lssd.tracker_start(port=tracker_port, bind="127.0.0.1")
    made = seeder.modules.lssd.create_torrent(TAG)
    tracker.modules.lssd.tracker_allow(made["torrent"])
    seeder.modules.lssd.seed_start(TAG)
    downloads = tmp_path / "aria2"
    argv = [
        aria2c, f"--dir={downloads}", "--seed-time=0", "--enable-dht=false", "--enable-dht6=false",
        "--enable-peer-exchange=false", "--bt-enable-lpd=false", f"--listen-port={free_port()}",
        "--bt-stop-timeout=60", "--summary-interval=0", "--console-log-level=warn",
        "--follow-torrent=false", "--check-certificate=false", made["torrent"],
    ]
    # aria2c exits on its own once the file is complete (seed-time 0) or after 60 s without
    # a byte (bt-stop-timeout); the subprocess timeout only guards against a hang.
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    got = downloads / made["archive"].rsplit("/", 1)[1]
    assert done.returncode == 0, f"aria2c failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}"
    assert got.is_file(), f"aria2c wrote no {got.name}: {sorted(p.name for p in downloads.iterdir())}"
    assert got.stat().st_size == made["size"]
    assert sha256(got) == made["sha256"] == sha256(made["archive"])
    # Every byte came from our seeder, through the swarm (the seeder's own count, refreshed
    # once a second by its process).
    deadline = time.monotonic() + 10
    while True:
        (process,) = [p for p in seeder.modules.lssd.status()["processes"] if p["role"] == "seeder"]
        if process.get("uploaded", 0) >= made["size"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert process.get("uploaded", 0) >= made["size"], process
