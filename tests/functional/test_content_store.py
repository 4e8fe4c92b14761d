"""
Incremental distribution on the node: the content store, releases built from
it and a content archive, the tree hash verified before a release can be switched to, and blob
garbage collection that agrees with cleanup.

Real files, real hard links, the real unprivileged user www-data as the app user.
"""

import hashlib
import os
import pwd
import stat
import subprocess

import pytest
from salt.exceptions import CommandExecutionError
from tests.functional.fnlib import APP_FILES, PROJECT, SECRET, USER, content_artifact, write_content_archive

APP = pwd.getpwnam(USER)
BIG = {f"lib/mod{i}.php": f"<?php // module {i}\n" + "x" * 2000 for i in range(20)}


def _files(marker, **changes):
    files = {k: v.replace("@RELEASE@", marker) for k, v in APP_FILES.items()}
    files.update(BIG)
    for path, text in changes.items():
        files[path] = text
    return files


def _artifact(project, name, files, **kwargs):
    path, checksum, doc, contents = content_artifact(project.artifacts, name, files, **kwargs)
    url = f"salt://artifacts/{os.path.basename(project.artifacts)}/{os.path.basename(path)}"
    return url, checksum, doc, contents


def _part(project, name, doc, contents, wanted):
    path, checksum = write_content_archive(os.path.join(project.artifacts, f"{name}.tar.gz"), doc,
                                           {sha: contents[sha] for sha in wanted})
    return f"salt://artifacts/{os.path.basename(project.artifacts)}/{name}.tar.gz", checksum


def _blobs(doc):
    return sorted({e[4] for e in doc["entries"] if e[1] == "f"})


def _manifest_url(project, name, doc, data=None):
    """The release's manifest beside its artifact on the fileserver, as the master publishes it."""
    from deploy_master import manifest  # pylint: disable=import-outside-toplevel

    with open(os.path.join(project.artifacts, f"{name}.manifest.json"), "wb") as fh:
        fh.write(data if data is not None else manifest.dumps(doc))
    return f"salt://artifacts/{os.path.basename(project.artifacts)}/{name}.manifest.json"


def _ask(project, release, doc):
    return project.mod.lacking(PROJECT, release, doc["tree"], manifest=_manifest_url(project, release, doc))


def _prepare(project, release, url, checksum, doc):
    return project.mod.prepare(PROJECT, release, url, checksum, tree=doc["tree"], inventory=True)


def _store(project):
    return project.path("content")


def _as_app_user(*argv, check=True):
    return subprocess.run(list(argv), check=check, user=APP.pw_uid, group=APP.pw_gid, extra_groups=[],
                          capture_output=True, text=True)


def _first(project, release="r1", **changes):
    url, checksum, doc, contents = _artifact(project, release, _files(release, **changes))
    total = len(_blobs(doc))
    assert _ask(project, release, doc) == {
        "release": release, "prepared": False, "lacking": [[0, total]], "have": 0, "total": total}
    ret = _prepare(project, release, url, checksum, doc)
    assert ret["changed"] is True, ret
    return doc, contents


def test_a_first_release_is_built_from_read_only_root_blobs_and_verified(project):
    doc, _ = _first(project)
    final = project.release_dir("r1")
    store = _store(project)
    st = os.lstat(store)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o700)
    for entry in doc["entries"]:
        path, kind, mode, size, ref = entry
        full = os.path.join(final, path)
        if path.startswith("storage/logs") or path == "config/app.ini":
            continue  # a shared link and a rendered config
        lst = os.lstat(full)
        if kind == "f":
            blob = os.lstat(os.path.join(store, ref))
            assert lst.st_ino == blob.st_ino, path  # a hard link to the blob
            assert (blob.st_uid, stat.S_IMODE(blob.st_mode)) == (0, 0o444)
            assert lst.st_size == size
        elif kind == "d":
            assert stat.S_ISDIR(lst.st_mode) and (lst.st_uid, stat.S_IMODE(lst.st_mode)) == (0, 0o755)
    # the per-node files are written, never linked
    ini = os.path.join(final, "config", "app.ini")
    ist = os.lstat(ini)
    assert ist.st_nlink == 1 and (ist.st_uid, ist.st_gid) == (0, APP.pw_gid) and stat.S_IMODE(ist.st_mode) == 0o640
    with open(ini, encoding="utf-8") as fh:
        assert SECRET in fh.read()
    assert os.path.islink(os.path.join(final, "storage", "logs"))
    meta = project.meta("r1")
    assert meta["tree"] == doc["tree"] and meta["status"] == "prepared"
    assert project.leftovers() == []
    # the fetched archive does not stay in the minion's cache (it would double the disk used)
    cache = project.loaders.opts["cachedir"]
    assert not [f for _, _, fs in os.walk(cache) for f in fs if f == "r1.tar.gz"]


