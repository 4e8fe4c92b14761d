"""Real web servers for test clusters and the demo sandbox.

Every service runs as an ordinary user (default ``www-data``) from Debian's
system binaries, keeps all of its state (config, pid file, logs, temp dirs,
sockets) inside a ``workdir`` given by the caller, and listens on loopback
addresses such as ``127.0.1.N:8080``.

Each class has ``start()``, ``stop()`` (idempotent: stops the process group
and waits), ``wait_ready()`` and works as a context manager.  Start-up waits
for the TCP port / unix socket with a bounded timeout and raises
:class:`ServiceError` with the tail of the logs on failure.

Command *strings* (``reload_command`` ...) quote every path with
:func:`shlex.quote`; command *lists* are argv lists.
"""

from __future__ import annotations

import grp
import http.client
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import hashlib
from xml.sax.saxutils import quoteattr
import contextlib

__all__ = [
    "ServiceError",
    "PhpNode",
    "TomcatNode",
    "HAProxy",
    "NginxLB",
    "http_get",
    "wait_for_text",
]

NGINX = "/usr/sbin/nginx"
PHP_FPM = "/usr/sbin/php-fpm8.2"
PHP_FPM_CONF_D = "/etc/php/8.2/fpm/conf.d"
HAPROXY = "/usr/sbin/haproxy"
CATALINA_HOME = "/usr/share/tomcat10"
TOMCAT_ETC = "/etc/tomcat10"
JAVA = "/usr/bin/java"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_SOCKET_PATH = 100


class ServiceError(RuntimeError):
    """A sandbox service failed to start/stop; the message carries the log tail."""


# --------------------------------------------------------------------------- helpers


