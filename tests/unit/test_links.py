"""The symlink rule of a release tree, one rule on both sides: the master checks the built tree with
deploy_master.manifest.link_problem, the node every manifest with its copy (_modules/deploy.py
_link_problem: the minion has no deploy_master).  A link is relative, stays inside the release and
never goes through another symlink of the release, whatever order the entries come in."""

import os
import subprocess

import pytest
from deploy_master import DeployError, build, manifest
from salt.exceptions import CommandExecutionError
from saltext_deploy._modules import deploy as node_module


def _d(path):
    return [path, "d", 0o755, 0, ""]


def _l(path, target):
    return [path, "l", 0o777, 0, target]


# b/x/z is a symlink to the release's root that sorts after a/l: a/l -> ../b/x/z/../../.. climbs out
LATE_LINK = [_d("a"), _l("a/l", "../b/x/z/../../.."), _d("b"), _d("b/x"), _l("b/x/z", "../..")]

CASES = [
    (LATE_LINK, "'a/l' links to '../b/x/z/../../..' through the symlink 'b/x/z'"),
    ([_d("a"), _l("a/l", "../b/z/x"), _d("b"), _l("b/z", "..")], "'a/l' links to '../b/z/x' through the symlink 'b/z'"),
    ([_l("a", "z/.."), _l("z", ".")], "'a' links to 'z/..' through the symlink 'z'"),
    ([_l("a", "../x")], "'a' links to '../x', outside the release"),
    ([_l("a", "/etc/passwd")], "'a' links to '/etc/passwd', outside the release"),
    ([_l("a", "")], "'a' links to '', outside the release"),
    ([_d("a"), _l("a/b", "../../x")], "'a/b' links to '../../x', outside the release"),
    # allowed: inside, to a symlink (the last step), '.' and empty steps, into a folder
    ([_d("a"), _l("a/l", "../b/x/z"), _d("b"), _d("b/x"), _l("b/x/z", "../..")], None),
    ([_d("a"), _l("a/l", "./../b//c"), _d("b"), ["b/c", "f", 0o644, 1, "0" * 64]], None),
    ([_l("a", "b"), _l("b", "a")], None),  # a loop: the kernel refuses it, nothing leaves the tree
    ([_d("a"), _l("a/l", "..")], None),
    ([], None),
]


@pytest.mark.parametrize("entries,problem", CASES)
def test_master_and_node_apply_one_link_rule_in_any_order(entries, problem):
    assert manifest.link_problem(entries) == problem
    assert node_module._link_problem(entries) == problem  # pylint: disable=protected-access
    # the answer does not hang on the order of the entries
    assert manifest.link_problem(list(reversed(entries))) == problem
    assert node_module._link_problem(list(reversed(entries))) == problem  # pylint: disable=protected-access


def test_the_node_refuses_a_manifest_whose_link_climbs_out_through_a_symlink_sorting_after_it():
    doc = {"entries": LATE_LINK, "tree": manifest.tree_hash(LATE_LINK)}
    with pytest.raises(CommandExecutionError,
                       match=r"manifest entry 'a/l' links to '\.\./b/x/z/\.\./\.\./\.\.' through the symlink 'b/x/z'"):
        node_module._check_manifest(doc, doc["tree"], "salt://r.tar.gz")  # pylint: disable=protected-access


def _repo(tmp_path):
    path = tmp_path / "repo"
    path.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "X", "GIT_AUTHOR_EMAIL": "x@example.com",
           "GIT_COMMITTER_NAME": "X", "GIT_COMMITTER_EMAIL": "x@example.com"}
    (path / "index.php").write_text("<?php echo 'rainbow';")
    for args in (["init", "-q", "-b", "master"], ["add", "."], ["commit", "-q", "-m", "one"]):
        subprocess.run(["git", *args], cwd=path, env=env, check=True, capture_output=True)
    return str(path)


@pytest.mark.parametrize("command,match", [
    ("mkdir -p a b/x && ln -s ../.. b/x/z && ln -s ../b/x/z/../../.. a/l",
     r"'a/l' links to '\.\./b/x/z/\.\./\.\./\.\.' through the symlink 'b/x/z'"),
    ("ln -s /etc/passwd passwd", r"'passwd' links to '/etc/passwd', outside the release"),
    ("ln -s ../../etc etc", r"'etc' links to '\.\./\.\./etc', outside the release"),
])
def test_the_master_refuses_a_built_tree_with_a_link_the_nodes_refuse(tmp_path, command, match):
    roots = tmp_path / "file_roots"
    roots.mkdir()
    opts = {"cachedir": str(tmp_path / "cache"), "file_roots": {"base": [str(roots)]}}
    with pytest.raises(DeployError, match=match):
        build.build(opts, "rainbow", "pro", {"repo": _repo(tmp_path), "build": [command]}, "master", print)
    assert not os.listdir(roots / "deploy_artifacts" / "rainbow")  # nothing published
