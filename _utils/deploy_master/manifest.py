"""The release's manifest, its tree hash, and the content archive the nodes build releases from.

A **manifest** lists every entry of a release tree, sorted by path, as
``[path, kind, mode, size, ref]``:

- a file: ``[path, "f", 0o644 or 0o755, size, sha256 of the content]`` (only the owner's
  executable bit of a file's mode is kept, as git does: :func:`file_mode`);
- a symlink: ``[path, "l", 0o777, 0, target]``;
- a folder: ``[path, "d", 0o755, 0, ""]``.

The **tree hash** is the sha256 of the entries, one compact JSON array per line (ASCII, so a
file name that is not UTF-8 hashes alike everywhere).  The node module keeps its own copy of
:func:`tree_hash` (``_modules/deploy.py``: the minion has no ``deploy_master``);
tests/unit/test_manifest.py pins that both give the same hash.

The **content archive** (the artifact, ``<release>.tar.gz``, or ``<release>.tar`` when its contents
do not compress) holds ``manifest.json`` first,
then each distinct content once, as a member named by its sha256: no paths, so nothing in it
can land anywhere but in a node's content store.  A **part** is the same format with only
some of the contents: what the nodes lack (see ``deploy.lacking`` on the node).
"""

import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import stat
import tarfile
import zlib

from deploy_master import DeployError

FORMAT = 1
MANIFEST = "manifest.json"
BLOB_RE = re.compile(r"^[0-9a-f]{64}$")


def _line(entry):
    return json.dumps(entry, separators=(",", ":"), ensure_ascii=True)


def tree_hash(entries):
    """The sha256 of a manifest's entries (sorted by path), one compact JSON array per line."""
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(_line(list(entry)).encode("ascii") + b"\n")
    return digest.hexdigest()


def file_mode(st_mode):
    """The mode a release keeps of a file whose mode is ``st_mode``: 0o755 when its owner may execute it,
    else 0o644 (git's rule).  The node module keeps its own copy (``_modules/deploy.py`` ``_file_mode``),
    pinned by tests/unit/test_manifest.py."""
    return 0o755 if st_mode & 0o100 else 0o644


def sha256(path):
    """The hex sha256 of a file, read in 1 MiB blocks (``hashlib.file_digest`` is Python 3.11+)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def scan(tree):
    """The manifest of the folder ``tree`` and where each content is: ``(manifest, {sha: path})``.

    Symlinks are recorded, never followed; anything else than files, folders and symlinks
    (a fifo, a device, a socket) is refused.
    """
    entries, blobs = [], {}

    def walk(rel):
        with os.scandir(os.path.join(tree, rel) if rel else tree) as it:
            items = sorted(it, key=lambda d: d.name)
        for item in items:
            path = f"{rel}/{item.name}" if rel else item.name
            st = item.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                entries.append([path, "l", 0o777, 0, os.readlink(item.path)])
            elif stat.S_ISDIR(st.st_mode):
                entries.append([path, "d", 0o755, 0, ""])
                walk(path)
            elif stat.S_ISREG(st.st_mode):
                sha = sha256(item.path)
                entries.append([path, "f", file_mode(st.st_mode), st.st_size, sha])
                blobs.setdefault(sha, item.path)
            else:
                raise DeployError(f"{path}: not a file, folder or symlink: release refused")

    walk("")
    entries.sort(key=lambda e: e[0])
    return {"format": FORMAT, "tree": tree_hash(entries), "entries": entries}, blobs


def link_problem(entries):
    """What is wrong with the symlinks of a release's ``entries`` (manifest rows, any order), or None.

    A symlink is relative, stays inside the release, and never goes through another symlink of the
    release (its target is walked step by step; a step from a path that is itself a symlink is
    refused: where it lands depends on that link).  All links are collected first, so the answer
    does not hang on the order of the entries.  The nodes apply the same rule to every manifest
    (``_link_problem`` in ``_modules/deploy.py``, a copy: tests/unit/test_links.py pins that both
    answer alike), and the git/svn export check refuses the same trees.
    """
    links = {e[0] for e in entries if e[1] == "l"}
    for path, kind, _, _, ref in entries:
        if kind != "l":
            continue
        if not isinstance(ref, str) or not ref or ref.startswith("/"):
            return f"{path!r} links to {ref!r}, outside the release"
        walk = path.split("/")[:-1]
        for step in ref.split("/"):
            if step in ("", "."):
                continue
            if walk and "/".join(walk) in links:
                return f"{path!r} links to {ref!r} through the symlink {'/'.join(walk)!r}"
            if step != "..":
                walk.append(step)
            elif walk:
                walk.pop()
            else:
                return f"{path!r} links to {ref!r}, outside the release"
    return None


def blob_sizes(manifest):
    """``{sha: size}`` of the manifest's contents."""
    return {e[4]: e[3] for e in manifest["entries"] if e[1] == "f"}


