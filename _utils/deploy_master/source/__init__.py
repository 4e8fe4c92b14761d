"""Where a release's code comes from: one module per VCS behind one small interface.

A source is made for one project (``Source(opts, project, conf)``, ``conf`` the project's pillar
dict: ``repo`` is its URL; a VCS module reads its own keys, e.g. credentials) and does two things:

- :meth:`Source.resolve`: a ref (branch, tag, revision) to a :class:`Revision`, fetching
  what it needs first (``branch=True``: the env's default branch, only ever a branch);
- :meth:`Source.export`: a revision's tree into an empty folder, nothing else (no VCS
  metadata), with every path inside that folder.

``git`` and ``svn`` read a repository; ``artifact`` takes bytes built elsewhere (a tar.gz, zip or
WAR named by its sha256).  ``subdir`` (git and svn) releases one folder of the repository: the
release holds that folder's contents, the version still comes from the repository.

The pillar's ``vcs`` key picks the module (``git`` by default); :func:`get` maps it.
To add a VCS: a module here with a :class:`Source` subclass named ``SOURCE``, its name in
:data:`KINDS`, and its import at the end of this file.
Errors are :class:`deploy_master.DeployError` with a message that starts with the VCS name.
"""

import dataclasses
import datetime
import importlib

from salt.exceptions import SaltInvocationError

from deploy_master import DeployError

KINDS = ("git", "svn", "artifact")


@dataclasses.dataclass(frozen=True)
class Revision:
    """One revision of the repository, with what a release name and its metadata need."""

    id: str  # the commit sha (git) or revision number (svn: the one that last changed the path)
    version: str  # ``git describe --tags --always``; ``r<revision>`` for svn
    author: str  # the committer
    time: datetime.datetime  # the commit's time, timezone-aware
    branch: str  # the branch field of the release name: the released ref or path


class Source:
    """The interface every VCS module implements (see the module docstring)."""

    kind = None
    DEFAULT_BRANCH = None  # an env's branch when its pillar names none

    def __init__(self, opts, project, conf):
        self.opts, self.project, self.conf = opts, project, conf
        self.url = conf["repo"]
        self.subdir = subdir(conf.get("subdir"))

    def check_installed(self):
        """Refuse (:class:`deploy_master.contract.MissingDependency`) before anything starts when the
        master lacks the VCS client this source needs."""

    def resolve(self, ref, branch=False):
        """The :class:`Revision` ``ref`` names now; DeployError if it names none, or more than one
        (git: a branch and a tag of that name).  ``branch=True``: ``ref`` is the env's default
        branch and must resolve as a branch, never as a tag of the same name."""
        raise NotImplementedError

    def export(self, revision, dest):
        """Write the tree of ``revision`` into the empty folder ``dest``."""
        raise NotImplementedError

    def refs(self, limit=50):
        """What a release may name, for people choosing one (the web console's ref chooser):
        ``{"branches": [...], "tags": [...]}``, newest first, at most ``limit`` each; every row
        ``{name, commit, committer, date (ISO, UTC), subject}``."""
        raise NotImplementedError


def subdir(value):
    """The pillar's ``subdir`` as a clean relative path (``a/b``), or None; DeployError when it could
    leave the repository or is not a plain path."""
    if value is None or value == "":
        return None
    text = str(value)
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if text.startswith("/") or ".." in parts or not parts or any(c in text for c in "\n\r\0\\:@"):
        raise DeployError(f"subdir {text!r} must be a folder of the repository (relative, no '..')")
    return "/".join(parts)


def get(vcs=None):
    """The :class:`Source` class for ``vcs`` (pillar ``vcs``, default ``git``)."""
    kind = vcs or "git"
    if kind not in KINDS:
        raise SaltInvocationError(f"unknown vcs {kind!r}: use one of {', '.join(KINDS)}")
    return importlib.import_module(f"deploy_master.source.{kind}").SOURCE


# every VCS module is imported here, once, while the runner loads: on the classic install route
# Salt has this package on sys.path for sure only then (at the end: they import Source)
from deploy_master.source import artifact, git, svn  # noqa: E402,F401  pylint: disable=unused-import,wrong-import-position
