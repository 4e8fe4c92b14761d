"""What a release would change, before anyone confirms it: the commits (git) or revisions (svn) between
what an env's nodes run and the target ref, and, per config file the project renders, which of its
keys changed in the template, never a value.

Nodes are grouped by the commit they run now (a cluster usually runs one).  The config comparison reads
the templates of the two commits in the repository (``config: {dest: {source: path}}``, paths in the
release); it renders nothing, so no pillar value or secret is ever read.  A key is a line's name in
``key = value``, ``key: value`` or ``KEY=value`` form, under its ``[section]`` when there is one.
"""

import hashlib
import re
import xml.etree.ElementTree as ET

from deploy_master import DeployError

KEY_RE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.\-]*)\s*[=:]")
SECTION_RE = re.compile(r"^\s*\[([^\]]+)\]\s*$")
COMMENT = ("#", ";", "//")
LIMIT = 100  # commits listed at most per group


def config_keys(text):
    """key -> a digest of its line (values are compared, never kept), for the keys of a config template."""
    out, section = {}, ""
    for line in (text or "").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(COMMENT):
            continue
        match = SECTION_RE.match(line)
        if match:
            section = match.group(1).strip() + "."
            continue
        match = KEY_RE.match(line)
        if match:
            out[section + match.group(1)] = hashlib.sha256(stripped.encode()).hexdigest()
    return out


def changed_keys(old_text, new_text):
    """``{"added": [...], "removed": [...], "changed": [...]}``: key names only."""
    old, new = config_keys(old_text), config_keys(new_text)
    return {
        "added": sorted(set(new) - set(old)),
        "removed": sorted(set(old) - set(new)),
        "changed": sorted(k for k in set(old) & set(new) if old[k] != new[k]),
    }


def config_sources(conf):
    """dest -> the template's path in the release, for the project's ``config`` entries kept in the repository
    (a ``salt://`` source is not in the release: left out)."""
    out = {}
    for dest, entry in sorted((conf.get("config") or {}).items()):
        source = (entry or {}).get("source") if isinstance(entry, dict) else None
        if isinstance(source, str) and source and not source.startswith("salt://"):
            out[dest] = source.lstrip("/")
    return out


class _Git:
    def __init__(self, source):
        self.repo = source.repo

    def commits(self, old, new):
        """(commits in new not in old, commits in old not in new), newest first."""
        def rows(spec):
            return [{"id": c.hexsha, "short": c.hexsha[:10], "author": c.committer.name,
                     "date": c.committed_datetime.isoformat(), "subject": c.summary}
                    for c in self.repo.iter_commits(spec, max_count=LIMIT)]
        return rows(f"{old}..{new}"), rows(f"{new}..{old}")

    def read(self, commit, path):
        try:
            return self.repo.git.show(f"{commit}:{path}")
        except Exception:  # noqa: BLE001  (git says why; a missing file is simply absent)
            return None

    def known(self, commit):
        try:
            self.repo.git.cat_file("-e", f"{commit}^{{commit}}")
            return True
        except Exception:  # noqa: BLE001
            return False


class _Svn:
    def __init__(self, source, branch):
        self.source, self.branch = source, branch

    def _log(self, first, last):
        if first > last:
            return []
        xml = self.source._svn(  # pylint: disable=protected-access
            ["log", "--xml", "-l", str(LIMIT), "-r", f"{last}:{first}", f"{self.source.url}/{self.branch}@{last}"],
            f"{self.branch}@r{last}")
        rows = []
        for entry in ET.fromstring(xml).iter("logentry"):
            rev = entry.get("revision")
            rows.append({"id": rev, "short": f"r{rev}", "author": (entry.findtext("author") or "").strip(),
                         "date": (entry.findtext("date") or "").strip(),
                         "subject": (entry.findtext("msg") or "").strip().splitlines()[:1] or [""]})
            rows[-1]["subject"] = rows[-1]["subject"][0]
        return rows

    def commits(self, old, new):
        old, new = int(old), int(new)
        return (self._log(old + 1, new), []) if new >= old else ([], self._log(new + 1, old))

    def read(self, commit, path):
        try:
            return self.source._svn(["cat", f"{self.source.url}/{self.branch}/{path}@{commit}"],  # pylint: disable=protected-access
                                    f"{self.branch}/{path}@r{commit}")
        except DeployError:
            return None

    def known(self, commit):
        return str(commit).isdigit()


def currents(inventories):
    """node -> the commit its current release was built from (None: no current release), from the nodes'
    inventories."""
    out = {}
    for node, inv in inventories.items():
        cur = next((r for r in inv["releases"] if r.get("current")), None)
        out[node] = (cur or {}).get("commit")
    return out


def compare(source, conf, target, currents):
    """The preview: ``target`` a resolved :class:`deploy_master.source.Revision`, ``currents`` node -> the
    commit it runs now (None: no release).  Returns ``{"target": {...}, "groups": [{"nodes", "from",
    "commits", "reverted", "config": [{"file", "source", "added", "removed", "changed", "new"|"gone"}]}]}``."""
    vcs = _Svn(source, target.branch) if source.kind == "svn" else _Git(source)
    by_commit = {}
    for node, commit in sorted(currents.items()):
        by_commit.setdefault(commit, []).append(node)
    groups = []
    templates = config_sources(conf)
    new_texts = {dest: vcs.read(target.id, path) for dest, path in templates.items()}
    for commit, nodes in sorted(by_commit.items(), key=lambda item: item[1]):
        group = {"nodes": nodes, "from": commit, "commits": [], "reverted": [], "config": []}
        if commit and vcs.known(commit):
            group["commits"], group["reverted"] = vcs.commits(commit, target.id)
        elif commit:
            group["unknown"] = True  # not in the repository (any more): nothing to compare
        for dest, path in templates.items():
            old_text = vcs.read(commit, path) if commit and not group.get("unknown") else None
            new_text = new_texts[dest]
            if old_text == new_text:
                continue
            row = {"file": dest, "source": path, **changed_keys(old_text, new_text)}
            if old_text is None:
                row["new"] = True
            if new_text is None:
                row["gone"] = True
            group["config"].append(row)
        groups.append(group)
    return {"target": {"ref": target.branch, "commit": target.id, "version": target.version}, "groups": groups}
