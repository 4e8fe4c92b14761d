"""A throw-away Prometheus server on loopback (Debian's ``prometheus``): for the tests of the analysis gate's
``prometheus`` provider.

It runs as the calling user with its own config, data folder and free port, scraping ``targets``
(``{job: [http://host:port/metrics, ...]}``) every ``scrape_interval``; ``stop()`` ends it.
``users``: ``{name: password}`` turns on basic auth (Prometheus' web config, bcrypt hashes).
"""

import base64
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request

from sandbox.etcd import free_port

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def _bcrypt(password):
    import crypt  # noqa: PLC0415 -- Python < 3.13; Debian's libxcrypt makes bcrypt hashes

    # the lowest cost: Prometheus checks every request of a test
    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))


class PrometheusServer:
    """``PrometheusServer(folder, {"haproxy": ["http://127.0.0.1:8404/metrics"]}).start()``; ``url`` is its address."""

    def __init__(self, folder, targets, host="127.0.0.1", port=None, scrape_interval="1s", users=None):
        self.folder, self.host = str(folder), host
        self.port = port or free_port(host)
        self.targets = dict(targets)
        self.scrape_interval = scrape_interval
        self.users = dict(users or {})
        self.proc = None

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    def _config(self):
        jobs = []
        for job, urls in self.targets.items():
            parts = [urllib.parse.urlsplit(u) for u in urls]
            paths = {p.path or "/metrics" for p in parts}
            if len(paths) != 1:
                raise ValueError(f"job {job}: one metrics path per job, not {sorted(paths)}")
            jobs.append({"job_name": job, "metrics_path": paths.pop(),
                         "static_configs": [{"targets": [p.netloc for p in parts]}]})
        # JSON is YAML: no YAML writer needed
        return {"global": {"scrape_interval": self.scrape_interval, "scrape_timeout": self.scrape_interval,
                           "evaluation_interval": self.scrape_interval},
                "scrape_configs": jobs}

    def start(self, timeout=30):
        os.makedirs(self.folder, exist_ok=True)
        conf = os.path.join(self.folder, "prometheus.yml")
        with open(conf, "w", encoding="utf-8") as fh:
            json.dump(self._config(), fh, indent=2)
        argv = [PROMETHEUS, f"--config.file={conf}", f"--storage.tsdb.path={os.path.join(self.folder, 'data')}",
                f"--web.listen-address={self.host}:{self.port}", "--storage.tsdb.retention.time=2h",
                "--log.level=warn"]
        if self.users:
            web = os.path.join(self.folder, "web.yml")
            with open(web, "w", encoding="utf-8") as fh:
                json.dump({"basic_auth_users": {u: _bcrypt(p) for u, p in self.users.items()}}, fh)
            argv.append(f"--web.config.file={web}")
        log = open(os.path.join(self.folder, "prometheus.log"), "ab")  # noqa: SIM115 -- the child keeps it
        with log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.folder, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                with open(os.path.join(self.folder, "prometheus.log"), encoding="utf-8", errors="replace") as fh:
                    raise RuntimeError(f"prometheus did not start on {self.url}:\n{fh.read()[-3000:]}")
            time.sleep(0.2)
        self.wait_scraping(deadline - time.monotonic())
        return self

    def _get(self, path):
        req = urllib.request.Request(f"{self.url}{path}")
        if self.users:
            user, password = next(iter(self.users.items()))
            req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=2) as resp:
            return resp.status, resp.read()

    def ready(self):
        try:
            return self._get("/-/ready")[0] == 200
        except OSError:
            return False

    def wait_scraping(self, timeout=20):
        """Until every target has been scraped once, successfully (Prometheus applies new targets after a few
        seconds)."""
        want = sum(len(urls) for urls in self.targets.values())
        deadline = time.monotonic() + max(timeout, 1)
        while True:
            targets = json.loads(self._get("/api/v1/targets")[1])["data"]["activeTargets"]
            if len(targets) == want and all(t.get("health") == "up" for t in targets):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus on {self.url}: targets not scraped: {targets}")
            time.sleep(0.2)

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
