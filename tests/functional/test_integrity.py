"""
A release built from the content store is switched to only if it is what its manifest says:
every file the store's blob itself (or, where a blob had all the links it can, a private read-only
copy of the same content), and no entry the manifest lacks but the per-node paths.

Real files, real hard links, the real unprivileged user www-data as the app user.
"""

import errno
import os
import subprocess

import pytest
from salt.exceptions import CommandExecutionError
from tests.functional.fnlib import APP_FILES, PROJECT, USER, content_artifact, write_content_archive

BIG = {f"lib/mod{i}.php": f"<?php // module {i}\n" + "x" * 2000 for i in range(10)}  # all of one size


def _files(marker, **changes):
    files = {k: v.replace("@RELEASE@", marker) for k, v in APP_FILES.items()}
    files.update(BIG)
    files.update(changes)
    return files


def _release(project, name, status="good", **changes):
    path, checksum, doc, _ = content_artifact(project.artifacts, name, _files(name, **changes))
    url = f"salt://artifacts/{os.path.basename(project.artifacts)}/{os.path.basename(path)}"
    ret = project.mod.prepare(PROJECT, name, url, checksum, tree=doc["tree"])
    assert ret["changed"] is True, ret
    project.mod.activate(PROJECT, name)
    if status:
        project.mod.mark(PROJECT, name, status)
    return doc


def _alter(command):
    """Change a release behind the node's back.  Made as root: the check must hold whoever owns the
    release's folders (the app user, when it owns them, can make every one of these changes)."""
    return subprocess.run(["/bin/sh", "-c", command], check=True, capture_output=True, text=True)


def _two(project):
    """r1 (good, kept) and r2 (current)."""
    _release(project, "r1")
    _release(project, "r2", status=None, **{"lib/mod3.php": "v2\n"})
    assert project.current == "r2"


def _refused(project, release, match, call="rollback"):
    before = project.tree()
    with pytest.raises(CommandExecutionError, match=match) as exc:
        if call == "rollback":
            project.mod.rollback(PROJECT, to=release, checks="skip")
        elif call == "switch":
            project.mod.switch(PROJECT, release, checks="skip")
        else:
            project.mod.activate(PROJECT, release)
    assert project.current == "r2"
    assert project.tree() == before  # current, the releases, their records: untouched
    return str(exc.value)


def test_a_kept_release_with_a_same_size_root_file_renamed_in_and_a_web_shell_is_refused(project):
    _two(project)
    r1, r2 = project.release_dir("r1"), project.release_dir("r2")
    # another module of the same size, root's and read-only like the one it replaces, is renamed in,
    # and a web shell dropped beside the code
    _alter(f"mv -f {r2}/lib/mod5.php {r1}/lib/mod4.php && "
                 f"echo '<?php system($_GET[1]);' > {r1}/public/shell.php")
    msg = _refused(project, "r1", r"incomplete.*'lib/mod4.php'.*not the content")
    assert "shell.php" not in msg  # the first difference, by path
    for call in ("switch", "activate"):
        _refused(project, "r1", "lib/mod4.php", call=call)
    # put the module back: now the shell alone is named
    os.unlink(os.path.join(r1, "lib", "mod4.php"))
    os.link(os.path.join(project.path("content"), _sha(BIG["lib/mod4.php"])), os.path.join(r1, "lib", "mod4.php"))
    _refused(project, "r1", r"incomplete.*'public/shell.php' is not in the release's manifest")
    os.unlink(os.path.join(r1, "public", "shell.php"))
    ret = project.mod.rollback(PROJECT, to="r1", checks="skip")
    assert ret["result"] is True and project.current == "r1"


