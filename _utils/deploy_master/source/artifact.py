"""Bytes built elsewhere as a source: a tar.gz, zip or WAR that CI made, named by its sha256.

Pillar (``vcs: artifact``), or the runner's arguments (``artifact=URL sha256=HEX version=V``),
which win over the pillar::

    vcs: artifact
    artifact:
      url: https://ci.example.com/rainbow/rainbow-1.4.2.tar.gz   # https://, salt://, or a file on the master
      sha256: 9f86d08…                                          # required, checked before anything else

The ref of a release is its version (``version=1.4.2``): it names the release with the time of the
release and the person who started it.  :meth:`ArtifactSource.resolve` fetches the bytes into the
master's cache (``<deploy_state_dir>/artifact/<project>/<sha256>``), hashing them as they arrive; a
download that fails or does not match is refused before anything else happens.  :meth:`export`
unpacks them with the same member checks as a git archive: a tar (gzip or not) as it is, a zip or a
WAR (a zip) as Tomcat unpacks a WAR into its folder.

Where the bytes may come from: ``https://`` (no redirect followed, no proxy from the environment,
``artifact:timeout`` seconds, default 300), ``salt://`` (the master's own fileserver), or an
absolute path on the master inside one of the folders the master option ``deploy_artifact_dirs``
lists (none by default: a path elsewhere is refused, so that a caller of the runner cannot release
any file root can read).  Every archive is bounded by ``artifact:max_bytes`` (default 2 GiB,
unpacked) and 100,000 members.
"""

import datetime
import hashlib
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile

from salt.exceptions import SaltInvocationError

from deploy_master import DeployError, UnknownRef, archive, manifest, names, statedir, web
from deploy_master.source import Revision, Source

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
SCHEMES = ("https", "salt")
TIMEOUT = 300
MAX_BYTES = 2 * 1024**3
MAX_MEMBERS = 100_000
CHUNK = 1 << 20
KEYS = ("url", "sha256", "timeout", "max_bytes")
ARGUMENTS = ("artifact", "sha256", "version")  # the runner's own, for one release


def settings(conf, where="artifact"):
    """The project's ``artifact`` dict, checked: ``{url, sha256, timeout, max_bytes}``."""
    raw = conf.get("artifact")
    if not isinstance(raw, dict):
        raise SaltInvocationError(f"{where}: give artifact=URL and sha256=HEX (or pillar artifact: url, sha256)")
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise SaltInvocationError(f"{where}: unknown key(s) {', '.join(unknown)}: use {', '.join(KEYS)}")
    url = str(raw.get("url") or "")
    if raw.get("sha256") is not None and not isinstance(raw.get("sha256"), str):  # YAML made a number of it
        raise SaltInvocationError(f"{where}: sha256 must be text (64 hex digits): quote it")
    digest = str(raw.get("sha256") or "").strip().lower()
    if not url:
        raise SaltInvocationError(f"{where}: the artifact's url is missing")
    if not SHA256_RE.match(digest):
        raise SaltInvocationError(f"{where}: sha256 must be the 64 hex digits of the artifact's sha256")
    if any(c in url for c in "\n\r\0"):
        raise SaltInvocationError(f"{where}: the url holds control characters")
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme and scheme not in SCHEMES:
        raise SaltInvocationError(f"{where}: url must be https://, salt:// or an absolute path on the master")
    if not scheme and not os.path.isabs(url):
        raise SaltInvocationError(f"{where}: url must be https://, salt:// or an absolute path on the master")
    try:
        timeout = float(raw.get("timeout", TIMEOUT))
        max_bytes = int(raw.get("max_bytes", MAX_BYTES))
    except (TypeError, ValueError):
        raise SaltInvocationError(f"{where}: timeout and max_bytes must be numbers") from None
    return {"url": url, "sha256": digest, "timeout": timeout, "max_bytes": max_bytes}


