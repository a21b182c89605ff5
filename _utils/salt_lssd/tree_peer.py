"""A tree-mode deploy on a peer: download beside the target, place what is held, install, linger.

libtorrent writes the torrent's files straight into a ``.<tag>.lssd-tmp-*`` directory beside
the target (the same filesystem, and the name install's temporary trees have), so the install
moves files instead of extracting them. With other tags of the app installed here, the files
the manifest names that this host already holds are copied in (``delta``) while the download
process starts, and it counts the placed files' pieces as had and downloads only the others.
The manifest comes with the torrent where the mine entry had room for it; otherwise the
download first fetches the manifest alone and waits while the job places files. The download
process ends when it completes (its files are about to move); a lingering seeder then serves
the installed tree itself (seed mode, its pieces checked on first request) for ``linger``
seconds. On any failure the temporary directories are removed and the download process is
stopped: nothing is left at the target.
"""

import json
import os
import tempfile
import time

from salt_lssd import LssdError, delta, deploy, install, procs, tree
from salt_lssd.common import write_atomic
from salt_lssd.settings import number


def run(minion, tag, data, info, meta, destination_path, timeout, linger, lt_settings, options):
    """Returns (installed, download state with ``reused``, install seconds)."""
    target = deploy._target(destination_path, tag, options)
    parent = os.path.dirname(target)
    try:
        os.makedirs(parent, mode=install.DEFAULT_MODE, exist_ok=True)
        deploy._check_space(parent, int(meta.get("unpacked_size") or info["size"]), f"the download of {tag}")
        staging = tempfile.mkdtemp(prefix=f".{tag}.lssd-tmp-", dir=parent)
    except OSError as exc:
        raise LssdError(f"cannot create a directory in {parent!r}: {exc.strerror}") from exc
    run_dir = minion.layout.run_dir("peer", tag)
    try:
        state, manifest = _download(minion, tag, data, info, meta, staging, timeout, lt_settings, run_dir)
        started = time.monotonic()
        installed = install.install_tree(os.path.join(staging, info["name"]), manifest["parsed"],
                                         destination_path, tag, **options)
        seconds = round(time.monotonic() - started, 3)
    except BaseException:
        procs.stop(run_dir)
        raise
    finally:
        install._remove_tree(staging)
    kept = minion.layout.installed_manifest(tag)
    write_atomic(kept, manifest["data"])
    if linger > 0:
        _linger(minion, tag, info, installed["target"], kept, linger, lt_settings, run_dir)
    return installed, state, seconds


def _download(minion, tag, data, info, meta, staging, timeout, lt_settings, run_dir):
    """Run the download into ``staging`` to completion; returns (state, manifest)."""
    deadline = time.monotonic() + number(timeout, "timeout", 1)
    found = delta.candidates(minion, tag)
    procs.stop(run_dir)  # a lingering seeder of an earlier build of this tag, if any
    _remove(os.path.join(run_dir, "go"))
    write_atomic(minion.layout.torrent(tag), data)
    tree_dir = os.path.join(staging, info["name"])
    manifest = None
    if info.get("manifest") is not None:
        # The torrent carries the manifest: the held files are placed while the download
        # process starts, and it wants only the rest from its first request.
        manifest = _checked(info["manifest"], meta)
        os.makedirs(tree_dir, 0o700)
        write_atomic(os.path.join(tree_dir, tree.MANIFEST_NAME), manifest["data"])
    config = _config(minion, tag, info, staging, lt_settings, run_dir, linger=0, timeout=timeout,
                     manifest_first=bool(found) and manifest is None,
                     await_go=bool(found) and manifest is not None, job_pid=os.getpid(),
                     placed=[] if manifest is not None else None)
    procs.launch("peer", run_dir, config)
    reused = 0
    if config["await_go"]:
        try:
            reused = _place(found, manifest, tree_dir, run_dir, deadline)
        except BaseException:
            procs.abandon("peer", run_dir)
            raise
    procs.await_ready("peer", run_dir)
    deploy.fire_start(minion, tag, info)
    state = deploy.wait_for_download(minion, tag, run_dir, None, timeout, info["size"],
                                     until=("manifest", "lingering", "done"), deadline=deadline)
    if state.get("status") == "manifest":  # (a torrent of the manifest alone is complete already)
        manifest = _read_manifest(tree_dir, meta)
        reused = _place(found, manifest, tree_dir, run_dir, deadline)
        state = deploy.wait_for_download(minion, tag, run_dir, None, timeout, info["size"], deadline=deadline)
    procs.stop(run_dir)  # it ends by itself (linger 0); its files must not be open while they move
    if manifest is None:
        manifest = _read_manifest(tree_dir, meta)
    os.unlink(os.path.join(tree_dir, tree.MANIFEST_NAME))
    return dict(state, reused=reused), manifest


def _read_manifest(tree_dir, meta):
    path = os.path.join(tree_dir, tree.MANIFEST_NAME)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise LssdError(f"the manifest is not in the download ({path}): {exc.strerror}") from exc
    return _checked(data, meta)


def _checked(data, meta):
    """The manifest's bytes and entries, once its SHA-256 is the torrent's."""
    return {"data": data, "parsed": tree.parse_manifest(data, meta["sha256"])}


def _place(found, manifest, tree_dir, run_dir, deadline):
    """Copy in the held files the manifest names (until the monotonic ``deadline``), then
    tell the download process which (``go``); returns the bytes placed."""
    placed, reused = delta.place(found, manifest["parsed"][1], tree_dir, deadline)
    write_atomic(os.path.join(run_dir, "go"), json.dumps({"placed": placed}).encode())
    return reused


def _config(minion, tag, info, save_path, lt_settings, run_dir, **extra):
    config = {
        "torrent": minion.layout.torrent(tag),
        "save_path": save_path,
        "tag": tag,
        "infohash": info["infohash"],
        "listen": minion.setting("listen"),
        "settings": lt_settings,
    }
    config.update(extra)
    config.update(deploy._ssl_files(minion, tag, info, run_dir))
    return config


def _linger(minion, tag, info, target, manifest, linger, lt_settings, run_dir):
    """Seed the installed tree for ``linger`` seconds. Its failure to start costs the swarm a
    source, not this peer its deploy: it is reported in the process's state, not raised."""
    config = _config(minion, tag, info, os.path.dirname(target), lt_settings, run_dir, linger=linger,
                     seed_only=True, tree={"root": target, "manifest": manifest})
    try:
        procs.spawn("peer", run_dir, config)
    except LssdError:
        pass


def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
