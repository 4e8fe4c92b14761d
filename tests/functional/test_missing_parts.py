"""
A part the master needs but lacks (etcd3gw for ``deploy_store: etcd``, gitpython, the ``svn`` client):
the real ``salt-run`` CLI, in a subprocess, with a master configuration of its own and no daemon
(nothing here reaches a minion: each run is refused before that).  A package is made missing for
that process only, as if not installed (``sys.modules[name] = None``: its import raises
ImportError); the svn client by a PATH without it.

Each must end in one line naming the part and its install command, exit 2 (docs/runner.md),
no traceback, and nothing changed: no lock and no history record left behind.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

RUN = textwrap.dedent("""
    import sys
    for name in sys.argv[1].split(","):
        if name:
            sys.modules[name] = None  # as if not installed
    sys.argv = ["salt-run"] + sys.argv[2:]
    from salt.scripts import salt_run
    salt_run()
""")

PILLAR = textwrap.dedent("""
    deploy:
      projects:
        rainbow:
          repo: https://git.example.invalid/rainbow.git
          root: /var/www/rainbow
          envs:
            pro:
              target: 'web-*'
        tundra:
          vcs: svn
          repo: https://svn.example.invalid/tundra
          root: /var/www/tundra
          envs:
            pro:
              target: 'web-*'
""")


@pytest.fixture(scope="module")
def master_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("mp")
    for sub in ("etc/salt", "srv/salt", "pillar", "var/cache/salt/master/proc", "var/run/salt/master",
                "var/log/salt"):
        os.makedirs(base / sub)
    (base / "pillar" / "top.sls").write_text("base:\n  '*':\n    - deploy\n")
    (base / "pillar" / "deploy.sls").write_text(PILLAR)
    (base / "run.py").write_text(RUN)
    return base


def _config(master_dir, name, store):
    conf = master_dir / "etc" / name
    conf.mkdir(exist_ok=True)
    (conf / "master").write_text(
        f"root_dir: {master_dir}\nuser: root\nfile_roots: {{base: [{master_dir}/srv/salt]}}\n"
        f"pillar_roots: {{base: [{master_dir}/pillar]}}\ndeploy_store: {store}\n"
        f"deploy_state_dir: {master_dir}/state-{name}\n"
        "deploy_etcd: {endpoints: ['http://127.0.0.1:9']}\n"
    )
    return str(conf)


def salt_run(master_dir, store, missing, *args, path=None):
    """``salt-run -c <conf> <args> --out=json`` without the Python packages ``missing``: (code, doc, stderr)."""
    env = dict(os.environ)
    if path is not None:
        env["PATH"] = path
    conf = _config(master_dir, store, store)
    proc = subprocess.run(
        [sys.executable, str(master_dir / "run.py"), ",".join(missing), "-c", conf, *args, "--out=json"],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        doc = proc.stdout
    return proc.returncode, doc, proc.stderr


def assert_missing(code, doc, stderr, package, install):
    assert "Traceback" not in json.dumps(doc) and "Traceback" not in stderr, (doc, stderr[-2000:])
    assert code == 2, doc
    assert doc["result"] == "refused" and doc["retcode"] == 2, doc
    error = doc["error"]
    assert "\n" not in error
    assert package in error and install in error, error


@pytest.mark.parametrize("fun", ["release", "rollback", "unlock", "history"])
def test_etcd_store_without_etcd3gw_is_one_line_and_exit_2(master_dir, fun):
    code, doc, err = salt_run(master_dir, "etcd", ["etcd3gw"], f"deploy.{fun}", "project=rainbow", "env=pro")
    assert_missing(code, doc, err, "etcd3gw", "pip install etcd3gw")
    assert "salt-pip install etcd3gw" in doc["error"]


def test_git_build_without_gitpython_is_refused_before_the_lock(master_dir):
    for args in (["ref=master"], ["test=True"]):
        code, doc, err = salt_run(master_dir, "local", ["git"], "deploy.release", "project=rainbow", "env=pro", *args)
        assert_missing(code, doc, err, "gitpython", "pip install gitpython")
    code, doc, err = salt_run(master_dir, "local", ["git"], "deploy.refs", "project=rainbow")
    assert_missing(code, doc, err, "gitpython", "pip install gitpython")
    # nothing changed: no lock, no history record
    code, doc, _ = salt_run(master_dir, "local", ["git"], "deploy.lock_status", "project=rainbow", "env=pro")
    assert code == 0 and doc["locked"] is False, doc
    code, doc, _ = salt_run(master_dir, "local", ["git"], "deploy.history", "project=rainbow", "env=pro")
    assert code == 0 and doc == [], doc


def test_svn_build_without_the_svn_client_is_refused_before_the_lock(master_dir, tmp_path):
    bare = tmp_path / "bin"  # the PATH's programs, all but svn
    bare.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                if not name.startswith("svn") and not (bare / name).exists():
                    (bare / name).symlink_to(os.path.join(folder, name))
    code, doc, err = salt_run(master_dir, "local", [], "deploy.release", "project=tundra", "env=pro",
                              path=str(bare))
    assert_missing(code, doc, err, "svn client", "apt-get install subversion")
    assert "dnf install subversion" in doc["error"]
    code, doc, _ = salt_run(master_dir, "local", [], "deploy.history", "project=tundra", "env=pro", path=str(bare))
    assert code == 0 and doc == [], doc


def test_console_without_cherrypy_is_one_line_and_exit_2(tmp_path):
    code = ("import sys, runpy; sys.modules['cherrypy'] = None; sys.argv = ['saltext_deploy', 'console']; "
            "runpy.run_module('saltext_deploy', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          check=False)
    assert proc.returncode == 2 and proc.stdout == "", proc
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "cherrypy" in proc.stderr and "salt-pip install cherrypy" in proc.stderr, proc.stderr
    # with it: the console's folder
    proc = subprocess.run([sys.executable, "-m", "saltext_deploy", "console"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, check=False)
    assert proc.returncode == 0 and os.path.isfile(os.path.join(proc.stdout.strip(), "index.html")), proc


def test_deploy_version_names_salt_deploy_salt_and_python(master_dir):
    import deploy_master  # pylint: disable=import-outside-toplevel
    import salt.version  # pylint: disable=import-outside-toplevel

    code, doc, err = salt_run(master_dir, "local", [], "deploy.version")
    assert code == 0, (doc, err[-2000:])
    assert doc == {"salt-deploy": deploy_master.__version__, "salt": salt.version.__version__,
                   "python": ".".join(str(n) for n in sys.version_info[:3])}
    code, doc, _ = salt_run(master_dir, "local", [], "deploy.version", "extra=1")
    assert code == 2 and "unknown argument 'extra'" in doc["error"], doc
