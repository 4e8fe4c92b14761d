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