def http_get(url, timeout=5.0, headers=None):
    """GET ``url`` without any proxy (http.client); return ``(status, headers, body_text)``.

    ``headers`` in the result is a dict with lower-cased names.
    """
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    try:
        path = u.path or "/"
        if u.query:
            path += "?" + u.query
        conn.request("GET", path, headers=dict(headers or {}, Connection="close"))
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", errors="replace")
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def wait_for_text(url, text, timeout=15.0, status=200):
    """Poll ``url`` until the body contains ``text`` (and the status matches); return the body."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            st, _, body = http_get(url, timeout=3)
            last = (st, body)
            if (status is None or st == status) and text in body:
                return body
        except OSError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not serve {text!r} within {timeout}s; last answer: {last!r}")
        time.sleep(0.2)


def _split_addr(addr, default_port=None):
    host, sep, port = str(addr).rpartition(":")
    if not sep:
        return str(addr), default_port
    return host.strip("[]"), int(port)


def _tcp_open(host, port, timeout=0.5):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _unix_open(path, timeout=0.5):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def _tail(paths, lines=30):
    out = []
    for p in paths:
        try:
            with open(p, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - 16384))
                text = fh.read().decode("utf-8", errors="replace")
        except OSError:
            continue
        tail = "\n".join(text.splitlines()[-lines:])
        out.append(f"---- {p} ----\n{tail}")
    return "\n".join(out) if out else "(no log output)"


def _short_socket(path, tag):
    """Return ``path`` if it is short enough for a unix socket, else a short /tmp path."""
    if len(path) < MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha1(path.encode()).hexdigest()[:12]
    return f"/tmp/dpl-{tag}-{digest}.sock"


def _pid_alive(pid):
    """True if ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _pgid_alive(pgid):
    """True if some non-zombie process is in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def _children(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            kids.append(int(entry))
    return sorted(kids)


def _wait(predicate, timeout, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def _read_pid(path):
    try:
        with open(path) as fh:
            return int(fh.read().strip().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# --------------------------------------------------------------------------- base class


class _Service:
    """Common plumbing: user switching, files in workdir, process (group) lifecycle."""

    kind = "service"

    def __init__(self, workdir, user="www-data"):
        self.workdir = os.path.abspath(str(workdir))
        self.user = user
        pw = pwd.getpwnam(user)
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self.group = grp.getgrgid(self.gid).gr_name
        self.home = pw.pw_dir
        self.log_dir = os.path.join(self.workdir, "logs")
        self._procs = []  # [(Popen, label)]

    # -- files ---------------------------------------------------------------
    @property
    def _switch_user(self):
        return os.geteuid() == 0 and self.uid != 0

    def _mkdir(self, path, owned=True):
        path = os.path.abspath(path)
        missing = []
        p = path
        while not os.path.isdir(p):
            missing.append(p)
            p = os.path.dirname(p)
        for d in reversed(missing):
            try:
                os.mkdir(d)
            except FileExistsError:  # a service started beside this one (in parallel) made it first
                continue
            os.chmod(d, 0o755)
        if owned and self._switch_user:
            os.chown(path, self.uid, self.gid)
        return path

    def _write(self, path, text, mode=0o644, owned=True):
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        if owned and self._switch_user:
            os.chown(tmp, self.uid, self.gid)
        os.replace(tmp, path)
        return path

    def _touch(self, path):
        """Pre-create a (log) file owned by the service user, so a root-run tool cannot create it root-owned."""
        if not os.path.exists(path):
            with open(path, "a"):
                pass
            os.chmod(path, 0o644)
        if self._switch_user:
            os.chown(path, self.uid, self.gid)
        return path

    def _env(self, extra=None):
        env = {"PATH": SYSTEM_PATH, "HOME": self.workdir, "LANG": "C.UTF-8", "USER": self.user,
               "LOGNAME": self.user}
        env.update(extra or {})
        return env

    # -- processes -----------------------------------------------------------
    def _popen(self, argv, label, env=None, cwd=None):
        log = os.path.join(self.log_dir, f"{label}.out")
        self._touch(log)
        kwargs = {}
        if self._switch_user:
            kwargs.update(user=self.uid, group=self.gid, extra_groups=[])
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env or self._env(), cwd=cwd or self.workdir, start_new_session=True,
                close_fds=True, **kwargs)
        self._procs.append((proc, label))
        return proc

    def _log_files(self):
        try:
            names = sorted(os.listdir(self.log_dir))
        except OSError:
            return []
        return [os.path.join(self.log_dir, n) for n in names if n.endswith((".out", ".log"))]

    def _fail(self, message):
        raise ServiceError("{} {}: {}\n{}".format(self.kind, getattr(self, "name", self.workdir), message,
                                              _tail(self._log_files())))

    def _wait_until(self, predicate, what, timeout, procs=None):
        deadline = time.monotonic() + timeout
        procs = procs if procs is not None else [p for p, _ in self._procs]
        while True:
            if predicate():
                return
            for p in procs:
                if p.poll() is not None:
                    self._fail(f"process {p.args[0]} exited with {p.returncode} before {what}")
            if time.monotonic() > deadline:
                self._fail(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.1)

    def _check_port_free(self, host, port):
        if _tcp_open(host, port, timeout=0.3):
            raise ServiceError(f"{self.kind}: {host}:{port} is already in use (a leftover process?)")

    def _stop_procs(self, sig=signal.SIGTERM, timeout=15.0):
        procs, self._procs = self._procs, []
        for proc, _ in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
        for proc, _ in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)
        for proc, _ in procs:
            # whole group: workers and anything left behind
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            _wait(lambda proc=proc: not _pgid_alive(proc.pid), 5)

    # -- pid files (processes started by another object / process) ---------
    def _pid_files(self):
        return []

    def _owned_pid(self, pid_file):
        """PID from ``pid_file`` if that process is alive and really belongs to this workdir."""
        pid = _read_pid(pid_file)
        if pid is None or not _pid_alive(pid):
            return None
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return None
        return pid if (self.workdir + "/") in cmdline or cmdline.rstrip().endswith(self.workdir) else None

    def _stop_pid_files(self, sig, timeout):
        pids = [p for p in (self._owned_pid(f) for f in self._pid_files()) if p]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        for pid in pids:
            if _wait(lambda pid=pid: not _pid_alive(pid), timeout):
                continue
            try:
                if os.getpgid(pid) == pid:  # a group leader we (or a twin object) started
                    os.killpg(pid, signal.SIGKILL)
                else:  # never kill a foreign process group (e.g. a salt-minion's)
                    for kid in _children(pid):
                        os.kill(kid, signal.SIGKILL)
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait(lambda pid=pid: not _pid_alive(pid), 5)

    @property
    def running(self):
        if any(p.poll() is None for p, _ in self._procs):
            return True
        return any(self._owned_pid(f) for f in self._pid_files())

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


def _nginx_common(workdir, user, group, error_log, pid_file, worker_connections=1024):
    temp = os.path.join(workdir, "temp")
    paths = "\n".join(f"    {kind}_temp_path {os.path.join(temp, kind)};"
                      for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    head = (
        "# generated by sandbox.web -- do not edit\n"
        # ignored (with a warning) when the master is not root; keeps a root-run `nginx -t`
        # from chowning the temp dirs to "nobody"
        f"user {user} {group};\n"
        "daemon off;\n"
        "master_process on;\n"
        "worker_processes 1;\n"
        f"pid {pid_file};\n"
        f"error_log {error_log} notice;\n"
        f"events {{ worker_connections {worker_connections}; }}\n"
    )
    return head, paths


# --------------------------------------------------------------------------- PHP node


class PhpNode(_Service):
    """nginx + PHP-FPM serving ``<root>/current/public``, as an ordinary user.

    nginx uses ``$realpath_root`` for SCRIPT_FILENAME and DOCUMENT_ROOT, so after
    a symlink switch of ``<root>/current`` PHP sees the new release path.  PHP-FPM
    runs with OPcache on and ``opcache.validate_timestamps=0``: code changes under
    an already cached path need :meth:`reload_command` (FPM ``USR2``).
    Responses carry ``X-Served-By: <name>``.
    """

    kind = "php-node"

    def __init__(self, name, addr, root, workdir, user="www-data", port=8080, opcache=True, fpm_children=4):
        super().__init__(workdir, user)
        self.name = name
        self.addr = addr
        self.port = int(port)
        self.root = os.path.abspath(str(root))
        self.opcache = bool(opcache)
        self.fpm_children = int(fpm_children)
        self.url = f"http://{addr}:{self.port}/"
        self.nginx_conf = os.path.join(self.workdir, "nginx.conf")
        self.nginx_pid_file = os.path.join(self.workdir, "nginx.pid")
        self.fpm_conf = os.path.join(self.workdir, "php-fpm.conf")
        self.php_ini = os.path.join(self.workdir, "php.ini")
        self.fpm_pid_file = os.path.join(self.workdir, "php-fpm.pid")
        self.fpm_socket = _short_socket(os.path.join(self.workdir, "php-fpm.sock"), "fpm")
        self.document_root = os.path.join(self.root, "current", "public")

    def reload_command(self) -> str:
        """Shell command that gracefully reloads PHP-FPM (resets OPcache): ``kill -USR2 <master pid>``.

        FPM re-executes itself on USR2 and rewrites its pid file: a reload right after another
        one waits (up to 5 s) for the file to be back instead of failing on a missing pid."""
        pid = shlex.quote(self.fpm_pid_file)
        return (f"i=0; while [ ! -s {pid} ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; "
                f"kill -USR2 \"$(cat {pid})\"")

    def fpm_workers(self) -> list:
        """PIDs of the current PHP-FPM worker processes."""
        pid = _read_pid(self.fpm_pid_file)
        return _children(pid) if pid else []

    def wait_fpm_reloaded(self, before, timeout=20.0):
        """Wait until FPM runs a completely new set of workers (``before``: :meth:`fpm_workers`
        taken before the reload signal) and its socket answers.  USR2 is asynchronous: until
        then the old workers (and the old OPcache) may still answer."""
        before = set(before)

        def done():
            now = set(self.fpm_workers())
            return len(now) >= self.fpm_children and not (now & before) and _unix_open(self.fpm_socket)

        if not _wait(done, timeout):
            self._fail(f"PHP-FPM did not finish reloading within {timeout}s")
        return self

    def reload(self, timeout=20.0):
        """Run :meth:`reload_command` and wait until the new FPM workers are up."""
        before = self.fpm_workers()
        subprocess.run(self.reload_command(), shell=True, check=True)
        return self.wait_fpm_reloaded(before, timeout)

    def nginx_reload_command(self) -> str:
        return f"{NGINX} -p {shlex.quote(self.workdir)} -c {shlex.quote(self.nginx_conf)} -s reload"

    def write_config(self):
        self._mkdir(self.workdir)
        self._mkdir(self.log_dir)
        temp = self._mkdir(os.path.join(self.workdir, "temp"))
        for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            self._mkdir(os.path.join(temp, k))
        error_log = self._touch(os.path.join(self.log_dir, "nginx-error.log"))
        access_log = self._touch(os.path.join(self.log_dir, "nginx-access.log"))
        for f in ("php-fpm.log", "php-error.log"):
            self._touch(os.path.join(self.log_dir, f))
        head, temp_paths = _nginx_common(self.workdir, self.user, self.group, error_log, self.nginx_pid_file)
        q = {"sock": self.fpm_socket, "root": self.document_root, "listen": f"{self.addr}:{self.port}",
             "name": self.name, "access": access_log, "temp": temp_paths}
        http = """
