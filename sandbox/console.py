"""The web console (``console/``) on salt-api, for the sandbox and the integration tests.

- :func:`master_options`: the master options that serve the console with ``rest_cherrypy``
  (``app``/``static``) and let two users of the ``file`` eauth in: ``operator`` may run
  every ``deploy.*`` runner, ``viewer`` only the read-only views;
- :func:`write_users`: the user file of the ``file`` eauth (``user:sha256(password)``);
- :func:`start_api` / :func:`wait_api`: salt-api as a daemon of the sandbox.

The same configuration is what docs/console.md shows.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONSOLE_DIR = os.path.join(REPO_ROOT, "console")
NETAPI_DIR = os.path.join(REPO_ROOT, "_netapi")
APP_PATH = "/console"
STATIC_PATH = "/console-static"

# eauth ACLs: regular expressions matched (re.match) against "<module>.<function>" of a runner
OPERATOR_ACL = [{"@runner": [r"deploy\..*"]}]
# Function names only: an eauth ``kwargs`` rule is no boundary (a request sent straight to the
# master's request port is checked on other keys than the runner reads: docs/console.md)
VIEWER_FUNCTIONS = ("projects", "refs", "releases", "history", "stats", "lock_status", "changes")
VIEWER_ACL = [{"@runner": [r"deploy\.(" + "|".join(VIEWER_FUNCTIONS) + r")$"]}]

# the sandbox's demo logins (printed by `python -m sandbox up`; the tests use their own)
DEMO_USERS = {"operator": "rainbow-operator", "viewer": "rainbow-viewer"}


def master_options(users_file, port, host="127.0.0.1", log_dir=None):
    """Master config entries for salt-api with the console and the file eauth."""
    api = {
        "host": host,
        "port": int(port),
        "disable_ssl": True,  # loopback only; see docs/console.md for TLS
        "app": os.path.join(CONSOLE_DIR, "index.html"),
        "app_path": APP_PATH,
        "static": CONSOLE_DIR,
        "static_path": STATIC_PATH,
    }
    if log_dir:
        api["log_access_file"] = os.path.join(log_dir, "api-access.log")
        api["log_error_file"] = os.path.join(log_dir, "api-error.log")
    return {
        "rest_cherrypy": api,
        "external_auth": {
            "file": {
                "^filename": users_file,
                "^filetype": "text",
                "^hashtype": "sha256",
                "operator": OPERATOR_ACL,
                "viewer": VIEWER_ACL,
            }
        },
        "netapi_enable_clients": ["runner", "runner_async"],
        # the console's netapi module serves rest_cherrypy with the anti-framing headers (_netapi/deploy_console.py)
        "disable_netapis": ["rest_cherrypy"],
        "netapi_dirs": [NETAPI_DIR],
    }


def write_users(path, users):
    """``users``: name -> password; written as ``name:sha256hex``, mode 0600."""
    lines = [f"{name}:{hashlib.sha256(pw.encode()).hexdigest()}\n" for name, pw in users.items()]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.writelines(lines)
    return path


def url(host, port):
    return f"http://{host}:{port}{APP_PATH}"


def free_port(preferred=None):
    if preferred:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_api(salt_api, conf_dir, log):
    """``salt-api -d -c conf_dir``; returns the Popen of the daemonizing parent."""
    with open(log, "ab") as fh:
        return subprocess.Popen([salt_api, "-d", "-c", conf_dir], stdin=subprocess.DEVNULL, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)


def wait_api(host, port, timeout=30):
    """True once salt-api answers on host:port (GET / with JSON)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(f"http://{host}:{port}/", headers={"Accept": "application/json"})
            with urllib.request.urlopen(req, timeout=2) as resp:
                json.load(resp)
                return True
        except (OSError, ValueError, urllib.error.URLError):
            time.sleep(0.3)
    return False
