"""Subversion as a source: ``svn info --xml`` to resolve, ``svn export`` to get the tree.

``repo`` is the folder that holds ``trunk/``, ``branches/`` and ``tags/`` (``file:///…``,
``svn://…``, ``svn+ssh://…``, ``http(s)://…``).  A ref is either

- a path below it: ``trunk``, ``branches/<name>``, ``tags/<name>`` (any folder of the
  repository): its newest state, or
- a revision number, ``r123`` or ``123``: that revision of ``trunk`` (pillar ``svn: {trunk:}``
  names another main line).

The revision of a release is the one that last changed that folder (``svn info``'s commit
revision), so a commit elsewhere in the repository gives no new release.  Its version is
``r<revision>``, the committer and time are that revision's, the branch field is the path.

Credentials come from the project's pillar, ``svn: {username: …, password: …}``.  They never
reach argv, logs or messages: every call gets a private, temporary ``--config-dir`` whose
``servers`` file names the user and stores nothing, and the password goes through a pipe
(``--password-from-stdin``).  Because of that config dir, what the master's user has cached or
configured in ``~/.subversion`` is not used.  ``svn+ssh://`` logs in with the master user's SSH
key (``SVN_SSH``, default ``ssh -q -o BatchMode=yes``).  Every call is ``--non-interactive``
with a timeout (``svn: {timeout:}``, seconds, default 300).
"""

import datetime
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import urllib.parse
import xml.etree.ElementTree as ET

from deploy_master import DeployError, UnknownRef, archive, contract, names
from deploy_master.source import Revision, Source

SCHEMES = ("file", "svn", "svn+ssh", "http", "https")
REVISION_RE = re.compile(r"^r?([0-9]{1,10})$")
DEFAULT_TIMEOUT = 300
# svn error codes (svn_error_codes.h) -> what the message says went wrong
NOT_FOUND = ("E160013", "E170000", "E155010", "E200009")  # path not found / not in revision
NO_REVISION = ("E160006",)  # no such revision
AUTH = ("E170001", "E215004", "E215000", "E230001", "E170013:.*[Aa]uthori")


def _no_client():
    return contract.missing("svn: a build from SVN", "the svn client (1.10 or newer)", deb="subversion")