def from_arguments(conf, ref, artifact=None, sha256=None, version=None):
    """The runner's ``artifact=``, ``sha256=`` and ``version=``: ``(conf, ref)`` for the release.

    Given, they make the project an artifact project for this run (and win over its pillar); a
    project with ``vcs: artifact`` needs ``version=`` (its ref); SaltInvocationError otherwise."""
    if artifact is None and sha256 is None and version is None:
        if conf.get("vcs") == "artifact" and ref is None:
            raise SaltInvocationError("vcs artifact: give version= (the release's version)")
        return conf, ref
    if version is None and ref is None:
        raise SaltInvocationError("artifact=: give version= (the release's version)")
    if ref is not None and version is not None and str(ref) != str(version):
        raise SaltInvocationError("artifact=: give version= or ref=, not both")
    if artifact is not None or sha256 is not None:
        given = {**(conf.get("artifact") or {}), **({"url": artifact} if artifact is not None else {}),
                 **({"sha256": sha256} if sha256 is not None else {})}
        conf = {**conf, "vcs": "artifact", "artifact": given}
    elif conf.get("vcs") != "artifact":
        raise SaltInvocationError("version= is for artifact releases: give artifact= and sha256= too")
    settings(conf)
    return conf, str(version if version is not None else ref)


class ArtifactSource(Source):
    """Fetched once per sha256 into the master's cache; the version is the release's ref."""

    kind = "artifact"

    def __init__(self, opts, project, conf):
        super().__init__(opts, project, {**conf, "repo": (conf.get("artifact") or {}).get("url")})
        self.settings = settings(conf)
        self.cache = statedir.folder(opts, "artifact", project)

    def _cached(self):
        return os.path.join(self.cache, self.settings["sha256"])

    def resolve(self, ref, branch=False):
        version = names.valid(str(ref), names.REF_RE, "version")
        path = self._cached()
        if not os.path.isfile(path):
            self._fetch(path)
        user, _ = names.caller()
        return Revision(id=self.settings["sha256"], version=version, author=user,
                        time=datetime.datetime.now(datetime.timezone.utc), branch="artifact")

    def refs(self, limit=50):
        return {"branches": [], "tags": []}

    # --- fetching
    def _fetch(self, path):
        url, want = self.settings["url"], self.settings["sha256"]
        fd, tmp = tempfile.mkstemp(prefix=".fetch-", dir=self.cache)
        digest, size = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in self._chunks(url):
                    size += len(chunk)
                    if size > self.settings["max_bytes"]:
                        raise DeployError(f"artifact: {self._shown()} is larger than max_bytes "
                                          f"({self.settings['max_bytes']}): nothing was released")
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != want:
                raise UnknownRef(f"artifact: {self._shown()} does not match sha256 {want} (got "
                                 f"{digest.hexdigest()}): nothing was released")
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _shown(self):
        """The url without its query and user info (a token there is never repeated)."""
        parts = urllib.parse.urlsplit(self.settings["url"])
        host = parts.hostname or ""
        return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", "")) if parts.scheme else parts.path

    def _chunks(self, url):
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme == "https":
            yield from self._https(url)
        elif scheme == "salt":
            yield from _read(self._from_fileserver(url))
        else:
            yield from _read(self._local(url))

    def _https(self, url):
        request = urllib.request.Request(url, headers={"User-Agent": "salt-deploy"})
        try:
            with web.OPENER.open(request, timeout=self.settings["timeout"]) as response:  # nosec: pillar/caller URL
                while True:
                    chunk = response.read(CHUNK)
                    if not chunk:
                        return
                    yield chunk
        except urllib.error.HTTPError as exc:
            exc.close()
            what = "redirects are not followed" if 300 <= exc.code < 400 else "refused"
            raise DeployError(f"artifact: {self._shown()}: HTTP {exc.code} ({what}): nothing was released") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc.__class__.__name__
            raise DeployError(f"artifact: {self._shown()}: download failed ({reason}): nothing was released") from None

    def _from_fileserver(self, url):
        import salt.fileclient  # pylint: disable=import-outside-toplevel

        client = salt.fileclient.FSClient(self.opts)
        try:
            cached = client.cache_file(url, "base")
        finally:
            client.destroy()
        if not cached:
            raise DeployError(f"artifact: {url} is not on the master's fileserver: nothing was released")
        return cached

    def _local(self, path):
        allowed = self.opts.get("deploy_artifact_dirs") or []
        if isinstance(allowed, str):
            allowed = [allowed]
        real = os.path.realpath(path)
        for folder in allowed:
            base = os.path.realpath(str(folder))
            if os.path.commonpath([base, real]) == base and real != base:
                if not os.path.isfile(real):
                    raise DeployError(f"artifact: {path} is not a file on the master: nothing was released")
                return real
        raise SaltInvocationError(f"artifact: {path} is not inside a folder of the master option "
                                  "deploy_artifact_dirs: a file on the master is released only from there")

    # --- unpacking
    def export(self, revision, dest):
        path = self._cached()
        if revision.id != self.settings["sha256"] or not os.path.isfile(path):
            raise DeployError("artifact: the fetched bytes are gone from the master's cache: release again")
        if manifest.sha256(path) != revision.id:  # the cache is root's; checked again all the same
            os.unlink(path)
            raise DeployError("artifact: the cached bytes changed: removed; release again")
        if zipfile.is_zipfile(path):
            _unzip(path, dest, self.settings["max_bytes"])
        elif tarfile.is_tarfile(path):
            with tarfile.open(path) as tar:
                _bounded(tar.getmembers(), lambda m: m.size, self.settings["max_bytes"])
            archive.unpack(path, dest)
        else:
            raise DeployError("artifact: not a tar, tar.gz, zip or WAR: nothing was released")