http {{
{temp}
    types {{ text/html html htm; text/plain txt; text/css css; application/javascript js; application/json json; }}
    default_type application/octet-stream;
    access_log {access};
    sendfile on;
    keepalive_timeout 15;
    server_tokens off;

    server {{
        listen {listen};
        server_name _;
        root {root};
        index index.php index.html;
        add_header X-Served-By {name} always;

        location / {{
            try_files $uri $uri/ /index.php?$query_string;
        }}

        location ~ [^/]\\.php(/|$) {{
            fastcgi_split_path_info ^(.+?\\.php)(/.*)$;
            if (!-f $realpath_root$fastcgi_script_name) {{ return 404; }}
            fastcgi_pass unix:{sock};
            fastcgi_index index.php;
            fastcgi_param SCRIPT_FILENAME   $realpath_root$fastcgi_script_name;
            fastcgi_param DOCUMENT_ROOT     $realpath_root;
            fastcgi_param SCRIPT_NAME       $fastcgi_script_name;
            fastcgi_param PATH_INFO         $fastcgi_path_info;
            fastcgi_param QUERY_STRING      $query_string;
            fastcgi_param REQUEST_METHOD    $request_method;
            fastcgi_param CONTENT_TYPE      $content_type;
            fastcgi_param CONTENT_LENGTH    $content_length;
            fastcgi_param REQUEST_URI       $request_uri;
            fastcgi_param DOCUMENT_URI      $document_uri;
            fastcgi_param SERVER_PROTOCOL   $server_protocol;
            fastcgi_param REQUEST_SCHEME    $scheme;
            fastcgi_param GATEWAY_INTERFACE CGI/1.1;
            fastcgi_param SERVER_SOFTWARE   nginx;
            fastcgi_param REMOTE_ADDR       $remote_addr;
            fastcgi_param REMOTE_PORT       $remote_port;
            fastcgi_param SERVER_ADDR       $server_addr;
            fastcgi_param SERVER_PORT       $server_port;
            fastcgi_param SERVER_NAME       $server_name;
            fastcgi_param HTTP_PROXY        "";
            fastcgi_param REDIRECT_STATUS   200;
        }}
    }}
}}
""".format(**q)
        self._write(self.nginx_conf, head + http)

        op = ["[PHP]", "; generated by sandbox.web", "log_errors = On", "display_errors = Off",
              "error_log = {}".format(os.path.join(self.log_dir, "php-error.log")), "", "[opcache]"]
        if self.opcache:
            op += ["opcache.enable = 1", "opcache.enable_cli = 0", "opcache.validate_timestamps = 0",
                   "opcache.revalidate_freq = 0", "opcache.file_update_protection = 0",
                   "opcache.memory_consumption = 32", "opcache.interned_strings_buffer = 4",
                   "opcache.max_accelerated_files = 4000"]
        else:
            op += ["opcache.enable = 0"]
        self._write(self.php_ini, "\n".join(op) + "\n")

        fpm = """; generated by sandbox.web -- do not edit
