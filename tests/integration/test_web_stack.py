"""Real web stack of the sandbox: nginx + PHP-FPM, HAProxy, nginx LB, Tomcat, sample repos.

No Salt involved.  Services run as www-data from the system binaries; the work
dir is a 0755 directory under /tmp (pytest's tmp_path is not readable by www-data).

Builds its own services (nothing of the session cluster): these tests are about the services themselves.
"""

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time

import jinja2
import jinja2.sandbox
import pytest

from sandbox.repo import activate_release, add_release, export_release, git, make_sample_repo
from sandbox.web import HAProxy, NginxLB, PhpNode, ServiceError, TomcatNode, http_get, wait_for_text

USER = "www-data"
WWW_UID = pwd.getpwnam(USER).pw_uid

# addresses of this file (the Salt cluster tests use 127.0.1.x)
WEB = {"web-1": "127.0.3.1", "web-2": "127.0.3.2"}
WEB3 = "127.0.3.3"
TOMCAT = "127.0.3.5"
DEAD = "127.0.3.9:8080"  # nothing listens there
LB = "127.0.3.100"


def _uid_of(pid):
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def _pid(path):
    with open(path) as fh:
        return int(fh.read().split()[0])


def _as_user(cmd):
    """Run a shell command string as www-data (like a deploy `cmd` step with runas)."""
    return subprocess.run(["runuser", "-u", USER, "--", "/bin/sh", "-c", cmd], capture_output=True, text=True,
                          timeout=120)


def _reload_fpm(node):
    """The deploy step's way (shell command as root), then wait for the new FPM workers."""
    master, before = _pid(node.fpm_pid_file), node.fpm_workers()
    assert len(before) == node.fpm_children
    subprocess.run(node.reload_command(), shell=True, check=True)
    node.wait_fpm_reloaded(before)
    assert _pid(node.fpm_pid_file) == master  # FPM re-execs in place: same master pid


def _deploy(repo, ref, root, release, greeting=None):
    """Hand-made release: git archive <ref> into <root>/releases/<release>, render app.ini, switch current."""
    rel = export_release(repo, ref, os.path.join(root, "releases", release))
    if greeting is not None:
        with open(os.path.join(rel, "config", "app.ini"), "w") as fh:
            fh.write(f'greeting = "{greeting}"\nsms_key = "k"\n')
    activate_release(root, rel)
    return rel


def _served_by(url, n, header="x-served-by"):
    seen = []
    for _ in range(n):
        status, headers, body = http_get(url)
        assert status == 200, (status, body)
        assert "rainbow 1.0.0" in body
        seen.append(headers.get(header))
    return seen


@pytest.fixture(scope="module")
def ws():
    d = tempfile.mkdtemp(prefix="dpl-ws-", dir="/tmp")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def php_repo(ws):
    return make_sample_repo(os.path.join(ws, "repos", "rainbow.git"))


@pytest.fixture(scope="module")
def java_repo(ws):
    return make_sample_repo(os.path.join(ws, "repos", "rainbow-java.git"), kind="java")


@pytest.fixture(scope="module")
def stack_nodes(ws, php_repo):
    nodes = {}
    try:
        for name, addr in WEB.items():
            root = os.path.join(ws, "nodes", name, "www", "rainbow")
            _deploy(php_repo, "v1.0.0", root, "a", greeting=f"hi from {name}")
            nodes[name] = PhpNode(name, addr, root, os.path.join(ws, "nodes", name, "run")).start()
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()


# ----------------------------------------------------------------------------- repo