def _read(path):
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(CHUNK)
            if not chunk:
                return
            yield chunk


def _bounded(members, size, max_bytes):
    if len(members) > MAX_MEMBERS:
        raise DeployError(f"artifact: more than {MAX_MEMBERS} members: refused")
    total = sum(size(m) for m in members)
    if total > max_bytes:
        raise DeployError(f"artifact: {total} bytes unpacked, more than max_bytes ({max_bytes}): refused")


def _unzip(path, dest, max_bytes):
    """A zip or WAR, each member checked first (nothing is written if one is unsafe): regular files and
    folders only, inside ``dest``; file modes from the zip when it has them (0644 / 0755 otherwise)."""
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        _bounded(infos, lambda i: i.file_size, max_bytes)
        for info in infos:
            parts = [p for p in info.filename.replace("\\", "/").split("/") if p not in ("", ".")]
            kind = (info.external_attr >> 16) & 0o170000
            if info.filename.startswith(("/", "\\")) or ".." in parts or not parts or ":" in parts[0]:
                raise DeployError(f"archive member {info.filename!r} is unsafe (absolute path or '..'): "
                                  "release refused")
            if kind not in (0, 0o100000, 0o040000):
                raise DeployError(f"archive member {info.filename!r} is a link or special file: release refused")
        for info in infos:
            parts = [p for p in info.filename.replace("\\", "/").split("/") if p not in ("", ".")]
            target = os.path.join(dest, *parts)
            try:
                os.makedirs(target if info.is_dir() else os.path.dirname(target), exist_ok=True)
            except OSError as exc:
                raise DeployError(f"archive member {info.filename!r}: {exc.strerror}: release refused") from None
            if info.is_dir():
                continue
            mode = (info.external_attr >> 16) & 0o777
            try:
                with zf.open(info) as src, open(target, "xb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
            except OSError as exc:  # a name twice, or a file where a folder is
                raise DeployError(f"archive member {info.filename!r}: {exc.strerror}: release refused") from None
            os.chmod(target, 0o755 if mode & 0o100 else 0o644)


SOURCE = ArtifactSource
