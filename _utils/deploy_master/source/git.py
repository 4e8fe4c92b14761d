"""git as a source: a cached mirror per project on the master, ``git describe`` for the version.

gitpython is imported only when a git source is used, so that the runner's rollback,
history and unlock work (and pay no import time) without it.
"""

import contextlib
import datetime
import fcntl
import os
import shutil
import tempfile

from deploy_master import DeployError, UnknownRef, archive, contract, statedir
from deploy_master.source import Revision, Source, submodules


def _git():
    try:
        import git  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise contract.missing("git: a build from git", "the Python package gitpython", pip="gitpython") from None
    return git


class GitSource(Source):
    """A bare mirror in ``<deploy_state_dir>/git/<project>.git``, fetched before each resolve."""

    kind = "git"
    DEFAULT_BRANCH = "master"

    def check_installed(self):
        _git()

    def __init__(self, opts, project, conf):
        super().__init__(opts, project, conf)
        self.path = os.path.join(statedir.folder(opts, "git"), f"{project}.git")
        self.repo = None

    @contextlib.contextmanager
    def _lock(self):
        """Runs of different envs share a project's mirror: one clone/fetch at a time."""
        path = os.path.join(statedir.folder(self.opts, "git"), f"{self.project}.lock")
        with open(path, "w", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def _mirror(self):
        git = _git()
        env = {"GIT_TERMINAL_PROMPT": "0"}
        try:
            if os.path.isdir(self.path):
                repo = git.Repo(self.path)
                with repo.git.custom_environment(**env):
                    repo.git.remote("set-url", "origin", self.url)  # follow the pillar's `repo`
                    repo.git.fetch("--prune", "origin")
            else:
                repo = git.Repo.clone_from(self.url, self.path, mirror=True, env=env)
        except git.GitCommandError as exc:
            if not os.path.isfile(os.path.join(self.path, "HEAD")):
                shutil.rmtree(self.path, ignore_errors=True)
            raise DeployError(f"git: cannot fetch {self.url}: {(exc.stderr or str(exc)).strip()[-300:]}") from None
        return repo

    def resolve(self, ref, branch=False):
        git = _git()
        with self._lock():
            self.repo = self._mirror()
            commit = self._commit(git, ref, branch)
            version = self.repo.git.describe("--tags", "--always", commit.hexsha)
        name = ref[len("heads/"):] if ref.startswith("heads/") else ref
        return Revision(id=commit.hexsha, version=version, author=commit.committer.name,
                        time=commit.committed_datetime, branch=name)

    def refs(self, limit=50):
        with self._lock():
            self.repo = self._mirror()
            found = {"branches": self.repo.branches, "tags": self.repo.tags}
            out = {}
            for kind, items in found.items():
                rows = []
                for ref in items:
                    commit = ref.commit
                    rows.append({
                        "name": ref.name, "commit": commit.hexsha, "committer": commit.committer.name,
                        "date": commit.committed_datetime.astimezone(datetime.timezone.utc).isoformat(),
                        "subject": commit.summary,
                    })
                rows.sort(key=lambda r: r["date"], reverse=True)
                out[kind] = rows[: int(limit)]
        return out

    def _commit(self, git, ref, branch):
        """The env's branch only as ``refs/heads/<branch>``; a short ref that names a branch and a
        tag (git would pick the tag) is refused, naming both (``heads/x``, ``tags/x`` pick one)."""
        errors = (git.exc.BadName, git.exc.BadObject, ValueError, git.exc.GitCommandError)
        if branch:
            try:
                return self.repo.commit(f"refs/heads/{ref}")
            except errors:
                raise UnknownRef(
                    f"git: unknown branch {ref!r}: the env's branch is not a branch of the repository") from None
        found = []
        for kind, prefix in (("branch", "heads"), ("tag", "tags")):
            try:
                found.append((f"{prefix}/{ref}", kind, self.repo.commit(f"refs/{prefix}/{ref}")))
            except errors:
                continue
        if len(found) > 1:
            listed = ", ".join(f"{name} ({kind}, {commit.hexsha[:10]})" for name, kind, commit in found)
            raise UnknownRef(f"git: ref {ref!r} is ambiguous: {listed}: give one of them as ref=")
        if found:
            return found[0][2]
        try:
            return self.repo.commit(ref)
        except errors:
            raise UnknownRef(f"git: unknown ref {ref!r}: not a branch, tag or commit of the repository") from None

    def export(self, revision, dest):
        """``git archive`` of the commit (of its ``subdir`` folder only, when given), unpacked with the
        nodes' member checks; with ``submodules: true``, each submodule's tree at the commit the
        release's tree records, in its place."""
        repo = self.repo or _git().Repo(self.path)
        treeish = revision.id
        if self.subdir:
            kind = self._kind(repo, f"{revision.id}:{self.subdir}")
            if kind != "tree":
                raise DeployError(f"git: subdir {self.subdir!r} is not a folder at {revision.id[:10]}")
            treeish = f"{revision.id}:{self.subdir}"
        _archive(repo, treeish, dest)
        if self.conf.get("submodules"):
            submodules.export(self, repo, revision.id, self.subdir, dest, _archive, _git())

    @staticmethod
    def _kind(repo, treeish):
        try:
            return repo.git.cat_file("-t", treeish).strip()
        except _git().GitCommandError:
            return None


def _archive(repo, treeish, dest):
    """``git archive`` of ``treeish`` unpacked into ``dest`` (which may hold files already: a
    submodule's folder in its superproject's tree)."""
    with tempfile.TemporaryDirectory(prefix="git-archive-", dir=os.path.dirname(dest.rstrip("/"))) as tmp:
        tar = os.path.join(tmp, "git.tar")
        with open(tar, "wb") as fh:
            repo.archive(fh, treeish=treeish, format="tar")
        archive.unpack(tar, dest)


SOURCE = GitSource
