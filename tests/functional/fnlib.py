"""
Helpers for the functional tests: artifacts, the project (pillar, loaders, paths), tree snapshots.
"""

import contextlib
import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
import tempfile

from deploy_master.manifest import sha256

PROJECT = "rainbow"
USER = "www-data"
SECRET = "sms-s3cret-4711"
GOOD_MARK = "rainbow-ok"

APP_FILES = {
    "public/index.php": f"<?php echo '{GOOD_MARK} @RELEASE@'; ?>\n",
    "config/app.ini.example": "; rainbow\nkey = {{ pillar.rainbow_secrets.sms_key }}\nrelease = {{ release }}\n",
    "storage/logs/.gitkeep": "",
}


def build_tar(path, files=None, members=(), mode="w:gz"):
    """
    Write a tar archive: ``files`` {name: text}, then crafted ``members`` [(TarInfo, bytes|None)].

    Reproducible (no timestamps, gzip header included): the same content, the same checksum.
    """
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(path, "wb"))
        if mode == "w:gz":
            out = stack.enter_context(gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename=""))
        tar = stack.enter_context(tarfile.open(fileobj=out, mode="w"))
        dirs = set()
        for name, text in sorted((files if files is not None else APP_FILES).items()):
            parts = name.split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
            data = text.encode() if isinstance(text, str) else text
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def tree(root):
    """Everything under root: {relpath: (kind, detail)}; to prove a tree was left untouched."""
    out = {}
    if not os.path.lexists(root):
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            rel = os.path.relpath(full, root)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(full), st.st_ino)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_uid)
            else:
                with open(full, "rb") as fh:
                    out[rel] = ("file", hashlib.sha256(fh.read()).hexdigest(), st.st_uid, stat.S_IMODE(st.st_mode))
    return out


