#!/usr/bin/env python3
"""How fast lssd packs and installs a build, per compression: the data behind DEFAULT_COMPRESSION.

Generates a build-like tree of ``--size-mb`` (about half source-like text, half incompressible
bytes, thousands of files of mixed sizes in nested directories), then for each compression times
``pack.pack()`` (tar + compress + SHA-256, to the final archive) and ``install.install()``
(decompress + checked extraction + rename), and prints input MB/s, archive size ratio and CPU
seconds (this process and its children, e.g. zstd). Since every peer receives the archive over
the network, it also prints the time to move it over 50 Mbit/s, 1 Gbit/s and 10 Gbit/s links and
a one-hop deploy estimate, pack + transfer + install, per link.

When pigz is on PATH, gzip is measured twice: with pigz (what lssd.setup installs) and with plain
gzip (PATH without pigz). ``--compressions`` also takes ``zstd:LEVEL`` or ``gzip:LEVEL`` to try
other levels than the ones pack.py uses.

The tree is read from the page cache (it was just written), so pack figures are CPU-bound plus
the fsync of the archive; a cold read of the build adds the disk's read time to every row alike.
Install figures include creating every file and directory on the destination's filesystem, which
on a slow disk costs more than decompressing (GNU tar pays the same); ``--install-dir /dev/shm``
measures the CPU side alone.

    .venv/bin/python bench/pack_throughput.py --size-mb 1024 [--workdir DIR] [--install-dir DIR]
        [--compressions none,gzip,zstd]

Everything generated is deleted at the end unless --keep is given.
"""

import argparse
import contextlib
import math
import os
import random
import resource
import shutil
import sys
import tempfile
import time

from salt_lssd import install, pack

LINKS = (("50 Mbit/s", 50e6), ("1 Gbit/s", 1e9), ("10 Gbit/s", 10e9))
MB = 1 << 20

_KEYWORDS = (  # noqa: SIM905 - a word list reads better as text
    "def class return import from if elif else for while try except finally with as yield "
    "lambda self None True False and or not in is pass break continue raise assert global int "
    "str dict list tuple len range print open const let var function static void public private "
    "struct impl fn pub use mod match Some Ok Err"
).split()


def _source_lines(rng, count):
    """A pool of source-like lines: indentation, keywords, identifiers, literals, comments."""
    syllables = [
        "get",
        "set",
        "user",
        "id",
        "name",
        "conf",
        "load",
        "save",
        "tmp",
        "buf",
        "req",
        "resp",
        "node",
        "tree",
        "peer",
        "seed",
        "hash",
        "piece",
        "file",
        "path",
        "size",
        "item",
        "list",
        "map",
        "key",
        "val",
        "data",
        "read",
        "write",
        "open",
        "close",
    ]
    idents = ["_".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(4000)]
    lines = []
    for _ in range(count):
        indent = " " * (4 * rng.randint(0, 4))
        shape = rng.random()
        if shape < 0.08:
            line = f"{indent}# {' '.join(rng.choices(idents + _KEYWORDS, k=rng.randint(3, 10)))}"
        elif shape < 0.15:
            line = ""
        else:
            words = rng.choices(idents, k=rng.randint(1, 4))
            op = rng.choice([" = ", "(", ".", " + ", ", ", " == ", "["])
            literal = rng.choice(
                [str(rng.randint(0, 10 ** rng.randint(1, 6))), f'"{rng.choice(idents)}"', ""]
            )
            line = f"{indent}{rng.choice(_KEYWORDS)} {op.join(words)}{op}{literal}"
        lines.append(line + "\n")
    return lines


def _log_uniform(rng, low, high):
    return int(math.exp(rng.uniform(math.log(low), math.log(high))))


def generate_tree(root, size_mb, seed=1):
    """Write the tree; return (files, bytes)."""
    rng = random.Random(seed)
    pool = [line.encode() for line in _source_lines(rng, 300_000)]
    budget_text = budget_binary = size_mb * MB // 2
    files = written = 0
    directory_names = ["src", "lib", "assets", "vendor", "bin", "share", "conf", "static"]

    def next_path(ext):
        depth = rng.randint(1, 4)
        parts = [rng.choice(directory_names)] + [f"d{rng.randint(0, 20)}" for _ in range(depth - 1)]
        directory = os.path.join(root, *parts)
        os.makedirs(directory, exist_ok=True)
        return os.path.join(directory, f"f{files:06d}{ext}")

    while budget_text > 0 or budget_binary > 0:
        if budget_text > 0 and (budget_binary <= 0 or rng.random() < 0.97):
            size = min(_log_uniform(rng, 512, 512 * 1024), budget_text)
            chunks, total = [], 0
            while total < size:
                block = b"".join(rng.choices(pool, k=256))
                chunks.append(block)
                total += len(block)
            data = b"".join(chunks)[:size]
            path, budget_text = (
                next_path(rng.choice([".py", ".js", ".c", ".h", ".txt", ".json"])),
                budget_text - size,
            )
        else:
            size = min(_log_uniform(rng, 4096, 48 * MB), budget_binary)
            data = rng.randbytes(size)
            path, budget_binary = next_path(rng.choice([".so", ".png", ".jar", ".bin"])), budget_binary - size
        with open(path, "wb") as fh:
            fh.write(data)
        if path.endswith((".so", ".bin")):
            os.chmod(path, 0o755)
        files += 1
        written += size
    os.makedirs(os.path.join(root, ".git", "objects"), exist_ok=True)  # excluded, as in a checkout
    with open(os.path.join(root, ".git", "HEAD"), "w") as fh:
        fh.write("ref: refs/heads/main\n")
    return files, written


