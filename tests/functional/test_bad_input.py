"""
Bad input: each refused with a clear CommandExecutionError naming the problem, and nothing
left behind: no temporary directory, ``current`` and the existing releases untouched.
"""

import glob
import os
import re
import tarfile

import pytest
from salt.exceptions import CommandExecutionError
from tests.functional.fnlib import APP_FILES, PROJECT

BAD_NAMES = [
    "a/b", "../x", "..", "a..b", "with space", "", " ", "a;touch pwned", "$(touch /tmp/pwned-dpl)",
    "`touch pwned`", "x|id", "x&&id", "-rf", ".hidden", "a\nb", "r1\n", "ünï", "x" * 300, 7, None,
]
PWNED = ("/tmp/pwned-dpl", "pwned")


@pytest.fixture
def live(project):
    """A project with a served release r1: what must stay untouched."""
    project.deploy("r1")
    project.before = project.tree()
    yield project
    assert project.leftovers() == []
    assert project.current == "r1"


def _untouched(project):
    assert project.tree() == project.before
    assert project.leftovers() == []
    for path in PWNED:
        assert not os.path.exists(path)
        assert not glob.glob(os.path.join(project.root, "**", path), recursive=True)


def _member(name, kind=tarfile.REGTYPE, link="", data=b"x"):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info, None


def _refused(call, pattern):
    """None if call() raised a CommandExecutionError matching pattern, else what happened."""
    try:
        ret = call()
    except CommandExecutionError as exc:
        return None if re.search(pattern, str(exc)) else f"wrong message: {exc}"
    return f"accepted, returned {ret!r}"


def test_bad_release_names(live):
    # one test for all the names (a loop, not parametrize: each setup costs a prepare)
    url, _, checksum = live.artifact("good")
    problems = {}
    for name in BAD_NAMES:
        for what, call in (
            ("prepare", lambda: live.mod.prepare(PROJECT, name, url, checksum)),
            ("activate", lambda: live.mod.activate(PROJECT, name)),
            ("switch", lambda: live.mod.switch(PROJECT, name)),
            ("mark", lambda: live.mod.mark(PROJECT, name, "bad")),
            ("info", lambda: live.mod.info(PROJECT, name)),
            ("rollback", lambda: live.mod.rollback(PROJECT, to=name)),
        ):
            if what == "rollback" and not name:
                continue  # to='' / to=None mean "the default target"
            problem = _refused(call, r"^invalid release name " + re.escape(repr(name)))
            if problem:
                problems[(name, what)] = problem
    assert problems == {}
    _untouched(live)


def test_bad_project_names(live):
    url, _, checksum = live.artifact("good")
    problems = {}
    for name in BAD_NAMES + ["Rainbow", "_x", "rainbow\n", "rainbow/../rainbow"]:
        for what, call in (
            ("prepare", lambda: live.mod.prepare(name, "r2", url, checksum)),
            ("activate", lambda: live.mod.activate(name, "r1")),
            ("switch", lambda: live.mod.switch(name, "r1")),
            ("releases", lambda: live.mod.releases(name)),
            ("cleanup", lambda: live.mod.cleanup(name)),
            ("restart", lambda: live.mod.restart(name)),
            ("check", lambda: live.mod.check(name)),
        ):
            problem = _refused(call, r"^invalid project name " + re.escape(repr(name)))
            if problem:
                problems[(name, what)] = problem
    assert problems == {}
    _untouched(live)


def test_reserved_release_name_switch(live):
    # meta/<release>.json sits beside meta/switch.json, the switch record
    url, _, checksum = live.artifact("good")
    with pytest.raises(CommandExecutionError, match="invalid release name 'switch'"):
        live.mod.prepare(PROJECT, "switch", url, checksum)
    _untouched(live)


def test_unknown_project(live):
    with pytest.raises(CommandExecutionError, match=r"project 'other' is not defined .*deploy:projects:other"):
        live.mod.activate("other", "r1")


@pytest.mark.parametrize("root", ["relative/root", "/", "//", "/tmp/..", "", None])
def test_bad_root(project, root):
    project.prepare("r1")
    url, _, checksum = project.artifact("r2")
    project.write_pillar(root=root)
    for call in (
        lambda: project.mod.prepare(PROJECT, "r2", url, checksum),
        lambda: project.mod.activate(PROJECT, "r1"),
        lambda: project.mod.cleanup(PROJECT),
    ):
        with pytest.raises(CommandExecutionError, match="root"):
            call()
    assert project.release_names() == ["r1"]
    assert not os.path.exists(os.path.join(os.getcwd(), "relative"))