class Project:
    """One project root on the (simulated) node, its pillar, artifacts and the loaders."""

    def __init__(self, loaders, base, workdir, label):
        self.loaders = loaders
        self.base = base
        self.workdir = workdir  # the same path for every test: the pillar rarely changes
        self.root = os.path.join(workdir, PROJECT)
        self.artifacts = tempfile.mkdtemp(prefix=f"{label}-", dir=os.path.join(base, "files", "artifacts"))
        self.conf = {
            "root": self.root,
            "user": USER,
            "group": USER,
            "keep_releases": 5,
            "shared": ["storage/logs"],
            "config": {"config/app.ini": {"source": "config/app.ini.example", "mode": "0640"}},
            "files": {"config/crontab.xml": {"contents": "<crontab/>\n", "mode": "0644"}},
            "restart": [],
            "checks": [],
            "template_pillar": ["rainbow_secrets"],  # what the config templates may read
        }
        self.extra_pillar = {"rainbow_secrets": {"sms_key": SECRET}}
        self.write_pillar()

    # ---- pillar and loaders
    def write_pillar(self, reload=True, **changes):
        """
        Update the project's pillar (``None`` removes a key) and reload the loaders if it changed.

        ``reload=False`` only writes the files: what ``prepare`` sees (it compiles the pillar
        afresh) but not ``__pillar__`` (activate, switch, releases, cleanup).
        """
        for key, value in changes.items():
            if value is None:
                self.conf.pop(key, None)
            else:
                self.conf[key] = value
        pillar_dir = os.path.join(self.base, "pillar")
        with open(os.path.join(pillar_dir, "top.sls"), "w", encoding="utf-8") as fh:
            fh.write("base:\n  '*':\n    - deploy\n")
        text = json.dumps({"deploy": {"projects": {PROJECT: self.conf}}, **self.extra_pillar})  # JSON is YAML
        with open(os.path.join(pillar_dir, "deploy.sls"), "w", encoding="utf-8") as fh:
            fh.write(text)
        if not reload:
            return
        if getattr(self.loaders, "deploy_pillar_text", None) != text:
            self.loaders.reload_all()  # new loaders: __pillar__ is the pillar just written
            self.loaders.deploy_pillar_text = text
        assert self.loaders.opts["pillar"]["deploy"]["projects"][PROJECT] == self.conf
        # Without a minion daemon, saltutil.refresh_pillar spends a second failing to reach the
        # minion's event bus: record the request instead (load saltutil first so it sticks).
        self.pillar_refreshes = []
        mods = self.loaders.modules
        assert mods.saltutil.refresh_pillar
        mods["saltutil.refresh_pillar"] = lambda **kwargs: self.pillar_refreshes.append(kwargs) or True

    @property
    def mod(self):
        return self.loaders.modules.deploy

    @property
    def states(self):
        return self.loaders.states.deploy

    # ---- artifacts
    def artifact(self, name, files=None, members=(), marker=None, mode="w:gz"):
        """Build an artifact; returns (salt:// url, local path, sha256)."""
        if files is None:
            files = {k: v.replace("@RELEASE@", marker or name) for k, v in APP_FILES.items()}
        ext = "tar.gz" if mode == "w:gz" else "tar"
        path = build_tar(os.path.join(self.artifacts, f"{name}.{ext}"), files, members, mode)
        url = f"salt://artifacts/{os.path.basename(self.artifacts)}/{name}.{ext}"
        return url, path, sha256(path)

    def prepare(self, release, files=None, meta=None, **kwargs):
        url, _, checksum = self.artifact(release, files=files, **kwargs)
        return self.mod.prepare(PROJECT, release, url, checksum, meta=meta)

    def deploy(self, release, status="good", **kwargs):
        """Prepare, activate and mark a release (the end state of a normal switch)."""
        self.prepare(release, **kwargs)
        self.mod.activate(PROJECT, release)
        if status != "prepared":
            self.mod.mark(PROJECT, release, status)

    # ---- paths
    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def release_dir(self, release):
        return self.path("releases", release)

    @property
    def current(self):
        link = self.path("current")
        return os.path.basename(os.readlink(link)) if os.path.islink(link) else None

    def meta(self, release):
        with open(self.path("meta", f"{release}.json"), encoding="utf-8") as fh:
            return json.load(fh)

    def release_names(self):
        return sorted(os.listdir(self.path("releases"))) if os.path.isdir(self.path("releases")) else []

    def leftovers(self):
        """Temporary names a failed prepare or switch must not leave behind."""
        found = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in dirnames + filenames:
                if name.startswith((".tmp-", ".current-")) or ".tmp-" in name:
                    found.append(os.path.join(dirpath, name))
        return found

    def tree(self):
        return tree(self.root)




def content_artifact(directory, name, files=None, links=None, executable=(), marker=None):
    """A content archive as the master builds it (deploy_master.manifest): ``files`` {path: text},
    ``links`` {path: target}, ``executable`` paths with mode 0755.  Returns
    (path, sha256, manifest, {sha: content bytes})."""
    from deploy_master import manifest  # pylint: disable=import-outside-toplevel

    if files is None:
        files = {k: v.replace("@RELEASE@", marker or name) for k, v in APP_FILES.items()}
    with tempfile.TemporaryDirectory(prefix="ca-", dir=directory) as tree:
        for rel, text in files.items():
            full = os.path.join(tree, rel)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "wb") as fh:
                fh.write(text.encode() if isinstance(text, str) else text)
            os.chmod(full, 0o755 if rel in executable else 0o644)
        for rel, target in (links or {}).items():
            full = os.path.join(tree, rel)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            os.symlink(target, full)
        doc, blobs = manifest.scan(tree)
        contents = {}
        for sha, path in blobs.items():
            with open(path, "rb") as fh:
                contents[sha] = fh.read()
        out = os.path.join(directory, f"{name}.tar.gz")
        manifest.write_archive(out, doc, blobs)
    return out, sha256(out), doc, contents


def write_content_archive(path, doc, contents):
    """A content archive with any manifest and contents (crafted ones too): {name: bytes}."""
    from deploy_master import manifest  # pylint: disable=import-outside-toplevel

    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz, \
            tarfile.open(fileobj=gz, mode="w") as tar:
        data = manifest.dumps(doc)
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for name, blob in contents.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path, sha256(path)
