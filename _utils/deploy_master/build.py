"""Steps 1-4 of the article on the master: latest code, build, package once, place it on the fileserver.

Master options: ``deploy_artifacts_dir`` (inside a ``file_roots`` directory of ``base``;
default ``<first base file_root>/deploy_artifacts``), ``deploy_keep_artifacts`` (default 10).
"""

import hashlib
import json
import os
import subprocess
import tempfile
import time

from salt.exceptions import SaltInvocationError

from deploy_master import DeployError, UnknownRef, manifest, names, source, statedir


sha256 = manifest.sha256  # the hex sha256 of a file


def artifacts_dir(opts, project):
    """``(folder, salt:// URL)`` where the project's artifacts are written and served from."""
    roots = (opts.get("file_roots") or {}).get("base") or []
    if not roots:
        raise DeployError("the master has no file_roots for 'base': artifacts cannot be served")
    base = opts.get("deploy_artifacts_dir") or os.path.join(roots[0], "deploy_artifacts")
    for root in roots:
        rel = os.path.relpath(base, root)
        if not rel.startswith(".."):
            path = os.path.join(base, project)
            os.makedirs(path, exist_ok=True)
            return path, "salt://" + (os.path.join(rel, project) if rel != "." else project)
    raise DeployError(f"deploy_artifacts_dir {base} is not inside a file_roots directory of 'base'")


def package(src, revision, workdir, commands, env, progress):
    """Export ``revision`` from ``src`` (a Source), run the build ``commands`` in it, and pack it
    as a content archive (see :mod:`deploy_master.manifest`).

    ``env``: extra environment of the commands (``DEPLOY_PROJECT``, ``DEPLOY_ENV``,
    ``DEPLOY_RELEASE``).  Returns (the artifact's path inside ``workdir``: ``release.tar.gz``, or
    ``release.tar`` when the contents do not compress, its manifest).
    """
    tree = os.path.join(workdir, "src")
    os.makedirs(tree)
    src.export(revision, tree)
    for command in commands:
        progress(f"build: {command}")
        proc = subprocess.run(
            ["/bin/sh", "-c", command], cwd=tree, capture_output=True, text=True, check=False,
            env={**os.environ, **env},
        )
        if proc.returncode:
            raise DeployError(
                f"build command failed (exit {proc.returncode}): {command}: "
                f"{(proc.stderr or proc.stdout).strip()[-300:]}"
            )
    # a content archive (deploy_master.manifest): the manifest, then each content once, named by its
    # sha256; the same bytes from the same tree (no times, owners or gzip name), so that two masters
    # building one commit publish one checksum (a take-over rebuilds it)
    doc, blobs = manifest.scan(tree)
    problem = manifest.link_problem(doc["entries"])  # the nodes' rule, before anything is published
    if problem:
        raise DeployError(f"build: the built tree is refused: {problem} (the nodes refuse it): nothing was published")
    compress = manifest.compressible(list(blobs.values()))
    out = os.path.join(workdir, "release.tar.gz" if compress else "release.tar")
    manifest.write_archive(out, doc, blobs, compress)
    return out, doc


def prune_artifacts(opts, directory):
    """Keep the newest ``deploy_keep_artifacts`` artifacts (and their records and manifests) of a
    project; parts older than an hour go too (a run removes its own part when its prepare is done)."""
    keep = int(opts.get("deploy_keep_artifacts", 10))
    names_ = os.listdir(directory)
    tars = sorted(
        (os.path.join(directory, n) for n in names_ if n.endswith((".tar.gz", ".tar")) and ".part-" not in n),
        key=os.path.getmtime, reverse=True,
    )
    for path in tars[keep:]:
        stem = path[: -len(".tar.gz")] if path.endswith(".tar.gz") else path[: -len(".tar")]
        for victim in (path, stem + ".json", stem + ".manifest.json"):
            if os.path.exists(victim):
                os.unlink(victim)
    for name in names_:
        path = os.path.join(directory, name)
        if ".part-" in name and time.time() - os.path.getmtime(path) > 3600:
            os.unlink(path)


def part(opts, project, info, wanted):
    """Publish a part of the release ``info`` (what :func:`build` returned): its manifest and only the
    contents ``wanted`` (shas).  Returns ``{source, checksum, bytes, path}``; the same set, the same part."""
    directory, url = artifacts_dir(opts, project)
    digest = hashlib.sha256("\n".join(sorted(wanted)).encode()).hexdigest()[:16]
    artifact = os.path.join(directory, info["source"].rsplit("/", 1)[-1])
    compress = artifact.endswith(".tar.gz")
    name = f"{info['release']}.part-{digest}.tar{'.gz' if compress else ''}"
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            manifest.write_part(artifact, tmp, wanted, compress)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return {"source": f"{url}/{name}", "checksum": sha256(path), "bytes": os.path.getsize(path), "path": path}


