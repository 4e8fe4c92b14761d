"""git submodules in a release (pillar ``submodules: true``): each at the commit the release's tree records.

The release's tree names each submodule by a gitlink (its path and commit) and its URL in the
``.gitmodules`` of the same commit.  Each submodule is mirrored on the master beside the project's
mirror (``<deploy_state_dir>/git/<project>.modules/``) and its commit's tree is unpacked in place,
with the same member checks as the project's own; nested submodules likewise, at most
:data:`MAX_DEPTH` deep.

A committer writes ``.gitmodules``, so its URLs are checked before the master fetches anything.
A relative URL (``../lib.git``) is resolved against the project's ``repo`` as git does; then the URL
must have the scheme and host of the project's ``repo`` (a ``repo`` on the master's own disk: lie in
the folder that holds it), or start with an entry of the pillar's ``submodule_urls``; git's ``ext::``
and ``fd::`` transports are never allowed (``GIT_ALLOW_PROTOCOL``).
"""

import hashlib
import os
import posixpath
import urllib.parse

from deploy_master import DeployError

MAX_DEPTH = 4
ALLOW_PROTOCOL = "file:git:http:https:ssh"  # never ext:: (runs a command) or fd::
GITLINK = "160000"


def export(source, repo, commit, subdir, dest, unpack, git, base_url=None, depth=0):
    """Unpack every submodule of ``commit`` (under ``subdir``, when given) into ``dest``: ``unpack(repo, commit,
    folder)`` is the git source's export of one tree, ``git`` the gitpython module it imported."""
    links = gitlinks(repo, commit)
    if subdir:
        links = {p[len(subdir) + 1:]: sha for p, sha in links.items() if p.startswith(subdir + "/")}
        urls = {p[len(subdir) + 1:]: u for p, u in gitmodules(repo, commit).items() if p.startswith(subdir + "/")}
    else:
        urls = gitmodules(repo, commit) if links else {}
    if links and depth >= MAX_DEPTH:
        raise DeployError(f"git: submodules nested deeper than {MAX_DEPTH}: refused")
    for path, sha in sorted(links.items()):
        if path not in urls:
            raise DeployError(f"git: submodule {path!r} has no url in .gitmodules at {commit[:10]}")
        url = absolute(urls[path], base_url or source.url)
        check_url(url, source.url, source.conf.get("submodule_urls") or [], path)
        mirror = _mirror(source, git, url, path)
        try:
            mirror.commit(sha)
        except Exception:  # pylint: disable=broad-except  # gitpython raises several kinds
            raise DeployError(f"git: submodule {path!r}: commit {sha[:10]} is not in its repository") from None
        target = os.path.join(dest, path)
        os.makedirs(target, exist_ok=True)
        unpack(mirror, sha, target)
        export(source, mirror, sha, None, target, unpack, git, url, depth + 1)


def gitlinks(repo, commit):
    """path -> commit of every gitlink in ``commit``'s tree."""
    out = repo.git.ls_tree("-r", "-z", "--full-tree", commit)
    links = {}
    for entry in out.split("\0"):
        if not entry:
            continue
        meta, path = entry.split("\t", 1)
        mode, kind, sha = meta.split()
        if mode == GITLINK and kind == "commit":
            links[path] = sha
    return links


def gitmodules(repo, commit):
    """path -> url from ``commit``'s ``.gitmodules`` ({} when it has none)."""
    try:
        out = repo.git.config("--blob", f"{commit}:.gitmodules", "-z", "--get-regexp", r"^submodule\..*\.(path|url)$")
    except Exception:  # pylint: disable=broad-except  # no .gitmodules, or no entry
        return {}
    names = {}
    for item in out.split("\0"):
        if "\n" not in item:
            continue
        key, value = item.split("\n", 1)
        name, field = key[len("submodule."):].rsplit(".", 1)
        names.setdefault(name, {})[field] = value
    return {v["path"]: v["url"] for v in names.values() if "path" in v and "url" in v}


def absolute(url, base):
    """``url`` resolved as git resolves a submodule's relative URL against its superproject's."""
    if not url.startswith(("./", "../")):
        return url
    parts = urllib.parse.urlsplit(base)
    if parts.scheme:
        path = posixpath.normpath(posixpath.join(parts.path.rstrip("/"), url))
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    return posixpath.normpath(posixpath.join(base.rstrip("/"), url))


def check_url(url, repo_url, allowed, path):
    """DeployError unless ``url`` may be fetched for the submodule at ``path`` (module docstring)."""
    if any(c in url for c in "\n\r\0") or url.startswith("-") or "::" in url:
        raise DeployError(f"git: submodule {path!r}: url refused")
    if any(url.startswith(str(prefix)) for prefix in allowed):
        return
    mine, theirs = urllib.parse.urlsplit(repo_url), urllib.parse.urlsplit(url)
    if mine.scheme and (mine.scheme, mine.hostname) == (theirs.scheme, theirs.hostname) and theirs.hostname:
        return
    if not mine.scheme and not theirs.scheme and os.path.isabs(url) and os.path.isabs(repo_url):
        home = os.path.dirname(os.path.normpath(repo_url))
        if os.path.commonpath([home, os.path.normpath(url)]) == home:
            return  # beside the project's own repository on the master, or below that folder
    raise DeployError(f"git: submodule {path!r}: its url is neither relative nor on the repository's host: "
                      "add its prefix to the pillar's submodule_urls to allow it")


def _mirror(source, git, url, path):
    folder = os.path.join(os.path.dirname(source.path), f"{source.project}.modules")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    mirror = os.path.join(folder, hashlib.sha256(url.encode()).hexdigest()[:24] + ".git")
    env = {"GIT_TERMINAL_PROMPT": "0", "GIT_ALLOW_PROTOCOL": ALLOW_PROTOCOL}
    try:
        if os.path.isdir(mirror):
            repo = git.Repo(mirror)
            with repo.git.custom_environment(**env):
                repo.git.fetch("--prune", "origin")
        else:
            repo = git.Repo.clone_from(url, mirror, mirror=True, env=env)
    except git.GitCommandError as exc:
        raise DeployError(f"git: submodule {path!r}: cannot fetch it: {(exc.stderr or '').strip()[-200:]}") from None
    return repo