[global]
pid = {pid}
error_log = {log}
log_level = notice
daemonize = no
process_control_timeout = 10s

[{pool}]
listen = {sock}
listen.mode = 0660
listen.backlog = 511
pm = static
pm.max_children = {children}
catch_workers_output = yes
clear_env = yes
php_admin_flag[log_errors] = on
php_admin_value[error_log] = {phperr}
""".format(
           pid=self.fpm_pid_file,
           log=os.path.join(self.log_dir, "php-fpm.log"),
           sock=self.fpm_socket,
           pool="www",
           children=self.fpm_children,
           phperr=os.path.join(self.log_dir, "php-error.log"),
       )
        self._write(self.fpm_conf, fpm)

    def _check_opcache(self):
        if not self.opcache:
            return
        res = subprocess.run([PHP_FPM, "-c", self.php_ini, "-m"], capture_output=True, text=True,
                             env=self._env({"PHP_INI_SCAN_DIR": PHP_FPM_CONF_D}))
        if "Zend OPcache" not in res.stdout:
            raise ServiceError(f"php-node {self.name}: {PHP_FPM} has no Zend OPcache with {self.php_ini} "
                               f"(php8.2-opcache missing?)\n{res.stdout + res.stderr}")

    def start(self):
        if self.running:
            return self
        self._check_port_free(self.addr, self.port)
        self.write_config()
        self._check_opcache()
        if os.path.lexists(self.fpm_socket):
            os.unlink(self.fpm_socket)
        try:
            fpm = self._popen([PHP_FPM, "-F", "-y", self.fpm_conf, "-c", self.php_ini], "php-fpm",
                              env=self._env({"PHP_INI_SCAN_DIR": PHP_FPM_CONF_D}))
            self._wait_until(lambda: _unix_open(self.fpm_socket), f"the FPM socket {self.fpm_socket}", 20,
                             procs=[fpm])
            nginx = self._popen([NGINX, "-p", self.workdir, "-c", self.nginx_conf], "nginx")
            self._wait_until(lambda: _tcp_open(self.addr, self.port), f"nginx on {self.addr}:{self.port}",
                             20, procs=[nginx, fpm])
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout=20):
        self._wait_until(lambda: _tcp_open(self.addr, self.port) and _unix_open(self.fpm_socket),
                         f"{self.name} to be ready", timeout)

    def _pid_files(self):
        return [self.nginx_pid_file, self.fpm_pid_file]

    def stop(self):
        # SIGQUIT = graceful for both nginx and php-fpm (FPM honours process_control_timeout)
        self._stop_procs(signal.SIGQUIT, timeout=12)
        self._stop_pid_files(signal.SIGQUIT, timeout=12)
        for p in (self.fpm_socket,):
            if os.path.lexists(p) and p.startswith("/tmp/dpl-fpm-"):
                os.unlink(p)

    def __repr__(self):
        return f"PhpNode({self.name!r}, {self.url})"


# --------------------------------------------------------------------------- Tomcat node


def _java_home():
    real = os.path.realpath(JAVA)  # /usr/lib/jvm/<jdk>/bin/java
    return os.path.dirname(os.path.dirname(real))


class TomcatNode(_Service):
    """Debian tomcat10 with its own ``CATALINA_BASE`` (= workdir), as an ordinary user,
    serving ``<root>/current`` as the ROOT webapp.

    Started with ``catalina.sh start`` (daemonized, ``CATALINA_PID`` in workdir),
    i.e. exactly :meth:`start_command`, so deploy steps running
    :meth:`stop_command` / :meth:`start_command` as the user and this object's
    :meth:`stop` / :meth:`start` all manage the same process.
    """

    kind = "tomcat-node"

    def __init__(self, name, addr, root, workdir, user="www-data", port=8080, shutdown_port=None,
                 java_opts="-Xms32m -Xmx192m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC"):
        super().__init__(workdir, user)
        self.name = name
        self.addr = addr
        self.port = int(port)
        self.shutdown_port = shutdown_port
        self.root = os.path.abspath(str(root))
        self.doc_base = os.path.join(self.root, "current")
        self.url = f"http://{addr}:{self.port}/"
        self.catalina_base = self.workdir
        self.conf_dir = os.path.join(self.workdir, "conf")
        self.work_dir = os.path.join(self.workdir, "work")
        self.temp_dir = os.path.join(self.workdir, "temp")
        self.webapps_dir = os.path.join(self.workdir, "webapps")
        self.pid_file = os.path.join(self.workdir, "catalina.pid")
        self.catalina_out = os.path.join(self.log_dir, "catalina.out")
        self.java_opts = java_opts

    def _env_assignments(self):
        return [
            ("CATALINA_HOME", CATALINA_HOME),
            ("CATALINA_BASE", self.catalina_base),
            ("CATALINA_PID", self.pid_file),
            ("CATALINA_OUT", self.catalina_out),
            ("CATALINA_TMPDIR", self.temp_dir),
            ("JAVA_HOME", _java_home()),
            ("JAVA_OPTS", "-Djava.awt.headless=true -Djava.security.egd=file:/dev/./urandom " + self.java_opts),
        ]

    def _command(self, *args):
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self._env_assignments())
        return "cd {} && env {} {} {}".format(shlex.quote(self.workdir), env,
                                          shlex.quote(os.path.join(CATALINA_HOME, "bin", "catalina.sh")),
                                          " ".join(shlex.quote(a) for a in args))

    def start_command(self) -> str:
        """Shell command (run as the user) that starts Tomcat in the background (returns immediately)."""
        return self._command("start")

    def stop_command(self) -> str:
        """Shell command (run as the user) that stops Tomcat: graceful (SIGTERM when no shutdown port),
        waiting up to 30s, then kill -9.  Succeeds (and removes a stale pid file) when Tomcat is not running."""
        pid = shlex.quote(self.pid_file)
        stop = self._command("stop", "30", "-force")
        return f'if [ -s {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null; then {stop}; else rm -f {pid}; fi'

    def clear_command(self) -> str:
        """Shell command that empties the work and temp dirs (what a restart step does between stop and start)."""
        return f"find {shlex.quote(self.work_dir)} {shlex.quote(self.temp_dir)} -mindepth 1 -delete"

    def write_config(self):
        for d in (self.workdir, self.log_dir, self.conf_dir, self.work_dir, self.temp_dir, self.webapps_dir,
                  os.path.join(self.workdir, "lib")):
            self._mkdir(d)
        self._touch(self.catalina_out)
        for f in ("web.xml", "catalina.properties"):
            src = os.path.join(TOMCAT_ETC, f)
            with open(src, encoding="utf-8") as fh:
                text = fh.read()
            self._write(os.path.join(self.conf_dir, f), text)
        # Jasper's JSP compiler (Debian keeps it outside tomcat's lib dir; make sure the
        # common loader sees it whatever the jar manifest resolution does)
        jdt = "/usr/share/java/eclipse-jdt-core.jar"
        link = os.path.join(self.workdir, "lib", "eclipse-jdt-core.jar")
        if os.path.exists(jdt) and not os.path.lexists(link):
            os.symlink(jdt, link)
        self._write(os.path.join(self.conf_dir, "logging.properties"),
                    "handlers = java.util.logging.ConsoleHandler\n"
                    ".handlers = java.util.logging.ConsoleHandler\n"
                    "java.util.logging.ConsoleHandler.level = FINE\n"
                    "java.util.logging.ConsoleHandler.formatter = org.apache.juli.OneLineFormatter\n"
                    "java.util.logging.ConsoleHandler.encoding = UTF-8\n"
                    ".level = INFO\n")
        self._write(os.path.join(self.conf_dir, "context.xml"),
                    '<?xml version="1.0" encoding="UTF-8"?>\n'
                    '<Context>\n'
                    '    <WatchedResource>WEB-INF/web.xml</WatchedResource>\n'
                    '    <JarScanner scanClassPath="false" scanManifest="false"/>\n'
                    '</Context>\n')
        self._write(os.path.join(self.conf_dir, "tomcat-users.xml"),
                    '<?xml version="1.0" encoding="UTF-8"?>\n<tomcat-users/>\n')
        server = """<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by sandbox.web: do not edit -->