def test_the_app_user_cannot_write_through_a_release_file_nor_chmod_it(project):
    doc, _ = _first(project)
    target = os.path.join(project.release_dir("r1"), "lib", "mod1.php")
    before = open(target, "rb").read()  # noqa: SIM115
    got = _as_app_user("/bin/sh", "-c", f"echo pwned >> {target}", check=False)
    assert got.returncode != 0
    got = _as_app_user("/bin/chmod", "0666", target, check=False)
    assert got.returncode != 0
    with open(target, "rb") as fh:
        assert fh.read() == before
    sha = hashlib.sha256(before).hexdigest()
    with open(os.path.join(_store(project), sha), "rb") as fh:
        assert fh.read() == before


def test_a_second_release_lacks_only_the_changed_content_and_shares_the_rest(project):
    doc1, _ = _first(project)
    changed = {"lib/mod3.php": "<?php // module 3, new\n"}
    url, checksum, doc2, contents2 = _artifact(project, "r2", _files("r1", **changed))
    new_sha = hashlib.sha256(changed["lib/mod3.php"].encode()).hexdigest()
    ask = _ask(project, "r2", doc2)
    at = _blobs(doc2).index(new_sha)
    assert ask["lacking"] == [[at, at + 1]] and ask["prepared"] is False
    assert ask["have"] == len(_blobs(doc2)) - 1
    # the same question with the contents listed in the call (as from the command line)
    assert project.mod.lacking(PROJECT, "r2", doc2["tree"], _blobs(doc2)) == ask
    part_url, part_sum = _part(project, "r2.part", doc2, contents2, [new_sha])
    ret = _prepare(project, "r2", part_url, part_sum, doc2)
    assert ret["changed"] is True
    for name in BIG:
        a = os.lstat(os.path.join(project.release_dir("r1"), name))
        b = os.lstat(os.path.join(project.release_dir("r2"), name))
        assert (a.st_ino == b.st_ino) == (name != "lib/mod3.php"), name
    with open(os.path.join(project.release_dir("r2"), "lib", "mod3.php"), encoding="utf-8") as fh:
        assert fh.read() == changed["lib/mod3.php"]
    # the same release again: prepared, nothing lacking, nothing done
    assert _ask(project, "r2", doc2) == {"release": "r2", "prepared": True, "lacking": []}
    again = _prepare(project, "r2", url, checksum, doc2)
    assert again["changed"] is False


def test_executables_and_symlinks(project):
    files = _files("r1", **{"bin/run": "#!/bin/sh\necho run\n"})
    url, checksum, doc, _ = _artifact(project, "r1", files, executable=("bin/run",),
                                      links={"public/run": "../bin/run"})
    _prepare(project, "r1", url, checksum, doc)
    final = project.release_dir("r1")
    st = os.lstat(os.path.join(final, "bin", "run"))
    assert stat.S_IMODE(st.st_mode) == 0o555 and st.st_uid == 0
    assert os.readlink(os.path.join(final, "public", "run")) == "../bin/run"