def test_an_extra_folder_or_link_is_refused_and_the_per_node_paths_are_not(project):
    _two(project)
    r1 = project.release_dir("r1")
    # per-node paths (shared link, config, files) are skipped, and what lies under them
    assert os.path.islink(os.path.join(r1, "storage", "logs"))
    _alter(f"mkdir {r1}/lib/.hidden")
    _refused(project, "r1", r"'lib/.hidden' is not in the release's manifest")
    _alter(f"rmdir {r1}/lib/.hidden && ln -s /etc {r1}/etc")
    _refused(project, "r1", r"'etc' is not in the release's manifest")
    _alter(f"rm {r1}/etc && mkdir {r1}/vendor")
    _refused(project, "r1", r"'vendor' is not in the release's manifest")
    _alter(f"rmdir {r1}/vendor")
    assert project.mod.switch(PROJECT, "r1", checks="skip")["result"] is True


def test_a_file_replaced_by_the_app_user_is_refused_even_with_the_same_content(project):
    _two(project)
    r1 = project.release_dir("r1")
    target = f"{r1}/lib/mod7.php"
    _alter(f"cp {target} {target}.new && chown {USER}: {target}.new && chmod 0444 {target}.new && "
           f"mv -f {target}.new {target}")
    _refused(project, "r1", r"'lib/mod7.php' is not the content")


def _sha(text):
    import hashlib  # noqa: PLC0415
    return hashlib.sha256(text.encode()).hexdigest()


def test_a_private_copy_made_when_a_blob_had_all_its_links_is_hashed(project, monkeypatch):
    """_assemble copies a blob that has all the links it can (EMLINK): the copy is root's, read-only,
    not the blob; the check hashes it, and refuses one whose content is not the manifest's."""
    real = os.link
    victim = "mod2.php"

    def link(src, dst, *args, **kwargs):
        if dst.endswith(victim):
            raise OSError(errno.EMLINK, os.strerror(errno.EMLINK), dst)
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "link", link)
    _release(project, "r1")
    monkeypatch.setattr(os, "link", real)
    _release(project, "r2", status=None, **{"lib/mod3.php": "v2\n"})
    r1 = project.release_dir("r1")
    copy = os.lstat(os.path.join(r1, "lib", victim))
    blob = os.lstat(os.path.join(project.path("content"), _sha(BIG["lib/mod2.php"])))
    assert copy.st_ino != blob.st_ino and copy.st_nlink == 1 and copy.st_uid == 0 and not copy.st_mode & 0o222
    assert project.mod.switch(PROJECT, "r1", checks="skip")["result"] is True
    project.mod.activate(PROJECT, "r2")
    # a root read-only copy of another content of the same size in its place: hashed, refused
    fake = os.path.join(r1, "lib", ".fake")
    with open(os.path.join(r1, "lib", "mod8.php"), "rb") as src, open(fake, "wb") as dst:
        dst.write(src.read())
    os.chmod(fake, 0o444)
    os.rename(fake, os.path.join(r1, "lib", victim))
    _refused(project, "r1", rf"'lib/{victim}' is not the content")


def test_prepare_refuses_a_link_that_climbs_out_through_a_symlink_sorting_after_it(project):
    from deploy_master import manifest  # noqa: PLC0415
    _release(project, "r1")
    before = {k: v for k, v in project.tree().items() if not k.startswith("content")}
    entries = [["a", "d", 0o755, 0, ""], ["a/l", "l", 0o777, 0, "../b/x/z/../../.."], ["b", "d", 0o755, 0, ""],
               ["b/x", "d", 0o755, 0, ""], ["b/x/z", "l", 0o777, 0, "../.."]]
    doc = {"format": 1, "entries": entries, "tree": manifest.tree_hash(entries)}
    path, checksum = write_content_archive(os.path.join(project.artifacts, "late.tar.gz"), doc, {})
    url = f"salt://artifacts/{os.path.basename(project.artifacts)}/late.tar.gz"
    with pytest.raises(CommandExecutionError, match=r"'a/l' links to '\.\./b/x/z/\.\./\.\./\.\.' through the symlink 'b/x/z'"):
        project.mod.prepare(PROJECT, "late", url, checksum, tree=doc["tree"])
    assert "late" not in project.release_names() and project.leftovers() == []
    assert {k: v for k, v in project.tree().items() if not k.startswith("content")} == before