@pytest.mark.parametrize("checksum", ["0" * 64, "not-a-sum", "A" * 64, None])
def test_checksum_mismatch_or_malformed(live, checksum):
    url, _, _ = live.artifact("r2")
    with pytest.raises(CommandExecutionError, match="checksum"):
        live.mod.prepare(PROJECT, "r2", url, checksum)
    _untouched(live)


def test_checksum_mismatch_names_both_sums(live):
    url, _, actual = live.artifact("r2")
    with pytest.raises(CommandExecutionError) as exc:
        live.mod.prepare(PROJECT, "r2", url, "f" * 64)
    assert "checksum mismatch" in str(exc.value) and actual in str(exc.value) and "f" * 64 in str(exc.value)
    _untouched(live)


@pytest.mark.parametrize("source", ["salt://artifacts/nope.tar.gz", "/nonexistent/a.tar.gz", "relative.tar.gz",
                                    "http://example.invalid/a.tar.gz"])
def test_missing_artifact(live, source):
    with pytest.raises(CommandExecutionError, match="cannot fetch|neither salt:// nor an existing local file"):
        live.mod.prepare(PROJECT, "r2", source, "0" * 64)
    _untouched(live)


def test_not_an_archive(live):
    path = os.path.join(live.artifacts, "junk.tar.gz")
    with open(path, "wb") as fh:
        fh.write(b"this is not a tar archive at all" * 10)
    from tests.functional.fnlib import sha256

    with pytest.raises(CommandExecutionError, match="cannot unpack"):
        live.mod.prepare(PROJECT, "r2", path, sha256(path))
    _untouched(live)


@pytest.mark.parametrize("member,message", [
    (_member("/etc/cron.d/evil"), "absolute path or '..'"),
    (_member("../outside"), "absolute path or '..'"),
    (_member("public/../../outside"), "absolute path or '..'"),
    (_member("public/evil", tarfile.SYMTYPE, "/etc/passwd"), "outside the release"),
    (_member("public/evil", tarfile.SYMTYPE, "../../../etc/passwd"), "outside the release"),
    (_member("public/evil", tarfile.LNKTYPE, "../etc/passwd"), "outside the release"),
    (_member("dev/sda", tarfile.BLKTYPE), "device or fifo"),
    (_member("dev/null", tarfile.CHRTYPE), "device or fifo"),
    (_member("run/pipe", tarfile.FIFOTYPE), "device or fifo"),
])
def test_unsafe_archive_members(live, member, message):
    url, _, checksum = live.artifact("r2", members=[member])
    with pytest.raises(CommandExecutionError, match=message):
        live.mod.prepare(PROJECT, "r2", url, checksum)
    _untouched(live)
    assert not os.path.exists(os.path.join(os.path.dirname(live.root), "outside"))


def test_symlink_chain_escaping_the_release(live):
    # each link looks inside on its own; 'a/b/d' -> '../..' makes the first one reach /etc/passwd
    members = [
        _member("0", tarfile.SYMTYPE, "a/b/d/a/b/d/../../../../../../etc/passwd"),
        _member("a", tarfile.DIRTYPE),
        _member("a/b", tarfile.DIRTYPE),
        _member("a/b/d", tarfile.SYMTYPE, "../.."),
    ]
    url, _, checksum = live.artifact("r2", members=members)
    with pytest.raises(CommandExecutionError, match="through the symlink 'a/b/d'"):
        live.mod.prepare(PROJECT, "r2", url, checksum)
    _untouched(live)


def test_writing_through_an_archive_symlink(live):
    members = [_member("up", tarfile.SYMTYPE, "."), _member("up/evil.php")]
    url, _, checksum = live.artifact("r2", members=members)
    with pytest.raises(CommandExecutionError, match="goes through the symlink 'up'"):
        live.mod.prepare(PROJECT, "r2", url, checksum)
    _untouched(live)


def test_missing_template_variable(live):
    files = {**APP_FILES, "config/app.ini.example": "ok = 1\nsms = {{ pillar.rainbow_secrets.sms_gateway_key }}\n"}
    url, _, checksum = live.artifact("r2", files=files)
    with pytest.raises(CommandExecutionError) as exc:
        live.mod.prepare(PROJECT, "r2", url, checksum)
    message = str(exc.value)
    assert "config/app.ini" in message and "sms_gateway_key" in message and "undefined" in message
    _untouched(live)


def test_template_syntax_error(live):
    files = {**APP_FILES, "config/app.ini.example": "key = {{ pillar.rainbow_secrets.sms_key \n"}
    url, _, checksum = live.artifact("r2", files=files)
    with pytest.raises(CommandExecutionError, match="config config/app.ini: template error"):
        live.mod.prepare(PROJECT, "r2", url, checksum)
    _untouched(live)