def _refused(project, url, checksum, tree, match, release="r9"):
    before = project.tree()
    before = {k: v for k, v in before.items() if not k.startswith("content")}
    with pytest.raises(CommandExecutionError, match=match) as exc:
        project.mod.prepare(PROJECT, release, url, checksum, tree=tree)
    assert release not in project.release_names()
    assert not os.path.exists(project.path("meta", f"{release}.json"))
    assert project.leftovers() == []
    after = {k: v for k, v in project.tree().items() if not k.startswith("content")}
    assert after == before  # current, the other releases: untouched
    return str(exc.value)


def test_a_manifest_that_does_not_match_the_tree_hash_is_refused(project):
    _first(project)
    project.mod.activate(PROJECT, "r1")
    url, checksum, doc, _ = _artifact(project, "r9", _files("r9"))
    msg = _refused(project, url, checksum, "0" * 64, "tree hash")
    assert doc["tree"] in msg
    assert project.current == "r1"


def test_a_content_that_does_not_match_its_name_is_refused(project):
    _first(project)
    _, _, doc, contents = _artifact(project, "r9", _files("r9", **{"lib/new.php": "new\n"}))
    sha = hashlib.sha256(b"new\n").hexdigest()  # not in the store yet: it comes from the archive
    bad = {s: (b"evil" if s == sha else c) for s, c in contents.items()}
    url, checksum = _part(project, "bad", doc, bad, list(bad))
    _refused(project, url, checksum, doc["tree"], f"content {sha}.*does not match")


def test_a_content_neither_sent_nor_in_the_store_is_refused_by_name(project):
    _first(project)
    _, _, doc, contents = _artifact(project, "r9", _files("r9", **{"lib/new.php": "new\n"}))
    lost = hashlib.sha256(b"new\n").hexdigest()
    url, checksum = _part(project, "short", doc, contents, [])
    _refused(project, url, checksum, doc["tree"], f"lacks.*{lost}")


def test_a_damaged_blob_in_the_store_fails_the_tree_hash(project):
    doc, contents = _first(project)
    sha = hashlib.sha256(BIG["lib/mod5.php"].encode()).hexdigest()
    # cut short on disk (a crash, a full disk): not the size the manifest says
    project.mod.cleanup(PROJECT, keep=1)
    os.chmod(os.path.join(_store(project), sha), 0o644)
    with open(os.path.join(_store(project), sha), "r+b") as fh:
        fh.truncate(10)
    url, checksum, doc2, _ = _artifact(project, "r9", _files("r9"))
    _refused(project, url, checksum, doc2["tree"], "tree hash")


@pytest.mark.parametrize("entry, match", [
    (["../evil", "f", 0o644, 4, None], "unsafe"),
    (["/etc/evil", "f", 0o644, 4, None], "unsafe"),
    (["a/./b", "f", 0o644, 4, None], "unsafe"),
    (["out", "l", 0o777, 0, "../../etc"], "outside"),
    (["abs", "l", 0o777, 0, "/etc/passwd"], "outside"),
    (["public/x", "f", 0o644, 4, None], "folder"),  # public is not listed as a folder
])
def test_unsafe_manifest_entries_are_refused(project, entry, match):
    _first(project)
    sha = hashlib.sha256(b"evil").hexdigest()
    entry = [e if e is not None else sha for e in entry]
    entries = sorted([entry, ["config", "d", 0o755, 0, ""]], key=lambda e: e[0])
    doc = {"format": 1, "entries": entries}
    from deploy_master import manifest  # noqa: PLC0415
    doc["tree"] = manifest.tree_hash(entries)
    url, checksum = _part(project, "unsafe", doc, {sha: b"evil"}, [sha] if entry[1] == "f" else [])
    _refused(project, url, checksum, doc["tree"], match)


def test_a_link_through_a_symlink_entry_is_refused(project):
    _first(project)
    from deploy_master import manifest  # noqa: PLC0415
    sha = hashlib.sha256(b"evil").hexdigest()
    entries = [["d", "l", 0o777, 0, "."], ["d/x", "f", 0o644, 4, sha]]
    doc = {"format": 1, "entries": entries, "tree": manifest.tree_hash(entries)}
    url, checksum = _part(project, "through", doc, {sha: b"evil"}, [sha])
    _refused(project, url, checksum, doc["tree"], "folder")


