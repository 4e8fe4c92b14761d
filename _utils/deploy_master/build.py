"""Steps 1-4 of the article on the master: latest code, build, package once, place it on the fileserver.

Master options: ``deploy_artifacts_dir`` (inside a ``file_roots`` directory of ``base``;
default ``<first base file_root>/deploy_artifacts``), ``deploy_keep_artifacts`` (default 10).
"""

import gzip
import hashlib
import json
import os
import subprocess
import tarfile
import tempfile

from salt.exceptions import SaltInvocationError

from deploy_master import DeployError, config, names, source


def sha256(path):
    """The hex sha256 of a file."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


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
    """Export ``revision`` from ``src`` (a Source), run the build ``commands`` in it, tar.gz it.

    ``env``: extra environment of the commands (``DEPLOY_PROJECT``, ``DEPLOY_ENV``,
    ``DEPLOY_RELEASE``).  Returns the artifact's path inside ``workdir``.
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
                f"build command failed (exit {proc.returncode}): {command}: {(proc.stderr or proc.stdout).strip()[-300:]}"
            )
    out = os.path.join(workdir, "release.tar.gz")
    # the same bytes from the same tree: no time or name in the gzip header, no owner names, so
    # that two masters building one commit publish one checksum (a take-over rebuilds it)
    with open(out, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(os.listdir(tree)):
                tar.add(os.path.join(tree, name), arcname=name, filter=_anonymous)
    return out


def _anonymous(member):
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    if member.issym():  # a link's own time is the export's, not the commit's (and nodes never use it)
        member.mtime = 0
    return member


def prune_artifacts(opts, directory):
    """Keep the newest ``deploy_keep_artifacts`` artifacts (and their records) of a project."""
    keep = int(opts.get("deploy_keep_artifacts", 10))
    tars = sorted(
        (os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".tar.gz")),
        key=os.path.getmtime, reverse=True,
    )
    for path in tars[keep:]:
        for victim in (path, path[: -len(".tar.gz")] + ".json"):
            if os.path.exists(victim):
                os.unlink(victim)


def source_for(opts, project, conf):
    """The project's :class:`~deploy_master.source.Source` (pillar ``vcs``)."""
    return source.get(conf.get("vcs"))(opts, project, conf)


def build(opts, project, env, conf, ref, progress, test=False, branch=False):
    """Resolve ``ref``, name the release, and (unless ``test``) build and publish its artifact.

    Returns ``{release, commit, version, branch, committer, time}``, plus ``source`` (salt://),
    ``checksum``, ``reused`` and ``bytes`` when not ``test``.  An artifact is reused for the same
    commit built by the same commands.  ``branch=True``: ``ref`` is the env's default branch
    (resolved only as a branch).
    """
    src = source_for(opts, project, conf)
    revision = src.resolve(ref, branch=branch)
    release = names.release_name(project, env, revision)
    try:
        names.check_release(release)  # the nodes' own rule, before anything is built
    except SaltInvocationError as exc:
        raise DeployError(f"{exc}: nothing was built") from None
    info = {
        "release": release, "commit": revision.id, "version": revision.version, "branch": revision.branch,
        "committer": revision.author, "time": revision.time.isoformat(),
    }
    if test:
        return info
    directory, url = artifacts_dir(opts, project)
    artifact = os.path.join(directory, f"{release}.tar.gz")
    record_path = os.path.join(directory, f"{release}.json")
    # an artifact is reused for the same commit built by the same commands (records without a
    # digest predate it, and were built by the commands of their time: taken as they are)
    commands = conf.get("build") or []
    steps = hashlib.sha256(json.dumps(commands).encode()).hexdigest()
    record = None
    rebuilt = False
    if os.path.isfile(artifact) and os.path.isfile(record_path):
        with open(record_path, encoding="utf-8") as fh:
            record = json.load(fh)
        rebuilt = record.get("build", steps) != steps
        if record.get("commit") != revision.id or sha256(artifact) != record.get("checksum") or rebuilt:
            record = None
    reused = record is not None
    if rebuilt:
        progress(f"build: the build commands changed since {release} was built: building it again "
                 "(nodes that hold the old build refuse the new one: release a new commit)")
    if not reused:
        with tempfile.TemporaryDirectory(prefix="deploy-build-", dir=config.state_dir(opts, "build")) as workdir:
            env_vars = {"DEPLOY_PROJECT": project, "DEPLOY_ENV": env, "DEPLOY_RELEASE": release}
            built = package(src, revision, workdir, commands, env_vars, progress)
            record = {"commit": revision.id, "checksum": sha256(built), "build": steps}
            os.replace(built, artifact)
        os.chmod(artifact, 0o644)
        with open(record_path, "w", encoding="utf-8") as fh:
            json.dump(record, fh)
        prune_artifacts(opts, directory)
    info.update({
        "source": f"{url}/{release}.tar.gz",
        "checksum": record["checksum"],
        "reused": reused,
        "bytes": os.path.getsize(artifact),
    })
    return info
