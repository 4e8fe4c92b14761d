"""What the node's check before a switch costs (``_check_complete`` in ``_modules/deploy.py``).

    python bench/integrity.py [--files 1000] [--dirs 50] [--reps 30] [--baseline <git rev>]

No sandbox: it builds one release of ``--files`` files (~2 kB each, in ``--dirs`` folders, plus a
symlink per folder) from a content store of its own in a temporary project root, exactly as
``deploy.prepare`` does (``_put_blob``, ``_assemble``, the manifest record), and times the check
``--reps`` times (warm page cache, median with min and max):

- ``now``: every file is the store's blob (one ``fstatat`` of the file and one of its blob), nothing
  the manifest lacks;
- ``now, hashed``: the store emptied, so every file is a root read-only copy and is hashed (the
  worst case: what an EMLINK copy or a blob gone from the store costs, for every file);
- baseline: the same function at ``--baseline`` (default: the commit before the blob check), which
  only checked each manifest entry's owner, mode and size.

Run as root with the project's venv.  Prints the figures; writes nothing else.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "_utils"))

from deploy_master import manifest  # noqa: E402
from saltext_deploy._modules import deploy as node  # noqa: E402

BASELINE = "0ba9832"


def _module_at(rev):
    """``_modules/deploy.py`` as it was at ``rev``, imported under another name."""
    text = subprocess.run(["git", "show", f"{rev}:_modules/deploy.py"], cwd=REPO_ROOT, check=True,
                          capture_output=True).stdout
    path = os.path.join(tempfile.mkdtemp(prefix="dpl-bench-"), "deploy_baseline.py")
    with open(path, "wb") as fh:
        fh.write(text)
    spec = importlib.util.spec_from_file_location("deploy_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _release(root, files, dirs):
    """A project root with the content store and one release ``r1`` built from it; returns paths."""
    src = os.path.join(root, "src")
    for i in range(files):
        d = os.path.join(src, f"lib{i % dirs}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"mod{i}.php"), "w", encoding="utf-8") as fh:
            fh.write(f"<?php // module {i}\n" + "x" * 2000)
    for j in range(dirs):
        os.symlink(f"mod{j}.php", os.path.join(src, f"lib{j}", "first.php"))
    doc, blobs = manifest.scan(src)
    paths = {k: os.path.join(root, v) for k, v in
             {"releases": "releases", "content": "content", "manifests": "meta/manifest", "meta": "meta"}.items()}
    os.makedirs(paths["manifests"])
    os.makedirs(paths["releases"])
    cfd = node._open_store(paths, create=True)  # pylint: disable=protected-access
    try:
        for sha, path in blobs.items():
            with open(path, "rb") as fh:
                node._put_blob(cfd, sha, fh, expect=sha)  # pylint: disable=protected-access
        os.mkdir(os.path.join(paths["releases"], "r1"))
        node._assemble("r1", doc["entries"], cfd, os.path.join(paths["releases"], "r1"))  # pylint: disable=protected-access
    finally:
        os.close(cfd)
    node._write_json(node._manifest_path(paths, "r1"),  # pylint: disable=protected-access
                     {"tree": doc["tree"], "skip": [], "entries": doc["entries"]})
    return paths, len(doc["entries"])


def _time(fn, reps):
    fn()  # warm
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return f"{statistics.median(out):7.1f} ms  (min {min(out):.1f}, max {max(out):.1f})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--dirs", type=int, default=50)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--baseline", default=BASELINE)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="dpl-bench-integrity-", dir="/tmp")
    try:
        paths, entries = _release(root, args.files, args.dirs)
        old = _module_at(args.baseline)
        print(f"release of {args.files} files, {entries} entries; {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.1f}")
        print(f"baseline ({args.baseline}): {_time(lambda: old._check_complete(paths, 'r1'), args.reps)}")
        print(f"now:                {_time(lambda: node._check_complete(paths, 'r1'), args.reps)}")
        for name in os.listdir(paths["content"]):
            os.unlink(os.path.join(paths["content"], name))
        print(f"now, hashed:        {_time(lambda: node._check_complete(paths, 'r1'), max(args.reps // 3, 3))}")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
