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
from tests.functional.fnlib import APP_FILES, PROJECT, sha256

BAD_NAMES = [
    "a/b", "../x", "..", "a..b", "with space", "", " ", "a;touch pwned", "$(touch /tmp/pwned-dpl)",
    "`touch pwned`", "x|id", "x&&id", "-rf", ".hidden", "a\nb", "r1\n", "ünï", "x" * 300, 7, None,
]
PWNED = ("/tmp/pwned-dpl", "pwned")
PREPARE_NAMES = ["a/b", "..", "", "a;touch pwned", "$(touch /tmp/pwned-dpl)", "`touch pwned`", "rainbow\n", None]


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
            ("prepare", lambda name=name: live.mod.prepare(PROJECT, name, url, checksum)),
            ("activate", lambda name=name: live.mod.activate(PROJECT, name)),
            ("switch", lambda name=name: live.mod.switch(PROJECT, name)),
            ("mark", lambda name=name: live.mod.mark(PROJECT, name, "bad")),
            ("info", lambda name=name: live.mod.info(PROJECT, name)),
            ("rollback", lambda name=name: live.mod.rollback(PROJECT, to=name)),
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
            ("prepare", lambda name=name: live.mod.prepare(name, "r2", url, checksum)),
            ("activate", lambda name=name: live.mod.activate(name, "r1")),
            ("switch", lambda name=name: live.mod.switch(name, "r1")),
            ("releases", lambda name=name: live.mod.releases(name)),
            ("cleanup", lambda name=name: live.mod.cleanup(name)),
            ("restart", lambda name=name: live.mod.restart(name)),
            ("check", lambda name=name: live.mod.check(name)),
        ):
            if what == "prepare" and name not in PREPARE_NAMES:
                continue  # prepare compiles the pillar before it looks the project up: a few names suffice
            problem = _refused(call, r"^invalid project name " + re.escape(repr(name)))
            if problem:
                problems[(name, what)] = problem
    assert problems == {}
    _untouched(live)


def _check_all(live, cases, make_call):
    """Run make_call(case)() for each (case, pattern); {case: problem} for those not refused as expected."""
    problems = {}
    for case, pattern in cases:
        problem = _refused(make_call(case), pattern)
        if problem:
            problems[repr(case)] = problem
        if live.tree() != live.before or live.leftovers():
            problems[repr(case) + " left"] = sorted(set(live.tree()) ^ set(live.before)) + live.leftovers()
    return problems


def test_reserved_release_name_switch(live):
    # meta/<release>.json sits beside meta/switch.json, the switch record
    url, _, checksum = live.artifact("good")
    with pytest.raises(CommandExecutionError, match="invalid release name 'switch'"):
        live.mod.prepare(PROJECT, "switch", url, checksum)
    _untouched(live)


def test_unknown_project(live):
    with pytest.raises(CommandExecutionError, match=r"project 'other' is not defined .*deploy:projects:other"):
        live.mod.activate("other", "r1")


RELATIVE_ROOTS = ["relative/root", "./root", "root", "", None, 42]
SLASH_ROOTS = ["/", "//", "///", "/tmp/..", "/tmp/../..", "/./"]