def test_sample_repo_history_and_template(ws, php_repo):
    assert git("rev-parse", "--is-bare-repository", cwd=php_repo) == "true"
    assert git("symbolic-ref", "HEAD", cwd=php_repo) == "refs/heads/master"
    assert set(git("tag", "--list", cwd=php_repo).split()) == {"v1.0.0", "v1.1.0"}
    log = git("log", "--format=%an|%cn|%ce", "master", cwd=php_repo).splitlines()
    assert len(log) == 2 and all(line.startswith("xuliangwei|xuliangwei|") for line in log)
    assert git("show", "v1.0.0:VERSION", cwd=php_repo) == "1.0.0"
    assert git("show", "v1.1.0:VERSION", cwd=php_repo) == "1.1.0"
    files = set(git("ls-tree", "-r", "--name-only", "v1.0.0", cwd=php_repo).split())
    assert {"VERSION", "public/index.php", "public/health.php", "config/app.ini.example",
            "config/crontab.xml", "storage/logs/.gitkeep"} <= files

    tmpl = git("show", "v1.0.0:config/app.ini.example", cwd=php_repo)
    # as the deploy module renders it: Jinja's sandbox, only the keys the project declares
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)
    pillar = {"deploy": {"projects": {"rainbow": {"greeting": "hola"}}}, "rainbow_secrets": {"sms_key": "s3cr3t"}}
    out = env.from_string(tmpl).render(pillar=pillar)
    assert re.search(r'^greeting = "hola"$', out, re.M), out
    assert re.search(r'^sms_key = "s3cr3t"$', out, re.M), out
    pillar["deploy"]["projects"]["rainbow"].pop("greeting")
    assert 'greeting = "hello"' in env.from_string(tmpl).render(pillar=pillar)

    sha = add_release(php_repo, "v1.2.0", files={"extra/note.txt": "hi\n"})
    assert git("rev-parse", "v1.2.0^{commit}", cwd=php_repo) == sha == git("rev-parse", "master", cwd=php_repo)
    assert git("show", "v1.2.0:VERSION", cwd=php_repo) == "1.2.0"
    assert git("show", "v1.2.0:extra/note.txt", cwd=php_repo) == "hi"
    assert "http_response_code(500)" not in git("show", "v1.2.0:public/index.php", cwd=php_repo)
    add_release(php_repo, "v1.3.0-broken", broken=True)
    assert "http_response_code(500)" in git("show", "v1.3.0-broken:public/health.php", cwd=php_repo)
    untagged = add_release(php_repo, "v1.4.0", tag=False)
    assert "v1.4.0" not in git("tag", "--list", cwd=php_repo).split()
    assert git("rev-parse", "master", cwd=php_repo) == untagged


def test_java_repo_jsp_text_changes(java_repo):
    v1 = git("show", "v1.0.0:index.jsp", cwd=java_repo)
    v11 = git("show", "v1.1.0:index.jsp", cwd=java_repo)
    assert "rainbow-java 1.0.0" in v1 and "rainbow-java 1.1.0" in v11
    assert "WEB-INF/web.xml" in git("ls-tree", "-r", "--name-only", "v1.0.0", cwd=java_repo).split()


# ----------------------------------------------------------------------------- PHP node


def test_php_node_serves_release_as_www_data(stack_nodes):
    node = stack_nodes["web-1"]
    status, headers, body = http_get(node.url)
    assert status == 200, body
    assert "rainbow 1.0.0" in body
    assert "greeting: hi from web-1" in body
    assert headers["x-served-by"] == "web-1"
    status, _, body = http_get(node.url + "health.php")
    assert (status, body.strip()) == (200, "ok")
    assert http_get(node.url + "missing.php")[0] == 404
    # both the FPM master and nginx run as the ordinary user
    assert _uid_of(_pid(node.fpm_pid_file)) == WWW_UID
    assert _uid_of(_pid(node.nginx_pid_file)) == WWW_UID
    assert node.url == "http://127.0.3.1:8080/"
    assert node.fpm_pid_file in node.reload_command()