<Server port="{shutdown}" shutdown="SHUTDOWN">
  <Listener className="org.apache.catalina.startup.VersionLoggerListener" />
  <Listener className="org.apache.catalina.core.JreMemoryLeakPreventionListener" />
  <Listener className="org.apache.catalina.core.ThreadLocalLeakPreventionListener" />
  <Service name="Catalina">
    <Connector address={addr} port="{port}" protocol="HTTP/1.1"
               connectionTimeout="20000" maxParameterCount="1000" />
    <Engine name="Catalina" defaultHost="localhost">
      <Host name="localhost" appBase="webapps" unpackWARs="false" autoDeploy="false" deployOnStartup="false">
        <Context path="" docBase={docbase} reloadable="false" />
      </Host>
    </Engine>
  </Service>
</Server>
""".format(
       shutdown="-1" if self.shutdown_port is None else int(self.shutdown_port),
       addr=quoteattr(self.addr),
       port=self.port,
       docbase=quoteattr(self.doc_base),
   )
        self._write(os.path.join(self.conf_dir, "server.xml"), server)

    def _pid(self):
        return _read_pid(self.pid_file)

    def _pid_files(self):
        return [self.pid_file]

    @property
    def running(self):
        return self._owned_pid(self.pid_file) is not None

    def _ready(self):
        if not _tcp_open(self.addr, self.port):
            return False
        try:
            http_get(self.url, timeout=10)
            return True
        except OSError:
            return False

    def wait_ready(self, timeout=90):
        """Wait until the Connector answers HTTP (any status) -- the ROOT context is deployed by then."""
        deadline = time.monotonic() + timeout
        while True:
            if self._ready():
                return self
            pid = self._pid()
            if pid is not None and not _pid_alive(pid):
                self._fail(f"java (pid {pid}) exited before answering on {self.addr}:{self.port}")
            if time.monotonic() > deadline:
                self._fail(f"timed out after {timeout}s waiting for {self.addr}:{self.port}")
            time.sleep(0.25)

    def start(self, timeout=90):
        if self.running:
            return self
        self._check_port_free(self.addr, self.port)
        self.write_config()
        if os.path.exists(self.pid_file):
            os.unlink(self.pid_file)
        proc = self._popen(["/bin/sh", "-c", self.start_command()], "catalina-start")
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            rc = None
        if rc != 0:
            self.stop()
            self._fail(f"catalina.sh start returned {rc}")
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout=30):
        # SIGTERM = graceful shutdown of the JVM (shutdown hook), then SIGKILL after `timeout`
        self._stop_pid_files(signal.SIGTERM, timeout)
        # the process group of our `sh -c start_command` (java inherits it)
        self._stop_procs(signal.SIGTERM, timeout=1)
        if os.path.exists(self.pid_file):
            os.unlink(self.pid_file)

    def clear_work(self):
        """Empty the work and temp directories (compiled JSPs etc.)."""
        for d in (self.work_dir, self.temp_dir):
            if os.path.isdir(d):
                for n in os.listdir(d):
                    p = os.path.join(d, n)
                    if os.path.isdir(p) and not os.path.islink(p):
                        shutil.rmtree(p)
                    else:
                        os.unlink(p)

    def __repr__(self):
        return f"TomcatNode({self.name!r}, {self.url})"


# --------------------------------------------------------------------------- HAProxy


# srv_admin_state bits (haproxy include/haproxy/server-t.h)
_ADMF_FMAINT, _ADMF_IMAINT, _ADMF_CMAINT = 0x01, 0x02, 0x04
_ADMF_FDRAIN, _ADMF_IDRAIN, _ADMF_RMAINT, _ADMF_HMAINT = 0x08, 0x10, 0x20, 0x40
_ADMF_MAINT = _ADMF_FMAINT | _ADMF_IMAINT | _ADMF_CMAINT | _ADMF_RMAINT | _ADMF_HMAINT
_ADMF_DRAIN = _ADMF_FDRAIN | _ADMF_IDRAIN


class HAProxy(_Service):
    """HAProxy (master-worker, run as the user) in front of ``servers``.

    Runtime API on ``socket`` (``stats socket ... mode 660 level admin``).
    ``option redispatch 1`` + ``retries 3`` (+ ``retry-on conn-failure empty-response 502 503``):
    a drained/maint/dead server does not fail requests.  Admin states survive
    :meth:`reload` (server-state-file).  Responses carry ``X-Backend-Server: <server name>``.
    """

    kind = "haproxy"

    def __init__(self, workdir, backend, servers: dict, bind="127.0.0.1:8000", user="www-data",
                 check_uri="/", check_inter="500ms", metrics_bind=None, rise=2, fall=2):
        super().__init__(workdir, user)
        self.rise, self.fall = int(rise), int(fall)
        self.name = backend
        self.backend = backend
        self.servers = dict(servers)
        self.bind = bind
        self.check_uri = check_uri
        self.check_inter = check_inter
        host, port = _split_addr(bind, 80)
        self.host, self.port = host, port
        self.url = f"http://{host}:{port}/"
        self.metrics_bind = metrics_bind
        self.metrics_url = "http://{}:{}/metrics".format(*_split_addr(metrics_bind, 80)) if metrics_bind else None
        self.conf_file = os.path.join(self.workdir, "haproxy.cfg")
        self.pid_file = os.path.join(self.workdir, "haproxy.pid")
        self.state_file = os.path.join(self.workdir, "server-state")
        self.socket = _short_socket(os.path.join(self.workdir, "admin.sock"), "hap")

    def write_config(self):
        self._mkdir(self.workdir)
        self._mkdir(self.log_dir)
        if not os.path.exists(self.state_file):
            self._write(self.state_file, "")
        lines = [
            "# generated by sandbox.web -- do not edit",
            "global",
            "    maxconn 2048",
            "    log stderr format raw local0 notice",
            f"    stats socket {self.socket} mode 660 level admin expose-fd listeners",
            "    stats timeout 30s",
            f"    server-state-file {self.state_file}",
            "",
            "defaults",
            "    mode http",
            "    log global",
            "    option dontlognull",
            "    timeout connect 2s",
            "    timeout client 30s",
            "    timeout server 30s",
            "    timeout check 2s",
            "    retries 3",
            "    option redispatch 1",
            "    retry-on conn-failure empty-response 502 503",
            "    load-server-state-from-file global",
            "",
            f"frontend fe_{self.backend}",
            f"    bind {self.bind}",
            f"    default_backend {self.backend}",
            "",
            f"backend {self.backend}",
            "    balance roundrobin",
            f"    option httpchk GET {self.check_uri}",
            "    http-response set-header X-Backend-Server %s",
            f"    default-server check inter {self.check_inter} fastinter {self.check_inter} "
            f"downinter {self.check_inter} rise {self.rise} fall {self.fall}",
        ]
        for name, addr in self.servers.items():
            lines.append(f"    server {name} {addr}")
        if self.metrics_bind:
            lines += ["", "frontend metrics", f"    bind {self.metrics_bind}",
                      "    http-request use-service prometheus-exporter if { path /metrics }"]
        self._write(self.conf_file, "\n".join(lines) + "\n")

    def check_config(self):
        res = subprocess.run([HAPROXY, "-c", "-q", "-f", self.conf_file], capture_output=True, text=True)
        if res.returncode != 0:
            raise ServiceError(f"haproxy config {self.conf_file} invalid:\n{res.stdout}{res.stderr}")

    def start(self):
        if self.running:
            return self
        self._check_port_free(self.host, self.port)
        self.write_config()
        self.check_config()
        if os.path.lexists(self.socket):
            os.unlink(self.socket)
        try:
            proc = self._popen([HAPROXY, "-W", "-db", "-f", self.conf_file, "-p", self.pid_file], "haproxy")
            self._wait_until(lambda: _tcp_open(self.host, self.port) and _unix_open(self.socket),
                             f"haproxy on {self.bind} and {self.socket}", 20, procs=[proc])
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout=20):
        self._wait_until(lambda: _tcp_open(self.host, self.port) and _unix_open(self.socket),
                         "haproxy", timeout)

    def _pid_files(self):
        return [self.pid_file]

    def stop(self):
        self._stop_procs(signal.SIGUSR1, timeout=10)  # USR1 = soft stop (finish running requests)
        self._stop_pid_files(signal.SIGUSR1, timeout=10)
        if os.path.lexists(self.socket) and self.socket.startswith("/tmp/dpl-hap-"):
            os.unlink(self.socket)

    def command(self, cmd, timeout=5.0) -> str:
        """Send one runtime API command and return the answer text."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(self.socket)
            s.sendall(cmd.rstrip("\n").encode() + b"\n")
            chunks = []
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
        finally:
            s.close()
        return b"".join(chunks).decode("utf-8", errors="replace")

    def servers_state(self) -> dict:
        """``show servers state <backend>`` parsed: {server name: {column: value}}."""
        out = self.command(f"show servers state {self.backend}")
        lines = [ln for ln in out.splitlines() if ln.strip()]
        header = None
        result = {}
        for ln in lines:
            if ln.startswith("#"):
                header = ln.lstrip("# ").split()
                continue
            if header is None or ln.strip() == "1":
                continue
            fields = ln.split()
            row = dict(zip(header, fields))  # noqa: B905 (a short row: the columns it has)
            if "srv_name" in row:
                result[row["srv_name"]] = row
        return result

    def server_state(self, name) -> str:
        """Admin state of server ``name``: ``'maint'``, ``'drain'`` or ``'ready'``."""
        rows = self.servers_state()
        if name not in rows:
            raise KeyError(f"no server {name!r} in backend {self.backend}: {sorted(rows)}")
        admin = int(rows[name]["srv_admin_state"])
        if admin & _ADMF_MAINT:
            return "maint"
        if admin & _ADMF_DRAIN:
            return "drain"
        return "ready"

    def server_status(self, name) -> str:
        """The ``show stat`` status of server ``name``: ``UP``, ``DOWN``, ``DRAIN``, ``MAINT``, ``UP 1/2`` ..."""
        out = self.command("show stat")
        lines = out.splitlines()
        header = lines[0].lstrip("# ").split(",")
        for ln in lines[1:]:
            row = dict(zip(header, ln.split(",")))  # noqa: B905 (a short row: the columns it has)
            if row.get("pxname") == self.backend and row.get("svname") == name:
                return row.get("status", "")
        raise KeyError(f"no server {name!r} in backend {self.backend}")

    def wait_status(self, name, status="UP", timeout=15.0):
        ok = _wait(lambda: self.server_status(name) == status, timeout, 0.1)
        if not ok:
            raise ServiceError(
                f"haproxy: server {name} is {self.server_status(name)!r}, not {status!r} after {timeout}s")

    def _worker_pid(self):
        for ln in self.command("show info").splitlines():
            if ln.startswith("Pid:"):
                return ln.split(":", 1)[1].strip()
        return None

    def reload(self, timeout=15.0):
        """Rewrite the config from ``servers``, save server states, and reload (master ``USR2``);
        waits until a new worker answers on the runtime socket."""
        if not self.running:
            raise ServiceError("haproxy is not running")
        self.write_config()
        self.check_config()
        state = self.command("show servers state")
        self._write(self.state_file, state)
        old = self._worker_pid()
        master = _read_pid(self.pid_file) or self._procs[0][0].pid
        os.kill(master, signal.SIGUSR2)

        def new_worker():
            try:
                pid = self._worker_pid()
            except OSError:
                return False
            return pid is not None and pid != old

        self._wait_until(new_worker, "a new haproxy worker after reload", timeout)
        return self

    def update_servers(self, servers: dict):
        """Replace the server list and reload."""
        self.servers = dict(servers)
        return self.reload()

    def __repr__(self):
        return f"HAProxy({self.backend!r}, {self.url})"


