"""Names (deploy_master.names): validation, release names; the node module's copy of the rules."""

import datetime

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError
from deploy_master import names
from deploy_master.source import Revision
from saltext_deploy._modules import deploy as node_module

RELEASES = ["rainbow_pro_v1.1.1_master_2016-08-11_12-12_xuliangwei", "r1", "R.1-x_y", "a" * 200, "1", "a" * 201,
            "", "../x", "a/b", "a..b", "a b", "a;b", "$(id)", "`id`", ".hidden", "-x", "x\n", "ünicode", None, 3]
PROJECTS = ["rainbow", "a", "a-b_c", "0", "a" * 64, "a" * 65, "Rainbow", "-a", "_a", "a/b", "a..b", "a b", "",
            "a\n", None]


def _accepts(check, value):
    try:
        check(value)
        return True
    except (CommandExecutionError, SaltInvocationError):
        return False


def test_the_node_module_has_the_same_name_patterns():
    assert node_module.PROJECT_RE.pattern == names.PROJECT_RE.pattern
    assert node_module.RELEASE_RE.pattern == names.RELEASE_RE.pattern


@pytest.mark.parametrize("name", RELEASES)
def test_release_names_the_master_accepts_are_the_ones_the_nodes_accept(name):
    master = _accepts(lambda v: names.valid(v, names.RELEASE_RE, "release"), name)
    assert master == _accepts(node_module._check_release, name)


def test_switch_is_reserved_on_the_node_and_never_a_built_name():
    # the node's one extra rule: meta/switch.json is its switch record.  A built name has 7 fields
    # joined by '_', so it is never 'switch'; a to= 'switch' is refused by the node, changing nothing.
    assert not _accepts(node_module._check_release, "switch")


@pytest.mark.parametrize("name", PROJECTS)
def test_project_names_the_master_accepts_are_the_ones_the_nodes_accept(name):
    master = _accepts(lambda v: names.valid(v, names.PROJECT_RE, "project name"), name)
    assert master == _accepts(node_module._check_project, name)


def test_invalid_names_are_named_in_the_error():
    with pytest.raises(SaltInvocationError, match=r"invalid ref 'a\.\./b': allowed are"):
        names.valid("a../b", names.REF_RE, "ref")
    with pytest.raises(SaltInvocationError, match="invalid ref 'dev/'"):
        names.valid("dev/", names.REF_RE, "ref")
    assert names.valid("feature/x-1", names.REF_RE, "ref") == "feature/x-1"


@pytest.mark.parametrize("value,expected", [
    ("feature/x", "feature-x"), ("Li Lei", "Li-Lei"), ("--x--", "x"), ("", "none"), ("徐亮伟", "none"),
    ("v1.1.1-3-gabc", "v1.1.1-3-gabc"), ("a_b", "a-b"),
])
def test_field(value, expected):
    assert names.field(value) == expected


def test_release_name_is_the_articles_pattern_in_utc():
    tz = datetime.timezone(datetime.timedelta(hours=8))
    rev = Revision(id="0" * 40, version="v1.1.1", author="xu liangwei",
                   time=datetime.datetime(2016, 8, 11, 19, 11, 5, tzinfo=tz), branch="release/1.1")
    name = names.release_name("rainbow", "pro", rev)
    assert name == "rainbow_pro_v1.1.1_release-1.1_2016-08-11_11-11-05_xu-liangwei"
    assert _accepts(node_module._check_release, name)


# --- odd committer names: reduced, and the whole name checked with the nodes' rule

@pytest.mark.parametrize("author", ["..", "...", ".", "a..b", "x" * 300, "Li\x00Lei\x1b[31m", "\t\n", "-..-", "a" * 300 + ".."])
def test_odd_committers_still_give_a_name_the_nodes_accept(author):
    rev = Revision(id="0" * 40, version="v1.1.1", author=author,
                   time=datetime.datetime(2016, 8, 11, 11, 11, 5, tzinfo=datetime.timezone.utc), branch="master")
    name = names.release_name("rainbow", "pro", rev)
    assert name.startswith("rainbow_pro_v1.1.1_master_2016-08-11_11-11-05_")
    assert _accepts(node_module._check_release, name), name
    assert names.check_release(name) == name
    committer = name.rsplit("_", 1)[1]
    assert len(committer) <= names.FIELD_MAX and ".." not in committer and not committer.startswith(".")


def test_a_name_the_nodes_would_refuse_is_refused_on_the_master():
    for name in ["a" * 201, "a..b", "switch", "-x", "a b"]:
        with pytest.raises(SaltInvocationError, match="invalid release name"):
            names.check_release(name)
        assert not _accepts(node_module._check_release, name)


@pytest.mark.parametrize("salt_user, sudo, expected", [
    (None, None, "root"),  # no Salt user known: the login
    ("UNKNOWN", None, "root"),
    ("root", None, "root"),  # salt-run as root
    ("root", "alice", "alice"),  # salt-run as root with SUDO_USER in its environment
    ("sudo_alice", None, "alice"),  # Salt's name for a sudo user
    ("operator", None, "operator"),  # an external-auth user (salt-api, the console): the master runs as root
])
def test_the_person_behind_a_runner_call(monkeypatch, salt_user, sudo, expected):
    monkeypatch.setattr(names.getpass, "getuser", lambda: "root")
    if sudo:
        monkeypatch.setenv("SUDO_USER", sudo)
    else:
        monkeypatch.delenv("SUDO_USER", raising=False)
    assert names.person(salt_user) == expected
    names.acting(salt_user, "gitlab:web/app#12")
    assert names.caller()[0] == expected and names.by() == "gitlab:web/app#12"
    names.acting()
    assert names.by() is None


@pytest.mark.parametrize("by", ["x y", "a;b", "$(id)", "", "-x", "a" * 129, "x\n"])
def test_a_ci_identity_is_one_token(by):
    with pytest.raises(SaltInvocationError, match="invalid by"):
        names.acting("root", by)