def manifest_of(opts, project, release):
    """The manifest published beside a release's artifact."""
    directory, _ = artifacts_dir(opts, project)
    return manifest.read(os.path.join(directory, f"{release}.manifest.json"))


def source_for(opts, project, conf):
    """The project's :class:`~deploy_master.source.Source` (pillar ``vcs``)."""
    return source.get(conf.get("vcs"))(opts, project, conf)


def resolve(opts, project, env, conf, ref, branch=False, src=None):
    """``(revision, release)`` that ``ref`` names now; :class:`~deploy_master.UnknownRef` (bad input)
    when it names nothing in the repository or gives a release name the nodes would refuse."""
    src = src or source_for(opts, project, conf)
    revision = src.resolve(ref, branch=branch)
    release = names.release_name(project, env, revision)
    try:
        names.check_release(release)  # the nodes' own rule, before anything is built
    except SaltInvocationError as exc:
        raise UnknownRef(f"{exc}: nothing was built") from None
    return revision, release


def build(opts, project, env, conf, ref, progress, test=False, branch=False, resolved=None):
    """Resolve ``ref``, name the release, and (unless ``test``) build and publish its artifact.

    Returns ``{release, commit, version, branch, committer, time}``, plus ``source`` (salt://),
    ``checksum``, ``tree`` (the manifest's tree hash; the manifest is ``<release>.manifest.json``
    beside the artifact, served at ``manifest``), ``reused`` and ``bytes`` when not ``test``.  An artifact
    is reused for the same commit built by the same commands.  ``branch=True``: ``ref`` is the env's default branch
    (resolved only as a branch).  ``resolved``: :func:`resolve`'s answer, when the caller has it.
    """
    src = source_for(opts, project, conf)
    revision, release = resolved or resolve(opts, project, env, conf, ref, branch, src)
    info = {
        "release": release, "commit": revision.id, "version": revision.version, "branch": revision.branch,
        "committer": revision.author, "time": revision.time.isoformat(),
    }
    if test:
        return info
    directory, url = artifacts_dir(opts, project)
    record_path = os.path.join(directory, f"{release}.json")
    manifest_path = os.path.join(directory, f"{release}.manifest.json")
    # an artifact is reused for the same commit built by the same commands (records without a
    # digest predate it, and were built by the commands of their time: taken as they are)
    commands = [] if conf.get("vcs") == "artifact" else conf.get("build") or []  # built elsewhere
    steps = hashlib.sha256(json.dumps(commands).encode()).hexdigest()
    record = None
    rebuilt = False
    if os.path.isfile(record_path):
        with open(record_path, encoding="utf-8") as fh:
            record = json.load(fh)
        artifact = os.path.join(directory, record.get("artifact") or f"{release}.tar.gz")
        rebuilt = record.get("build", steps) != steps
        if not os.path.isfile(artifact) or record.get("commit") != revision.id \
                or sha256(artifact) != record.get("checksum") or rebuilt \
                or not record.get("tree") or not os.path.isfile(manifest_path):
            record = None  # no tree: an artifact from before the content archive, built again
    reused = record is not None
    if rebuilt:
        progress(f"build: the build commands changed since {release} was built: building it again "
                 "(nodes that hold the old build refuse the new one: release a new commit)")
    if not reused:
        with tempfile.TemporaryDirectory(prefix="deploy-build-", dir=statedir.folder(opts, "build")) as workdir:
            env_vars = {"DEPLOY_PROJECT": project, "DEPLOY_ENV": env, "DEPLOY_RELEASE": release}
            built, doc = package(src, revision, workdir, commands, env_vars, progress)
            artifact = os.path.join(directory, release + built[len(os.path.join(workdir, "release")):])
            record = {"commit": revision.id, "checksum": sha256(built), "build": steps, "tree": doc["tree"],
                      "artifact": os.path.basename(artifact)}
            with open(f"{manifest_path}.tmp", "wb") as fh:
                fh.write(manifest.dumps(doc))
            os.chmod(f"{manifest_path}.tmp", 0o644)
            os.replace(f"{manifest_path}.tmp", manifest_path)
            os.replace(built, artifact)
        os.chmod(artifact, 0o644)
        with open(record_path, "w", encoding="utf-8") as fh:
            json.dump(record, fh)
        prune_artifacts(opts, directory)
    info.update({
        "source": f"{url}/{os.path.basename(artifact)}",
        "manifest": f"{url}/{release}.manifest.json",
        "checksum": record["checksum"],
        "tree": record["tree"],
        "reused": reused,
        "bytes": os.path.getsize(artifact),
    })
    return info