# --------------------------------------------------------------------------- nginx LB


class NginxLB(_Service):
    """nginx as the load balancer (the article's way): ``upstream`` block in a separate file.

    ``upstream_file`` holds ``upstream <upstream> { ... }`` with exactly one line
    per server, ``    server 127.0.1.1:8080;  # web-1``; the deploy system edits
    that file (comment out / mark ``down``), runs :meth:`nginx_test_command` and
    :meth:`reload_command`.  Responses carry ``X-Upstream-Addr``.

    The upstream file is root's, in a root-owned folder beside the workdir
    (``<workdir>-upstream/``): the deploy module (root) rewrites it and refuses a file or
    folder anyone else could change.  nginx (the service user) only reads it.
    """

    kind = "nginx-lb"

    def __init__(self, workdir, upstream, servers: dict, bind="127.0.0.1:8001", user="www-data",
                 keepalive_timeout="0"):
        super().__init__(workdir, user)
        self.name = upstream
        # client keep-alive off by default: on `nginx -s reload` old workers close idle keep-alive
        # connections, which races with clients (wrk counts "read errors"); "15s" turns it on
        self.keepalive_timeout = keepalive_timeout
        self.upstream = upstream
        self.servers = dict(servers)
        self.bind = bind
        host, port = _split_addr(bind, 80)
        self.host, self.port = host, port
        self.url = f"http://{host}:{port}/"
        self.conf_file = os.path.join(self.workdir, "nginx.conf")
        self.upstream_dir = self.workdir + "-upstream"
        self.upstream_file = os.path.join(self.upstream_dir, f"upstream-{upstream}.conf")
        self.pid_file = os.path.join(self.workdir, "nginx.pid")
        self._mkdir(self.workdir)
        self._mkdir(self.upstream_dir, owned=False)
        self.write_upstream()  # a new object starts from its own server list
        self.write_config()

    @staticmethod
    def server_line(name, addr) -> str:
        return f"    server {addr};  # {name}"

    def upstream_text(self, servers=None) -> str:
        servers = self.servers if servers is None else servers
        body = "\n".join(self.server_line(n, a) for n, a in servers.items())
        return f"upstream {self.upstream} {{\n{body}\n}}\n"

    def write_upstream(self, servers=None):
        self._write(self.upstream_file, self.upstream_text(servers), owned=False)

    def write_config(self):
        self._mkdir(self.workdir)
        self._mkdir(self.log_dir)
        temp = self._mkdir(os.path.join(self.workdir, "temp"))
        for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            self._mkdir(os.path.join(temp, k))
        error_log = self._touch(os.path.join(self.log_dir, "nginx-error.log"))
        access_log = self._touch(os.path.join(self.log_dir, "nginx-access.log"))
        head, temp_paths = _nginx_common(self.workdir, self.user, self.group, error_log, self.pid_file, 2048)
        http = f"""
http {{
{temp_paths}
    default_type application/octet-stream;
    access_log {access_log};
    server_tokens off;
    keepalive_timeout {self.keepalive_timeout};
    include {self.upstream_file};

    server {{
        listen {self.bind};
        server_name _;
        location / {{
            proxy_pass http://{self.upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_connect_timeout 2s;
            proxy_next_upstream error timeout http_502 http_503 http_504;
            proxy_next_upstream_tries 3;
            add_header X-Upstream-Addr $upstream_addr always;
        }}
    }}
}}
"""
        if not os.path.exists(self.upstream_file):
            self.write_upstream()
        self._write(self.conf_file, head + http)

    def nginx_test_command(self) -> list:
        return [NGINX, "-t", "-q", "-p", self.workdir, "-c", self.conf_file]

    def reload_command(self) -> list:
        return [NGINX, "-p", self.workdir, "-c", self.conf_file, "-s", "reload"]

    def _master_pid(self):
        return _read_pid(self.pid_file) or (self._procs[0][0].pid if self._procs else None)

    def reload(self, timeout=15.0):
        """Test the config, reload, and wait until the old workers are replaced."""
        res = subprocess.run(self.nginx_test_command(), capture_output=True, text=True)
        if res.returncode != 0:
            raise ServiceError(f"nginx -t failed:\n{res.stdout}{res.stderr}")
        master = self._master_pid()
        before = set(_children(master))
        res = subprocess.run(self.reload_command(), capture_output=True, text=True)
        if res.returncode != 0:
            raise ServiceError(f"nginx -s reload failed:\n{res.stdout}{res.stderr}")
        ok = _wait(lambda: (lambda now: now and not (now & before))(set(_children(master))), timeout)
        if not ok:
            self._fail(f"workers were not replaced within {timeout}s after reload")
        return self

    def start(self):
        if self.running:
            return self
        self._check_port_free(self.host, self.port)
        self.write_config()
        try:
            proc = self._popen([NGINX, "-p", self.workdir, "-c", self.conf_file], "nginx")
            self._wait_until(lambda: _tcp_open(self.host, self.port), f"nginx on {self.bind}", 20,
                             procs=[proc])
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout=20):
        self._wait_until(lambda: _tcp_open(self.host, self.port), f"nginx on {self.bind}", timeout)

    def _pid_files(self):
        return [self.pid_file]

    def stop(self):
        self._stop_procs(signal.SIGQUIT, timeout=10)
        self._stop_pid_files(signal.SIGQUIT, timeout=10)

    def __repr__(self):
        return f"NginxLB({self.upstream!r}, {self.url})"