def test_php_symlink_switch_reload_and_opcache(ws, php_repo):
    root = os.path.join(ws, "nodes", "web-3", "www", "rainbow")
    _deploy(php_repo, "v1.0.0", root, "a")
    with PhpNode("web-3", WEB3, root, os.path.join(ws, "nodes", "web-3", "run")) as node:
        body = wait_for_text(node.url, "rainbow 1.0.0")
        assert "release: a" in body and "greeting: hello" in body

        # atomic symlink switch + graceful FPM reload: $realpath_root makes PHP run the new path
        rel_b = export_release(php_repo, "v1.1.0", os.path.join(root, "releases", "b"))
        with open(os.path.join(rel_b, "public", "probe.php"), "w") as fh:
            fh.write("<?php echo $_SERVER['SCRIPT_FILENAME'], '|', $_SERVER['DOCUMENT_ROOT'];\n")
        activate_release(root, rel_b)
        _reload_fpm(node)
        body = wait_for_text(node.url, "rainbow 1.1.0")
        assert "release: b" in body
        status, _, probe = http_get(node.url + "probe.php")
        assert status == 200, probe
        assert probe == "{}|{}".format(os.path.join(rel_b, "public", "probe.php"), os.path.join(rel_b, "public"))

        # OPcache with validate_timestamps=0 really is active: an in-place edit is NOT seen ...
        index = os.path.join(rel_b, "public", "index.php")
        with open(index, "a") as fh:
            fh.write('echo "patched in place\\n";\n')
        for _ in range(6):
            status, _, body = http_get(node.url)
            assert status == 200
            assert "patched in place" not in body
        # ... until FPM is reloaded
        _reload_fpm(node)
        wait_for_text(node.url, "patched in place")

        # a broken release answers 500 on both pages
        add_release(php_repo, "v9.0.0-broken", broken=True)
        _deploy(php_repo, "v9.0.0-broken", root, "c")
        _reload_fpm(node)
        wait_for_text(node.url, "rainbow 9.0.0-broken", status=500)
        assert http_get(node.url + "health.php")[0] == 500

        # a second object for the same workdir (e.g. another process) sees and stops it via pid files
        twin = PhpNode("web-3", WEB3, root, node.workdir)
        assert twin.running
        twin.stop()
        assert not node.running
    assert not node.running
    node.stop()  # idempotent
    with pytest.raises(OSError):
        http_get(node.url, timeout=2)


# ----------------------------------------------------------------------------- HAProxy


def test_haproxy_balances_redispatches_and_drains(ws, stack_nodes):
    servers = {name: f"{addr}:8080" for name, addr in WEB.items()}
    servers["web-9"] = DEAD
    with HAProxy(os.path.join(ws, "haproxy"), "rainbow", servers, bind=f"{LB}:8000") as lb:
        assert lb.url == f"http://{LB}:8000/"
        assert _uid_of(_pid(lb.pid_file)) == WWW_UID
        # right after start web-9 is still believed UP: redispatch + retries hide it
        seen = _served_by(lb.url, 30)
        assert set(seen) == {"web-1", "web-2"}
        lb.wait_status("web-9", "DOWN", timeout=10)
        lb.wait_status("web-1", "UP")
        assert lb.server_state("web-1") == "ready"

        answer = lb.command("set server rainbow/web-1 state drain")
        assert answer.strip() == "", answer
        assert lb.server_state("web-1") == "drain"
        assert set(_served_by(lb.url, 12)) == {"web-2"}

        lb.command("set server rainbow/web-1 state maint")
        assert lb.server_state("web-1") == "maint"
        assert lb.server_status("web-1") == "MAINT"
        lb.reload()  # admin state survives a reload (server-state-file)
        assert lb.server_state("web-1") == "maint"
        assert set(_served_by(lb.url, 8)) == {"web-2"}

        lb.command("set server rainbow/web-1 state ready")
        assert lb.server_state("web-1") == "ready"
        lb.wait_status("web-1", "UP")
        assert set(_served_by(lb.url, 12)) == {"web-1", "web-2"}
        with pytest.raises(KeyError):
            lb.server_state("nope")
    assert not lb.running


# ----------------------------------------------------------------------------- nginx LB