class SvnSource(Source):
    """No mirror: ``svn info`` against the repository on every resolve, an export per build."""

    kind = "svn"
    DEFAULT_BRANCH = "trunk"

    def check_installed(self):
        if not shutil.which("svn"):
            raise _no_client()

    def __init__(self, opts, project, conf):
        super().__init__(opts, project, conf)
        settings = conf.get("svn") or {}
        if not isinstance(settings, dict):
            raise DeployError("svn: pillar 'svn' must be a dict (username, password, trunk, timeout)")
        self.username = settings.get("username")
        self.password = settings.get("password")
        if self.password is not None and not self.username:
            raise DeployError("svn: pillar svn:password needs svn:username")
        self.trunk = names.valid(str(settings.get("trunk") or "trunk"), names.REF_RE, "svn trunk path")
        try:
            self.timeout = int(settings.get("timeout") or DEFAULT_TIMEOUT)
        except (TypeError, ValueError):
            raise DeployError("svn: pillar svn:timeout must be a number of seconds") from None
        self.url = self._check_url(str(self.url)).rstrip("/")

    @staticmethod
    def _check_url(url):
        try:
            parts = urllib.parse.urlsplit(url)
            password = parts.password
        except ValueError:
            raise DeployError("svn: bad repo URL: not a URL") from None
        if password is not None:  # checked first, and never repeated: the message names the host only
            raise DeployError(f"svn: the repo URL for {parts.hostname} holds a password: "
                              "put it in pillar svn:password instead")
        if parts.scheme not in SCHEMES:
            raise DeployError(f"svn: bad repo URL {url!r}: use one of {', '.join(s + '://' for s in SCHEMES)}")
        if any(c in url for c in "\n\r\0") or "@" in parts.path:
            raise DeployError(f"svn: bad repo URL {url!r}: no '@' (peg revision) or control characters in its path")
        return url

    # --- running svn
    def _svn(self, args, what):
        """Run ``svn <args>``; its stdout, or DeployError naming ``what`` went wrong, without secrets."""
        with tempfile.TemporaryDirectory(prefix="svn-config-") as cfg:
            lines = ["[global]", "store-passwords = no", "store-auth-creds = no"]
            if self.username:
                lines.append(f"username = {_one_line(self.username)}")
            with open(os.path.join(cfg, "servers"), "w", encoding="utf-8") as fh:
                fh.write("\n".join(lines) + "\n")
            argv = ["svn", *args, "--non-interactive", "--no-auth-cache", "--config-dir", cfg]
            stdin = None
            if self.password is not None:
                argv.append("--password-from-stdin")
                stdin = _one_line(self.password) + "\n"
            env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
            env.setdefault("SVN_SSH", "ssh -q -o BatchMode=yes")
            try:
                proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=self.timeout,
                                      env=env, check=False)
            except subprocess.TimeoutExpired:
                raise DeployError(f"svn: {what}: no answer within {self.timeout}s (pillar svn:timeout)") from None
            except FileNotFoundError:
                raise _no_client() from None
        if proc.returncode:
            message = self._error(proc.stderr, what)
            raise (UnknownRef if message.startswith("svn: unknown ") else DeployError)(message)
        return proc.stdout

    def _error(self, stderr, what):
        errors = [line.strip() for line in stderr.splitlines() if line.strip().startswith("svn: E")]
        codes = " ".join(errors)
        # E200009 ("could not display info for all targets") only repeats that one failed
        errors = [e for e in errors if not e.startswith("svn: E200009")] or errors
        detail = "; ".join(e.split(": ", 2)[-1] for e in errors[-2:]) or stderr.strip()[-300:] or "failed"
        if any(re.search(code, codes) for code in AUTH):
            kind = f"authentication failed for {self.url}"
        elif any(code in codes for code in NO_REVISION):
            kind = f"unknown revision: {what} of {self.url}"
        elif any(code in codes for code in NOT_FOUND):
            kind = f"unknown ref: no folder {what} in {self.url}"
        else:
            kind = f"cannot read {self.url} ({what})"
        return self._scrub(f"svn: {kind}: {detail[-300:]}")

    def _scrub(self, text):
        if self.password:
            text = text.replace(str(self.password), "***")
        return text

    # --- the interface
    def _target(self, ref):
        """``(path, peg)`` for a ref: a revision number of trunk, or a path at HEAD."""
        match = REVISION_RE.fullmatch(str(ref))
        if match:
            return self.trunk, match.group(1)
        return str(ref).strip("/"), "HEAD"

    def refs(self, limit=50):
        out = {}
        for kind, folder in (("branches", "branches"), ("tags", "tags")):
            rows = []
            try:
                xml = self._svn(["list", "--xml", f"{self.url}/{folder}@HEAD"], f"{folder}@HEAD")
            except DeployError:
                xml = None  # a repository without that folder
            if xml:
                try:
                    entries = ET.fromstring(xml).iter("entry")
                    for entry in entries:
                        if entry.get("kind") != "dir":
                            continue
                        commit = entry.find("commit")
                        rows.append({"name": f"{folder}/{entry.findtext('name')}", "commit": commit.get("revision"),
                                     "committer": (commit.findtext("author") or "").strip(),
                                     "date": (commit.findtext("date") or "").strip(), "subject": ""})
                except (ET.ParseError, AttributeError):
                    raise DeployError(f"svn: {folder}@HEAD: unreadable answer from svn list") from None
            if kind == "branches":
                trunk = self.resolve(self.trunk)
                rows.append({"name": self.trunk, "commit": trunk.id, "committer": trunk.author,
                             "date": trunk.time.astimezone(datetime.timezone.utc).isoformat(), "subject": ""})
            rows.sort(key=lambda r: r["date"], reverse=True)
            out[kind] = rows[: int(limit)]
        return out

    def resolve(self, ref, branch=False):
        # ``branch`` (the env's default) needs no care here: an svn path names one folder, never a
        # branch and a tag at once
        path, peg = self._target(ref)
        what = f"{path}@{peg}" if peg == "HEAD" else f"{path}@r{peg}"
        out = self._svn(["info", "--xml", f"{self.url}/{path}@{peg}"], what)
        try:
            entry = ET.fromstring(out).find("entry")
            commit = entry.find("commit")
            rev = int(commit.get("revision"))
            author = (commit.findtext("author") or "").strip() or "unknown"
            when = datetime.datetime.fromisoformat(commit.findtext("date").strip().replace("Z", "+00:00"))
        except (ET.ParseError, AttributeError, TypeError, ValueError):
            raise DeployError(f"svn: {what}: unreadable answer from svn info") from None
        if entry.get("kind") != "dir":
            raise DeployError(f"svn: ref {ref!r} is a file in {self.url}, not a folder (trunk, branches/…, tags/…)")
        return Revision(id=str(rev), version=f"r{rev}", author=author, time=when, branch=path)

    def export(self, revision, dest):
        """``svn export`` of the folder at its revision (of its ``subdir`` only, when given; no
        externals), unpacked with the nodes' checks."""
        folder = f"{revision.branch}/{self.subdir}" if self.subdir else revision.branch
        with tempfile.TemporaryDirectory(prefix="svn-export-", dir=os.path.dirname(dest)) as tmp:
            tree = os.path.join(tmp, "tree")
            self._svn(["export", "--quiet", "--ignore-externals", f"{self.url}/{folder}@{revision.id}", tree],
                      f"{folder}@r{revision.id}")
            if not os.path.isdir(tree):
                raise DeployError(f"svn: subdir {self.subdir!r} is not a folder at r{revision.id}")
            # the same member checks as a git archive: no link out of the tree reaches the build
            tar = os.path.join(tmp, "svn.tar")
            with tarfile.open(tar, "w") as fh:
                for name in sorted(os.listdir(tree)):
                    fh.add(os.path.join(tree, name), arcname=name)
            archive.unpack(tar, dest)


def _one_line(value):
    value = str(value)
    if "\n" in value or "\r" in value or "\0" in value:
        raise DeployError("svn: pillar svn:username and svn:password must be one line each")
    return value


SOURCE = SvnSource