def _cpu():
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed(function, *args, **kwargs):
    # Write back what earlier steps left dirty, so it is not charged to this one.
    os.sync()
    cpu, wall = _cpu(), time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - wall, _cpu() - cpu


@contextlib.contextmanager
def _without_pigz(workdir):
    """PATH with every directory's programs but pigz (symlinks in a private bin directory)."""
    shim = os.path.join(workdir, "bin-no-pigz")
    os.makedirs(shim, exist_ok=True)
    for program in ("gzip", "zstd"):
        found = shutil.which(program)
        if found and not os.path.exists(os.path.join(shim, program)):
            os.symlink(found, os.path.join(shim, program))
    saved = os.environ["PATH"]
    os.environ["PATH"] = shim
    try:
        yield
    finally:
        os.environ["PATH"] = saved


@contextlib.contextmanager
def _level(compression, level):
    """Run pack with another level than pack.py's (bench only)."""
    if level is None:
        yield
        return
    saved = pack._TOOLS[compression]
    flag = f"-{level}"
    pack._TOOLS[compression] = tuple(
        (program, args + ([flag, "--ultra"] if int(level) > 19 else [flag]), dargs, package)
        for program, args, dargs, package in saved
    )
    try:
        yield
    finally:
        pack._TOOLS[compression] = saved


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the generated tree (default 1024)")
    parser.add_argument("--workdir", help="where to generate (default: a new temporary directory)")
    parser.add_argument("--compressions", default="none,gzip,zstd", help="comma list; zstd:LEVEL allowed")
    parser.add_argument(
        "--install-dir",
        help="parent of the install destination (default: in the workdir); a tmpfs such as "
        "/dev/shm takes the disk out of the install figures",
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated tree and archives")
    args = parser.parse_args(argv)

    workdir = tempfile.mkdtemp(prefix="lssd-bench-", dir=args.workdir)
    tree = os.path.join(workdir, "tree")
    archives = os.path.join(workdir, "archives")
    destination = os.path.join(workdir, "install")
    if args.install_dir:
        destination = tempfile.mkdtemp(prefix="lssd-bench-install-", dir=args.install_dir)
    try:
        started = time.perf_counter()
        files, size = generate_tree(tree, args.size_mb)
        print(
            f"generated {files} files, {size / MB:.0f} MB in {time.perf_counter() - started:.0f}s "
            f"at {tree}; {os.cpu_count()} CPUs; pigz {'on' if shutil.which('pigz') else 'not on'} PATH",
            flush=True,
        )
        runs = []
        for spec in args.compressions.split(","):
            compression, _, level = spec.strip().partition(":")
            if compression == "gzip" and shutil.which("pigz"):
                runs.append((f"gzip{':' + level if level else ''} (pigz)", compression, level or None, False))
                runs.append((f"gzip{':' + level if level else ''} (gzip)", compression, level or None, True))
            else:
                runs.append((spec.strip(), compression, level or None, False))

        rows = []
        for label, compression, level, hide_pigz in runs:
            with contextlib.ExitStack() as stack:
                if hide_pigz:
                    stack.enter_context(_without_pigz(workdir))
                stack.enter_context(_level(compression, level))
                tag = "Bench-" + label.replace(" ", "").replace("(", "-").replace(")", "").replace(":", "-")
                packed, pack_s, pack_cpu = _timed(pack.pack, tree, archives, tag, compression=compression)
                installed, inst_s, inst_cpu = _timed(install.install, packed["archive"], destination, tag)
            assert installed["bytes"] == packed["input_bytes"]
            shutil.rmtree(installed["target"])
            os.remove(packed["archive"])
            row = {
                "label": label,
                "input_mb": packed["input_bytes"] / MB,
                "pack_s": pack_s,
                "pack_cpu": pack_cpu,
                "ratio": packed["size"] / packed["input_bytes"],
                "archive_mb": packed["size"] / MB,
                "install_s": inst_s,
                "install_cpu": inst_cpu,
                "transfer": [packed["size"] * 8 / bits for _, bits in LINKS],
            }
            rows.append(row)
            print(
                f"{label}: pack {pack_s:.1f}s ({row['input_mb'] / pack_s:.0f} MB/s, {pack_cpu:.1f} CPU s), "
                f"archive {row['archive_mb']:.0f} MB ({row['ratio']:.3f}), install {inst_s:.1f}s "
                f"({row['input_mb'] / inst_s:.0f} MB/s, {inst_cpu:.1f} CPU s)",
                flush=True,
            )

        print()
        print(f"{files} files, {size / MB:.0f} MB, {os.cpu_count()} CPUs, installed below {destination}")
        print(
            "| compression | pack MB/s | pack CPU s | archive MB | ratio | install MB/s | install CPU s | "
            + " | ".join(f"transfer @{name}" for name, _ in LINKS)
            + " | "
            + " | ".join(f"pack+transfer+install @{name}" for name, _ in LINKS)
            + " |"
        )
        print("|" + "---|" * (7 + 2 * len(LINKS)))
        for row in rows:
            cells = [
                row["label"],
                f"{row['input_mb'] / row['pack_s']:.0f}",
                f"{row['pack_cpu']:.1f}",
                f"{row['archive_mb']:.0f}",
                f"{row['ratio']:.3f}",
                f"{row['input_mb'] / row['install_s']:.0f}",
                f"{row['install_cpu']:.1f}",
            ]
            cells += [f"{t:.1f}s" for t in row["transfer"]]
            cells += [f"{row['pack_s'] + t + row['install_s']:.1f}s" for t in row["transfer"]]
            print("| " + " | ".join(cells) + " |")
        return 0
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            shutil.rmtree(destination, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