def test_bad_root(live, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # were a relative root accepted, it would land here
    url, _, checksum = live.artifact("r2")

    def prepare_with(root):
        def call():
            live.write_pillar(reload=False, root=root)  # prepare compiles the pillar afresh
            return live.mod.prepare(PROJECT, "r2", url, checksum)
        return call

    problems = _check_all(live, [(root, "root") for root in RELATIVE_ROOTS], prepare_with)
    assert problems == {}
    assert os.listdir(tmp_path) == []

    # roots that are '/': only functions that write nothing before the check (a regression
    # must not be able to create /releases); prepare's check is the same _project()
    for root in SLASH_ROOTS:
        live.write_pillar(root=root)
        for what, func in (("releases", lambda: live.mod.releases(PROJECT)),
                           ("activate", lambda: live.mod.activate(PROJECT, "r1")),
                           ("current", lambda: live.mod.current(PROJECT))):
            problem = _refused(func, r"^project 'rainbow': root .* must be an absolute path other than '/'$")
            if problem:
                problems[(root, what)] = problem
    assert problems == {}
    _untouched(live)


def test_bad_checksums(live):
    url, _, actual = live.artifact("r2")
    cases = [("0" * 64, "checksum mismatch"), ("f" * 64, f"expected f{{64}}, got {actual}"),
             ("not-a-sum", "is not a sha256"), ("A" * 64, "is not a sha256"), (actual + "\n", "checksum"),
             (actual[:-1], "is not a sha256"), (None, "is not a sha256")]
    problems = _check_all(live, cases, lambda checksum: lambda: live.mod.prepare(PROJECT, "r2", url, checksum))
    assert problems == {}


def test_missing_or_unusable_artifact(live):
    junk = os.path.join(live.artifacts, "junk.tar.gz")
    with open(junk, "wb") as fh:
        fh.write(b"this is not a tar archive at all" * 10)
    cases = [
        ("salt://artifacts/nope.tar.gz", "cannot fetch salt://artifacts/nope.tar.gz"),
        ("/nonexistent/a.tar.gz", "neither salt:// nor an existing local file"),
        ("relative.tar.gz", "neither salt:// nor an existing local file"),
        ("http://example.invalid/a.tar.gz", "neither salt:// nor an existing local file"),
        (live.artifacts, "neither salt:// nor an existing local file"),  # a directory
        (junk, "cannot unpack"),
    ]
    problems = _check_all(live, cases, lambda source: lambda: live.mod.prepare(
        PROJECT, "r2", source, sha256(source) if os.path.isfile(source) else "0" * 64))
    assert problems == {}


ABSOLUTE = "/tmp/dpl-fn-absolute-member"  # harmless, should a regression let it through
UNSAFE = [
    (_member(ABSOLUTE), "absolute path or '..'"),
    (_member("../outside"), "absolute path or '..'"),
    (_member("public/../../outside"), "absolute path or '..'"),
    (_member("public/evil", tarfile.SYMTYPE, "/etc/passwd"), "outside the release"),
    (_member("public/evil", tarfile.SYMTYPE, "../../../etc/passwd"), "outside the release"),
    (_member("public/evil", tarfile.LNKTYPE, "../etc/passwd"), "outside the release"),
    (_member("dev/sda", tarfile.BLKTYPE), "device or fifo"),
    (_member("dev/null", tarfile.CHRTYPE), "device or fifo"),
    (_member("run/pipe", tarfile.FIFOTYPE), "device or fifo"),
]


def test_unsafe_archive_members(live):
    def prepare_with(index):
        url, _, checksum = live.artifact(f"r2-{index}", members=[UNSAFE[index][0]])
        return lambda: live.mod.prepare(PROJECT, "r2", url, checksum)

    problems = _check_all(live, [(i, m) for i, (_, m) in enumerate(UNSAFE)],
                          lambda i: prepare_with(i))
    assert problems == {}
    assert not os.path.exists(ABSOLUTE)
    assert not os.path.exists(live.path("releases", "outside"))


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
    # the file, the template line and the exception type: never a name or value computed from pillar
    assert "config config/app.ini: template error at line 2: UndefinedError" in message and "undefined" in message
    _untouched(live)


def test_template_syntax_error(live):
    files = {**APP_FILES, "config/app.ini.example": "key = {{ pillar.rainbow_secrets.sms_key \n"}
    url, _, checksum = live.artifact("r2", files=files)
    with pytest.raises(CommandExecutionError, match="config config/app.ini: template error"):
        live.mod.prepare(PROJECT, "r2", url, checksum)
    _untouched(live)


def test_secret_missing_from_pillar(live):
    live.extra_pillar = {"rainbow_secrets": {"pay_key": "p"}}  # the node lost its sms_key
    live.write_pillar(reload=False)
    url, _, checksum = live.artifact("r2")
    with pytest.raises(CommandExecutionError) as exc:
        live.mod.prepare(PROJECT, "r2", url, checksum)
    assert "config config/app.ini: template error at line 2: UndefinedError" in str(exc.value)
    _untouched(live)


APP_INI = {"source": "config/app.ini.example"}
BAD_PILLAR = [
    # config: templates rendered into the release
    ({"config": {"config/app.ini": {"source": "../../etc/passwd"}}}, "config/app.ini: source '../../etc/passwd' must not contain '..'"),
    ({"config": {"config/app.ini": {"source": "/etc/passwd"}}}, "must be a relative path inside the release"),
    ({"config": {"config/app.ini": {"source": "config/../../../etc/passwd"}}}, "must not contain '..'"),
    ({"config": {"config/app.ini": {"source": "config/missing.example"}}}, "'config/missing.example' is not a file in the release"),
    ({"config": {"config/app.ini": {"source": "salt://templates/does-not-exist.j2"}}},
     "source salt://templates/does-not-exist.j2 does not exist on the master"),
    ({"config": {"config/app.ini": {}}}, "config/app.ini: no 'source' given"),
    ({"config": {"config/app.ini": "config/app.ini.example"}}, "config/app.ini: no 'source' given"),
    ({"config": {"../app.ini": APP_INI}}, "config file '../app.ini' must not contain '..'"),
    ({"config": {"/etc/app.ini": APP_INI}}, "config file '/etc/app.ini' must be a relative path"),
    ({"config": {"storage/logs/app.ini": APP_INI}}, "'storage/logs/app.ini' resolves outside the release"),
    ({"config": {"config/app.ini": {**APP_INI, "mode": "rw-r--r--"}}}, "mode 'rw-r--r--' is not an octal mode"),
    ({"config": {"config/app.ini": {**APP_INI, "mode": "17777"}}}, "mode '17777' is out of range"),
    # files: per-node files
    ({"files": {"../evil": {"contents": "x"}}}, "file '../evil' must not contain '..'"),
    ({"files": {"storage/logs/evil": {"contents": "x"}}}, "file 'storage/logs/evil' resolves outside the release"),
    ({"files": {"config/x": "just a string"}}, "file config/x: give 'contents'"),
    # shared paths
    ({"shared": ["../x"]}, "shared path '../x' must not contain '..'"),
    ({"shared": ["/abs"]}, "shared path '/abs' must be a relative path"),
    ({"shared": ["a//b"]}, "shared path 'a//b' must not contain"),
    # the project user
    ({"user": "no-such-user-dpl"}, "project user 'no-such-user-dpl' does not exist on this node"),
    ({"group": "no-such-group-dpl"}, "project group 'no-such-group-dpl' does not exist on this node"),
]


def test_bad_pillar(live):
    url, _, checksum = live.artifact("r2")
    default = {key: live.conf.get(key) for key in ("config", "files", "shared", "user", "group")}

    def prepare_with(index):
        def call():
            live.write_pillar(reload=False, **{**default, **BAD_PILLAR[index][0]})  # prepare compiles afresh
            return live.mod.prepare(PROJECT, "r2", url, checksum)
        return call

    problems = _check_all(live, [(i, re.escape(m)) for i, (_, m) in enumerate(BAD_PILLAR)], prepare_with)
    assert problems == {}
    assert not os.path.exists(os.path.join(os.path.dirname(live.root), "app.ini"))
    assert not os.path.exists(os.path.join(os.path.dirname(live.root), "evil"))


def test_config_source_through_a_shared_link(live):
    # storage/logs is a link to <root>/shared/storage/logs: a source there is outside the release
    with open(live.path("shared", "storage", "logs", "planted.ini"), "w", encoding="utf-8") as fh:
        fh.write("{{ pillar.rainbow_secrets.sms_key }}")
    live.before = live.tree()
    live.write_pillar(reload=False, config={"config/app.ini": {"source": "storage/logs/planted.ini"}})
    url, _, checksum = live.artifact("r2")
    with pytest.raises(CommandExecutionError, match="resolves outside the release"):
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