def test_nginx_lb_upstream_file_test_and_reload(ws, stack_nodes):
    servers = {name: f"{addr}:8080" for name, addr in WEB.items()}
    lb = NginxLB(os.path.join(ws, "nginx-lb"), "rainbow", servers, bind=f"{LB}:8001")
    with open(lb.upstream_file) as fh:
        text = fh.read()
    assert text.startswith("upstream rainbow {\n") and text.rstrip().endswith("}")
    assert "    server 127.0.3.1:8080;  # web-1\n" in text
    assert "    server 127.0.3.2:8080;  # web-2\n" in text
    assert len([ln for ln in text.splitlines() if ln.strip().startswith("server ")]) == 2
    with lb:
        assert _uid_of(_pid(lb.pid_file)) == WWW_UID
        seen = _served_by(lb.url, 10, header="x-served-by")
        assert set(seen) == {"web-1", "web-2"}

        # the article's way: take web-1 out of the upstream file, nginx -t, nginx -s reload (run by root)
        with open(lb.upstream_file, "w") as fh:
            fh.write(text.replace("    server 127.0.3.1:8080;  # web-1", "    # server 127.0.3.1:8080;  # web-1"))
        res = subprocess.run(lb.nginx_test_command(), capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        res = subprocess.run(lb.reload_command(), capture_output=True, text=True)
        assert res.returncode == 0, res.stderr

        for _ in range(30):  # old workers finish gracefully; new ones only know web-2
            if set(_served_by(lb.url, 10)) == {"web-2"}:
                break
            time.sleep(0.3)
        else:
            pytest.fail("web-1 still served after upstream edit + reload")
        # root-run nginx -t did not take the temp dirs away from www-data
        assert os.stat(os.path.join(lb.workdir, "temp", "proxy")).st_uid == WWW_UID

        # a broken upstream file is caught by nginx -t
        with open(lb.upstream_file, "w") as fh:
            fh.write("upstream rainbow {\n    server ;\n}\n")
        assert subprocess.run(lb.nginx_test_command(), capture_output=True).returncode != 0
        with open(lb.upstream_file, "w") as fh:
            fh.write(text)
        lb.reload()
        assert set(_served_by(lb.url, 10)) == {"web-1", "web-2"}


# ----------------------------------------------------------------------------- Tomcat


def test_tomcat_restart_with_cleared_work_serves_new_jsp(ws, java_repo):
    root = os.path.join(ws, "nodes", "app-1", "www", "rainbow-java")
    _deploy(java_repo, "v1.0.0", root, "a")
    node = TomcatNode("app-1", TOMCAT, root, os.path.join(ws, "nodes", "app-1", "tomcat"))
    with node:
        assert _uid_of(_pid(node.pid_file)) == WWW_UID
        wait_for_text(node.url, "rainbow-java 1.0.0")
        assert http_get(node.url + "health.jsp")[2].strip() == "ok"
        compiled = [f for _, _, fs in os.walk(node.work_dir) for f in fs if f.startswith("index_jsp")]
        assert compiled, "JSP was not compiled into the work dir"

        add_release(java_repo, "v2.0.0")
        _deploy(java_repo, "v2.0.0", root, "b")

        # the deploy's restart steps, run as the user: stop, clear work + temp, start
        res = _as_user(node.stop_command())
        assert res.returncode == 0, res.stdout + res.stderr
        assert not node.running
        with pytest.raises(OSError):
            http_get(node.url, timeout=2)
        res = _as_user(node.clear_command())
        assert res.returncode == 0, res.stderr
        assert os.listdir(node.work_dir) == [] and os.listdir(node.temp_dir) == []
        assert _as_user(node.stop_command()).returncode == 0  # stopping a stopped Tomcat is fine
        res = _as_user(node.start_command())
        assert res.returncode == 0, res.stdout + res.stderr
        node.wait_ready()
        body = wait_for_text(node.url, "rainbow-java 2.0.0")
        assert "1.0.0" not in body
    assert not node.running


# ----------------------------------------------------------------------------- errors


def test_failures_are_reported_clearly(ws, stack_nodes):
    busy = PhpNode("dup", WEB["web-1"], stack_nodes["web-1"].root, os.path.join(ws, "nodes", "dup", "run"))
    with pytest.raises(ServiceError, match="already in use"):
        busy.start()
    assert not busy.running

    bad = HAProxy(os.path.join(ws, "haproxy-bad"), "rainbow", {"web-1": "not an address"}, bind=f"{LB}:8002")
    with pytest.raises(ServiceError, match="invalid"):
        bad.start()
    assert not bad.running

    # nginx dies at start-up on a broken include: the error carries the log tail
    broken = NginxLB(os.path.join(ws, "nginx-lb-bad"), "rainbow", {"web-1": "{}:8080".format(WEB["web-1"])},
                     bind=f"{LB}:8003")
    with open(broken.upstream_file, "w") as fh:
        fh.write("upstream rainbow {\n    bogus_directive 1;\n}\n")
    with pytest.raises(ServiceError) as err:
        broken.start()
    assert "bogus_directive" in str(err.value)
    assert not broken.running
    broken.stop()  # idempotent