def test_cleanup_removes_the_blobs_no_kept_release_uses_and_only_those(project):
    doc1, _ = _first(project)
    project.mod.activate(PROJECT, "r1")
    project.mod.mark(PROJECT, "r1", "good")
    url, checksum, doc2, _ = _artifact(project, "r2", _files("r1", **{"lib/mod3.php": "v2\n"}))
    _prepare(project, "r2", url, checksum, doc2)
    project.mod.activate(PROJECT, "r2")
    project.mod.mark(PROJECT, "r2", "good")
    old = hashlib.sha256(BIG["lib/mod3.php"].encode()).hexdigest()
    assert os.path.exists(os.path.join(_store(project), old))
    # r1 is the previous release: kept, and its blob with it
    ret = project.mod.cleanup(PROJECT, keep=1)
    assert "r1" in ret["kept"] and os.path.exists(os.path.join(_store(project), old))
    url, checksum, doc3, _ = _artifact(project, "r3", _files("r1", **{"lib/mod3.php": "v3\n"}))
    _prepare(project, "r3", url, checksum, doc3)
    project.mod.activate(PROJECT, "r3")
    project.mod.mark(PROJECT, "r3", "good")
    ret = project.mod.cleanup(PROJECT, keep=1)
    assert ret["removed"] == ["r1"]
    # mod3's first content, and the empty storage/logs/.gitkeep: storage/logs is a shared link in every release
    assert ret["blobs_removed"] == 2
    assert not os.path.exists(os.path.join(_store(project), old))  # only r1 used it
    for name in os.listdir(_store(project)):  # every blob left is used by a kept release
        assert os.lstat(os.path.join(_store(project), name)).st_nlink > 1, name
    assert not os.path.exists(project.path("meta", "manifest", "r1.json"))
    # r1 cannot be produced again from what is left: it is gone, and a switch to it is refused
    with pytest.raises(CommandExecutionError, match="not prepared"):
        project.mod.switch(PROJECT, "r1")
    assert project.current == "r3"


def test_a_rollback_target_whose_blobs_left_the_store_is_complete_by_its_own_links_or_refused(project):
    doc1, _ = _first(project)
    project.mod.activate(PROJECT, "r1")
    project.mod.mark(PROJECT, "r1", "good")
    url, checksum, doc2, _ = _artifact(project, "r2", _files("r2", **{"lib/mod3.php": "v2\n"}))
    _prepare(project, "r2", url, checksum, doc2)
    project.mod.activate(PROJECT, "r2")
    # every blob removed from the store (a GC gone wrong, a hand): r1 still holds its own links
    for name in os.listdir(_store(project)):
        os.unlink(os.path.join(_store(project), name))
    ret = project.mod.switch(PROJECT, "r1", checks="skip")
    assert ret["result"] is True and project.current == "r1"
    with open(os.path.join(project.release_dir("r1"), "lib", "mod3.php"), encoding="utf-8") as fh:
        assert fh.read() == BIG["lib/mod3.php"]
    project.mod.activate(PROJECT, "r2")
    # the app user cannot remove or replace a file of r1 (the release is root's); a hand can: r1 is refused
    victim = os.path.join(project.release_dir("r1"), "lib", "mod4.php")
    assert _as_app_user("/bin/rm", "-f", victim, check=False).returncode != 0 and os.path.exists(victim)
    os.unlink(victim)
    with pytest.raises(CommandExecutionError, match="incomplete.*lib/mod4.php"):
        project.mod.switch(PROJECT, "r1", checks="skip")
    assert project.current == "r2"
    other = os.path.join(project.release_dir("r1"), "lib", "mod6.php")
    os.unlink(other)
    os.symlink("/etc/shadow", other)
    with open(victim, "w", encoding="utf-8") as fh:
        fh.write("x\n")
    with pytest.raises(CommandExecutionError, match="incomplete"):
        project.mod.activate(PROJECT, "r1")
    assert project.current == "r2"


