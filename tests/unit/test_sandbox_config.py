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