def test_secret_missing_from_pillar(live):
    live.extra_pillar = {}
    live.write_pillar()
    url, _, checksum = live.artifact("r2")
    with pytest.raises(CommandExecutionError) as exc:
        live.mod.prepare(PROJECT, "r2", url, checksum)
    assert "config/app.ini" in str(exc.value) and "rainbow_secrets" in str(exc.value)
    _untouched(live)


@pytest.mark.parametrize("config,message", [
    ({"config/app.ini": {"source": "../../etc/passwd"}}, "must not contain '..'"),
    ({"config/app.ini": {"source": "/etc/passwd"}}, "must be a relative path inside the release"),
    ({"config/app.ini": {"source": "storage/logs/../../../../etc/passwd"}}, "must not contain '..'"),
    ({"config/app.ini": {"source": "config/missing.example"}}, "is not a file in the release"),
    ({"config/app.ini": {"source": "salt://templates/does-not-exist.j2"}}, "does not exist on the master"),
    ({"config/app.ini": {}}, "no 'source' given"),
    ({"../app.ini": {"source": "config/app.ini.example"}}, "must not contain '..'"),
    ({"/etc/app.ini": {"source": "config/app.ini.example"}}, "must be a relative path"),
    ({"config/app.ini": {"source": "config/app.ini.example", "mode": "rw-r--r--"}}, "not an octal mode"),
    ({"config/app.ini": {"source": "config/app.ini.example", "mode": "17777"}}, "out of range"),
])
def test_bad_config(live, config, message):
    live.write_pillar(config=config)
    url, _, checksum = live.artifact("r2")
    with pytest.raises(CommandExecutionError, match=message):
        live.mod.prepare(PROJECT, "r2", url, checksum)
    _untouched(live)
    assert not os.path.exists(os.path.join(os.path.dirname(live.root), "app.ini"))


def test_config_source_through_a_shared_link(live):
    # storage/logs is a link to <root>/shared/storage/logs: a source there is outside the release
    with open(live.path("shared", "storage", "logs", "planted.ini"), "w", encoding="utf-8") as fh:
        fh.write("{{ pillar.rainbow_secrets.sms_key }}")
    live.before = live.tree()
    live.write_pillar(config={"config/app.ini": {"source": "storage/logs/planted.ini"}})
    url, _, checksum = live.artifact("r2")
    with pytest.raises(CommandExecutionError, match="resolves outside the release"):
        live.mod.prepare(PROJECT, "r2", url, checksum)
    _untouched(live)


@pytest.mark.parametrize("files,message", [
    ({"../evil": {"contents": "x"}}, "must not contain '..'"),
    ({"storage/logs/evil": {"contents": "x"}}, "resolves outside the release"),
    ({"config/x": "just a string"}, "give 'contents'"),
])
def test_bad_files(live, files, message):
    live.write_pillar(files=files)
    url, _, checksum = live.artifact("r2")
    with pytest.raises(CommandExecutionError, match=message):
        live.mod.prepare(PROJECT, "r2", url, checksum)
    _untouched(live)


@pytest.mark.parametrize("shared", [["../x"], ["/abs"], ["a//b"]])
def test_bad_shared_paths(live, shared):
    live.write_pillar(shared=shared)
    url, _, checksum = live.artifact("r2")
    with pytest.raises(CommandExecutionError, match="shared path"):
        live.mod.prepare(PROJECT, "r2", url, checksum)
    _untouched(live)


@pytest.mark.parametrize("who", [{"user": "no-such-user-dpl"}, {"group": "no-such-group-dpl"}])
def test_missing_user_or_group(live, who):
    live.write_pillar(**who)
    url, _, checksum = live.artifact("r2")
    with pytest.raises(CommandExecutionError, match="does not exist on this node"):
        live.mod.prepare(PROJECT, "r2", url, checksum)
    _untouched(live)


def test_disk_full_while_unpacking(project, small_fs):
    project.prepare("r1")
    project.mod.activate(PROJECT, "r1")
    before = project.tree()
    files = {**APP_FILES, "public/big.bin": os.urandom(3 * 1024 * 1024)}  # incompressible, > 2 MiB
    url, _, checksum = project.artifact("big", files=files)
    with pytest.raises(CommandExecutionError) as exc:
        project.mod.prepare(PROJECT, "big", url, checksum)
    assert "No space left on device" in str(exc.value)
    assert "'big'" in str(exc.value)
    assert project.tree() == before
    assert project.leftovers() == []
    assert project.release_names() == ["r1"]
    assert project.current == "r1"
    # and the space is free again: a normal release still fits
    project.prepare("r2")
    assert project.release_names() == ["r1", "r2"]
