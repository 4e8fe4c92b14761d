"""The sandbox's generated Salt configs, read back through Salt's own config loader.

Every minion of one sandbox runs on one machine under one ``root_dir``: any path that
Salt derives from ``root_dir`` and that the sandbox leaves at its default is shared by all
minions, and they race to create it at start (``extmods``: "Failed to create directory path
… File exists", about one start in four). Each minion must have its own."""

import itertools

import pytest
import salt.config

from sandbox import cluster

# the options Salt resolves to paths of a minion's own
PATH_OPTIONS = ("pki_dir", "cachedir", "sock_dir", "extension_modules", "pidfile", "log_file")


@pytest.fixture
def box(tmp_path):
    sbx = cluster.Sandbox(str(tmp_path / "sbx"), web=3, out=lambda *_: None)
    sbx.write_configs()
    return sbx


def _minion_opts(box, mid):
    return salt.config.minion_config(f"{box.minion_conf_dir(mid)}/minion", cache_minion_id=False)


def test_no_two_minions_share_a_path(box):
    opts = {mid: _minion_opts(box, mid) for mid in box.minion_ids}
    for (a, oa), (b, ob) in itertools.combinations(opts.items(), 2):
        shared = [key for key in PATH_OPTIONS if oa[key] == ob[key]]
        assert not shared, f"{a} and {b} share {shared}: {[oa[k] for k in shared]}"


def test_minion_paths_stay_inside_the_sandbox(box):
    for mid in box.minion_ids:
        opts = _minion_opts(box, mid)
        for key in PATH_OPTIONS:
            assert opts[key].startswith(box.base + "/"), (mid, key, opts[key])


def test_a_hundred_web_nodes_run_light(tmp_path):
    """Up to 100 web nodes; above 50 the minions run jobs in threads (no fork per job)
    and each node has one PHP-FPM worker, unless asked otherwise."""
    big = cluster.Sandbox(str(tmp_path / "big"), web=100, out=lambda *_: None)
    big.write_configs()
    assert big.light and len(big.web_ids) == 100 and len(set(big.addr.values())) == 101
    assert _minion_opts(big, "web-100")["multiprocessing"] is False
    assert big.php["web-100"].fpm_children == 1
    small = cluster.Sandbox(str(tmp_path / "small"), web=10, out=lambda *_: None)
    small.write_configs()
    assert not small.light and _minion_opts(small, "web-1")["multiprocessing"] is True
    assert cluster.Sandbox(str(tmp_path / "l"), web=10, light=True, out=lambda *_: None).light
    with pytest.raises(cluster.SandboxError, match="between 1 and 100"):
        cluster.Sandbox(str(tmp_path / "x"), web=101, out=lambda *_: None)


def test_a_syndic_topology_read_back_by_salt(tmp_path):
    """``up --syndics 2``: the MoM orders masters; each salt-syndic (master + minion file of one folder) has its
    own id, keys and sockets and points at the MoM's ret port; the minions sign in to their syndic master;
    every daemon on TCP; each syndic master serves the project and only its own nodes' pillar."""
    box = cluster.Sandbox(str(tmp_path / "sy"), web=3, syndics=2, out=lambda *_: None)
    box.write_configs()
    box.write_pillar()
    mom = salt.config.master_config(f"{box.conf_dir}/master")
    assert mom["order_masters"] is True and mom["transport"] == "tcp" and mom["syndic_wait"] == 2
    syndics = {n: salt.config.syndic_config(f"{box.conf_dirs[n]}/master", f"{box.conf_dirs[n]}/minion")
               for n in box.syndic_names}
    for name, opts in syndics.items():
        assert opts["id"] == name and opts["transport"] == "tcp"
        assert (opts["master"], opts["master_port"]) == ("127.0.0.1", box.ports["ret"])
        master = salt.config.master_config(f"{box.conf_dirs[name]}/master")  # the syndic master itself
        assert master["interface"] == box.master_addr[name] and not master.get("order_masters")
        assert master["file_roots"] == mom["file_roots"]  # the nodes fetch the MoM's artifacts from their master
    assert len({o["pki_dir"] for o in syndics.values()} | {o["sock_dir"] for o in syndics.values()}) == 4
    for mid in box.minion_ids:
        opts = _minion_opts(box, mid)
        assert opts["master"] == box.master_addr[box.syndic_of[mid]] and opts["transport"] == "tcp"
    assert sorted(p.name for p in (tmp_path / "sy" / "srv" / "pillar").iterdir()) == ["project.sls", "secrets.sls",
                                                                                      "top.sls"]
    assert sorted(p.name for p in (tmp_path / "sy" / "srv" / "pillar-sm-2").glob("node_*")) == ["node_pre_1.sls",
                                                                                               "node_web_2.sls"]
    with pytest.raises(cluster.SandboxError):
        cluster.Sandbox(str(tmp_path / "x"), syndics=2, masters=2, store="etcd", out=lambda *_: None)