def test_a_config_file_shipped_in_the_tree_is_rendered_into_a_fresh_file_never_through_the_blob(project):
    template = "key = {{ pillar.rainbow_secrets.sms_key }}\n"
    project.write_pillar(config={"config/app.ini": {"source": "config/app.ini", "mode": "0640"}})
    url, checksum, doc, _ = _artifact(project, "r1", _files("r1", **{"config/app.ini": template}))
    _prepare(project, "r1", url, checksum, doc)
    sha = hashlib.sha256(template.encode()).hexdigest()
    with open(os.path.join(_store(project), sha), encoding="utf-8") as fh:
        assert fh.read() == template  # the blob keeps the template, no secret
    with open(os.path.join(project.release_dir("r1"), "config", "app.ini"), encoding="utf-8") as fh:
        assert fh.read() == f"key = {SECRET}\n"


def test_the_question_stays_small_whatever_the_release_holds(project):
    """The call carries a URL, not the contents: its arguments and answer, which the master reads
    from every node's return at a few hundred kB/s, do not grow with the files of the release."""
    files = _files("many", **{f"data/{i:04d}.txt": f"file {i}\n" for i in range(1000)})
    url, checksum, doc, _ = _artifact(project, "many", files)
    total = len(_blobs(doc))
    ask = _ask(project, "many", doc)
    assert total > 1000 and ask["lacking"] == [[0, total]] and ask["total"] == total
    assert len(repr(ask)) < 200
    project.mod.prepare(PROJECT, "many", url, checksum, tree=doc["tree"])
    files["data/0500.txt"] = "changed\n"
    _, _, doc2, _ = _artifact(project, "many2", files)
    at = _blobs(doc2).index(hashlib.sha256(b"changed\n").hexdigest())
    assert _ask(project, "many2", doc2)["lacking"] == [[at, at + 1]]


def test_a_manifest_that_is_not_the_releases_is_refused(project):
    _, _, doc, _ = _artifact(project, "r1", _files("r1"))
    other = dict(doc, entries=doc["entries"][:-1])
    from deploy_master import manifest  # pylint: disable=import-outside-toplevel

    url = _manifest_url(project, "r1", doc, data=manifest.dumps(other))
    with pytest.raises(CommandExecutionError, match="does not match the release's tree hash"):
        project.mod.lacking(PROJECT, "r1", doc["tree"], manifest=url)
    with pytest.raises(CommandExecutionError, match="either manifest .* or blobs"):
        project.mod.lacking(PROJECT, "r1", doc["tree"])
    with pytest.raises(CommandExecutionError, match="not a salt:// URL"):
        project.mod.lacking(PROJECT, "r1", doc["tree"], manifest="/etc/passwd")


def test_the_store_must_be_roots_only(project):
    _first(project)
    os.chown(_store(project), APP.pw_uid, APP.pw_gid)
    try:
        with pytest.raises(CommandExecutionError, match="content.*owned by uid"):
            project.mod.lacking(PROJECT, "r2", "0" * 64, [])
    finally:
        os.chown(_store(project), 0, 0)


def test_a_full_disk_while_filling_the_store_keeps_nothing(project, small_fs):
    files = {f"data/{i}.bin": os.urandom(300_000) for i in range(10)}  # 3 MB > the 2 MiB root
    url, checksum, doc, _ = _artifact(project, "big", files)
    with pytest.raises(CommandExecutionError, match="No space left on device.*nothing was kept"):
        project.mod.prepare(PROJECT, "big", url, checksum, tree=doc["tree"])
    assert project.release_names() == []
    assert project.leftovers() == []
    assert os.listdir(_store(project)) == []  # the blobs that made it in went again
    assert not os.path.exists(project.path("meta", "big.json"))