def plan_transfer(answers, sizes):
    """What one archive must hold for the nodes' ``deploy.lacking`` answers ({node: answer}).

    An answer names what a node lacks as ``[start, stop]`` ranges of indexes into the release's
    contents in sorted order (``sorted(sizes)``).  Returns ``(lacking, whole)``: the union of the
    contents some node still to prepare lacks, and whether the whole artifact is the archive (a node
    lacks every content, or no node needs anything: nothing is fetched then).  DeployError if a node
    answers for another set of contents or with a range outside it.
    """
    order = sorted(sizes)
    fresh = {n: a for n, a in answers.items() if not a.get("prepared")}
    lacking = set()
    for node, answer in sorted(fresh.items()):
        if answer.get("total") != len(order) or not _ranges_within(answer.get("lacking"), len(order)):
            raise DeployError(f"deploy.lacking on {node} answered for other contents than the release's "
                              f"{len(order)}: {str(answer)[:200]}")
        for start, stop in answer["lacking"]:
            lacking.update(order[start:stop])
    return lacking, not fresh or lacking == set(sizes)


def _ranges_within(ranges, total):
    """Whether ``ranges`` is a list of non-empty ``[start, stop]`` index ranges within ``total``."""
    return isinstance(ranges, list) and all(
        isinstance(r, list) and len(r) == 2 and all(isinstance(i, int) for i in r) and 0 <= r[0] < r[1] <= total
        for r in ranges)


def dumps(manifest):
    """The manifest as the archive and the fileserver hold it (bytes)."""
    return json.dumps(manifest, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _info(name, size, mtime=0):
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o444, int(mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _open_out(out, compress=True):
    """A gzip stream without time or name (the same bytes from the same content), or the plain file."""
    raw = open(out, "wb")  # noqa: SIM115 (returned: the caller closes it)  # pylint: disable=consider-using-with
    if not compress:
        return contextlib.nullcontext(raw), raw
    return raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=6, mtime=0)


def compressible(paths, sample=1 << 20):
    """Whether gzip is worth it for these files: a sample of up to ``sample`` bytes from their starts
    shrinks by 10 % at zlib's fastest level (or is under 64 KiB).  Incompressible content (media, archives, random data)
    goes into a plain tar: inflating it costs every node CPU for nothing."""
    data, per = bytearray(), max(sample // max(len(paths), 1), 4096)
    for path in sorted(paths):
        if len(data) >= sample:
            break
        with open(path, "rb") as fh:
            data += fh.read(per)
    if len(data) < 65536:  # small files: the tar's padding alone is worth gzip, and it costs little
        return True
    return len(zlib.compress(bytes(data), 1)) < 0.9 * len(data)


def write_archive(out, manifest, blobs, compress=True):
    """Write the content archive ``out`` (tar.gz, or a plain tar if not ``compress``): ``manifest.json``,
    then ``blobs`` ({sha: path}) by sha."""
    raw, gz = _open_out(out, compress)
    with raw, gz, tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = dumps(manifest)
        tar.addfile(_info(MANIFEST, len(data)), io.BytesIO(data))
        for sha in sorted(blobs):
            with open(blobs[sha], "rb") as fh:
                st = os.fstat(fh.fileno())
                tar.addfile(_info(sha, st.st_size, st.st_mtime), fh)  # the build's mtime travels with the content


def write_part(artifact, out, wanted, compress=True):
    """Write a part ``out``: the artifact's manifest and only the contents in ``wanted`` (shas)."""
    wanted = set(wanted)
    found = set()
    raw, gz = _open_out(out, compress)
    with raw, gz, tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as dst, \
            tarfile.open(artifact, "r:*") as src:
        for member in src:
            if member.name == MANIFEST or member.name in wanted:
                dst.addfile(member, src.extractfile(member))
                found.add(member.name)
    if MANIFEST not in found or found - {MANIFEST} != wanted:
        missing = sorted(wanted - found)[:3]
        raise DeployError(f"artifact {artifact} lacks {missing or MANIFEST}: build the release again")


def read(path):
    """The manifest stored beside an artifact (``<release>.manifest.json``)."""
    with open(path, "rb") as fh:
        return json.loads(fh.read())
