"""Shared helpers of the benchmark scripts (bench/*.py): a sandbox of their own, timed
Salt commands, the runner's history record, statistics, result files.

Each script brings up a sandbox cluster through the sandbox package's Python API
(:class:`sandbox.cluster.Sandbox`), with the pillar written by ``sandbox.pillar`` but
with the bench's own envs/overrides (:class:`BenchSandbox` overrides ``write_pillar``;
``sandbox/cluster.py`` is not modified), and always tears it down (``finally``, SIGTERM,
SIGHUP and Ctrl-C included).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from sandbox import pillar as sandbox_pillar  # noqa: E402
from sandbox import repo as sample_repo  # noqa: E402
from sandbox.cluster import (ENV, NODE_PORT, PROJECT, Sandbox, SandboxError, _cmdline,  # noqa: E402
                             processes_matching, salt_bin)

RESULTS_DIR = os.path.join(REPO_ROOT, "bench", "results")
DEFAULT_NET = "127.0.250"
DEFAULT_LB_PORT = 8250
# what the salt CLI prints when the master did not take its publish in time (no job ran)
NOT_PUBLISHED = "The master is not responding"
PUBLISH_TRIES = 3


def say(text=""):
    print(text, flush=True)


# --------------------------------------------------------------------------- pillar


def batch_envs(batch="34%", preprod="pre-1", target=f"G@roles:{PROJECT} and G@env:pro", max_failures=0):
    """The bench's ``pro`` env: preprod first, then one stage ``all`` in batches of ``batch``
    (34% of 10 web nodes -> batches of 4, 4, 2)."""
    env = {"branch": "master", "target": target, "stages": [{"name": "all", "batch": batch}],
           "max_failures": max_failures}
    if preprod:
        env["preprod"] = preprod
    return {"pro": env}


class BenchSandbox(Sandbox):
    """A :class:`Sandbox` whose pillar has the bench's envs and overrides (written by
    ``sandbox.pillar`` exactly as ``Sandbox.write_pillar`` does, plus ``envs``,
    ``project_extra`` (deep-merged into the project) and ``node_extra[node]``)."""

    def __init__(self, *args, envs=None, project_extra=None, node_extra=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.envs = envs or batch_envs()
        self.project_extra = project_extra or {}
        self.node_extra = node_extra or {}

    def write_pillar(self):
        project = sandbox_pillar.project_pillar(self.repo, self.lb_pillar(), envs=self.envs,
                                                overrides=self.project_extra)
        nodes = {
            node: sandbox_pillar.node_pillar(self.node_root(node), self.addr[node], self.php[node].reload_command(),
                                             job=node == self.job_node, port=NODE_PORT,
                                             overrides=self.node_extra.get(node))
            for node in self.nodes
        }
        self.write_pillars(project, nodes)

    def check_url(self, node, path="/"):
        return f"http://{self.addr[node]}:{NODE_PORT}{path}"


# --------------------------------------------------------------------------- statistics


def stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return {"n": 0, "median": None, "min": None, "max": None, "values": []}
    return {"n": len(values), "median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "values": [round(v, 3) for v in values]}


def fmt(v, unit="s", digits=2):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}{unit}"
    return f"{v}{unit}"


def table(rows, headers):
    """A plain text table (list of rows of str)."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    return "\n".join(out)


def stat_row(name, st, unit="s"):
    return [name, fmt(st["median"], unit), fmt(st["min"], unit), fmt(st["max"], unit), st["n"]]


STAT_HEADERS = ["measure", "median", "min", "max", "n"]


# --------------------------------------------------------------------------- the bench


def base_parser(name, description, reps):
    parser = argparse.ArgumentParser(prog=f"python bench/{name}.py", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=reps, help=f"repetitions (default {reps})")
    parser.add_argument("--path", default=f"/tmp/dpl-bench-{name.replace('_', '-')}",
                        help="sandbox folder (default %(default)s; removed at the end)")
    parser.add_argument("--net", default=DEFAULT_NET, help="loopback /24 of the nodes (default %(default)s)")
    parser.add_argument("--lb-port", type=int, default=DEFAULT_LB_PORT, help="HAProxy port (default %(default)s)")
    parser.add_argument("--web", type=int, default=10, help="web nodes (default %(default)s)")
    parser.add_argument("--keep", action="store_true", help="leave the sandbox running at the end (debugging)")
    parser.add_argument("--light", action=argparse.BooleanOptionalAction, default=None,
                        help="light sandbox: minions with multiprocessing: False, 1 PHP-FPM worker per node "
                             "(default: on above 50 web nodes)")
    return parser


class Bench:
    """One benchmark run: sandbox up on enter, down on exit; timed commands; the result file."""

    def __init__(self, name, args, **sandbox_kwargs):
        self.name = name
        self.args = args
        self.sandbox_kwargs = sandbox_kwargs
        self.box = None
        self._client = None
        self.cleanups = []  # callables run before the teardown (e.g. stop a load generator)
        self.started = time.monotonic()
        self.result = {
            "bench": name,
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": {
                "cpu_count": os.cpu_count(),
                "loadavg_start": [round(x, 2) for x in os.getloadavg()],
                "python": platform.python_version(),
                "salt": _salt_version(),
                "kernel": platform.release(),
            },
            "args": {k: v for k, v in vars(args).items()},
        }

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _raise_exit)
        path = os.path.abspath(self.args.path)
        old = Sandbox.load(path, out=say)
        if old is not None:
            say(f"removing the sandbox left in {path}")
            old.stop()
            old.remove()
        elif os.path.exists(path) and os.listdir(path):
            raise SandboxError(f"{path} exists and is not a sandbox: choose another --path")
        self.box = BenchSandbox(path, web=self.args.web, lb_port=self.args.lb_port, net=self.args.net, out=say,
                                light=getattr(self.args, "light", None), **self.sandbox_kwargs)
        self.box.preflight()
        say(f"==> sandbox in {path}: {self.args.web} web nodes on {self.args.net}.x, LB 127.0.0.1:{self.args.lb_port}, "
            f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
        t = time.monotonic()
        try:
            self.box.up()
        except BaseException:
            self._down()
            raise
        self.result["sandbox_up_seconds"] = round(time.monotonic() - t, 1)
        return self

    def __exit__(self, exc_type, exc, tb):
        for cleanup in self.cleanups:
            with contextlib.suppress(Exception):
                cleanup()
        if exc_type is not None and self.box is not None:
            self._save_logs()
        if self.args.keep:
            say(f"--keep: the sandbox stays in {self.box.path} (python -m sandbox down --path {self.box.path})")
        else:
            self._down()
        return False

    def _save_logs(self):
        """On failure: the sandbox's salt logs and the web services' logs into bench/results/."""
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        dest = os.path.join(RESULTS_DIR, f"{self.name}-{stamp}-failure-logs")
        try:
            shutil.copytree(self.box.log_dir, os.path.join(dest, "salt"), ignore_dangling_symlinks=True)
            svc = os.path.join(self.box.path, "svc")
            for name in sorted(os.listdir(svc)):
                logs = os.path.join(svc, name, "logs")
                if os.path.isdir(logs):
                    shutil.copytree(logs, os.path.join(dest, "svc", name))
            say(f"logs of the failed run: {os.path.relpath(dest, REPO_ROOT)}")
        except OSError as exc:
            say(f"could not save the logs: {exc}")

    def _down(self):
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.destroy()
            self._client = None
        if self.box is None:
            return
        say(f"==> tearing down {self.box.path}")
        try:
            killed = self.box.stop()
            for pid, line in killed:
                say(f"    killed leftover pid {pid}: {line}")
            left = self.box.leftovers()
            if left:
                say(f"    WARNING: still running after stop: {left}")
            else:
                self.box.remove()
        except Exception as exc:  # pylint: disable=broad-except
            say(f"    WARNING: teardown: {exc}")

    # ---------------------------------------------------------------- commands
    def run(self, argv, timeout=600, check=False, quiet=True):
        """Run argv; returns (wall seconds, CompletedProcess)."""
        t = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))
        wall = time.monotonic() - t
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n"
                               f"{proc.stderr[-2000:]}")
        if not quiet:
            say(proc.stdout)
        return wall, proc

    def salt(self, *args, timeout=600, check=True, cli_timeout=None, tries=PUBLISH_TRIES):
        """`salt -c <conf> --out=json --static [-t cli_timeout] <args>`; returns (wall, parsed JSON).

        A CLI that could not hand its job to a congested master (``The master is not responding``:
        nothing ran) tries again, up to ``tries`` times, 10 s apart; the wall is the attempt that
        published, and each retry is said and counted in ``result["cli_retries"]``."""
        argv = [*self.box.salt_cmd("salt"), "--out=json", "--static",
                *(["-t", str(cli_timeout)] if cli_timeout else []), *args]
        for attempt in range(1, tries + 1):
            wall, proc = self.run(argv, timeout=timeout)
            if NOT_PUBLISHED not in proc.stdout + proc.stderr or attempt == tries:
                break
            self.result["cli_retries"] = self.result.get("cli_retries", 0) + 1
            fun = next((a for a in args[1:] if "." in a and "," not in a), args[0])  # not the node list
            say(f"    salt {fun}: the master took no job ({NOT_PUBLISHED}); again in 10 s ({attempt}/{tries})")
            time.sleep(10)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n"
                               f"{proc.stderr[-2000:]}")
        try:
            data = json.loads(proc.stdout or "{}")
        except ValueError:
            data = {"_raw": proc.stdout[-2000:]}
        return wall, data

    def salt_run(self, fun, *args, out=None, timeout=600, **kwargs):
        """`salt-run -c <conf> <fun> k=v ...` as a user types it; returns (wall, CompletedProcess)."""
        argv = [*self.box.salt_cmd("salt-run"), fun, *args, *[f"{k}={v}" for k, v in kwargs.items()]]
        if out:
            argv.insert(3, f"--out={out}")
        return self.run(argv, timeout=timeout)

    def local_client(self):
        """An in-process salt LocalClient on the sandbox's master (what the runner uses)."""
        if self._client is None:
            import salt.client  # pylint: disable=import-outside-toplevel

            self._client = salt.client.LocalClient(c_path=os.path.join(self.box.conf_dir, "master"))
            sys.excepthook = sys.__excepthook__
        return self._client

    def rtt(self, nodes, fun="test.ping", arg=(), timeout=30):
        """Wall time of one in-process ``LocalClient.cmd(<nodes>, fun, tgt_type='list')``: one
        Salt round trip without any CLI start-up (the runner's unit of work).  Returns
        (seconds, number of minions that answered)."""
        client = self.local_client()
        t = time.monotonic()
        ret = client.cmd(sorted(nodes), fun, list(arg), tgt_type="list", timeout=timeout) or {}
        return time.monotonic() - t, len(ret)

    def refresh_pillar(self):
        self.salt("*", "saltutil.refresh_pillar", "wait=True")

    def set_pillar(self, envs=None, project_extra=None, node_extra=None):
        if envs is not None:
            self.box.envs = envs
        if project_extra is not None:
            self.box.project_extra = project_extra
        if node_extra is not None:
            self.box.node_extra = node_extra
        self.box.write_pillar()
        self.refresh_pillar()

    def history(self):
        records = []
        try:
            with open(self.box.history_path(), encoding="utf-8") as fh:
                for line in fh:
                    with contextlib.suppress(ValueError):
                        records.append(json.loads(line))
        except OSError:
            pass
        return records

    def deploy(self, fun="deploy.release", **kwargs):
        """salt-run deploy.release / deploy.rollback; returns (wall, record of this run, proc)."""
        before = len(self.history())
        wall, proc = self.salt_run(fun, project=PROJECT, env=ENV, **kwargs)
        records = self.history()
        record = records[-1] if len(records) > before else None
        return wall, record, proc

    def release(self, expect_ok=True, **kwargs):
        wall, record, proc = self.deploy("deploy.release", **kwargs)
        ok = proc.returncode == 0 and record is not None and record.get("result") == "success"
        if expect_ok and not ok:
            raise RuntimeError(f"release failed (exit {proc.returncode}, record {record and record.get('error')}):\n"
                               f"{proc.stdout[-3000:]}\n{proc.stderr[-1500:]}")
        return wall, record, proc

    def add_release(self, version):
        return sample_repo.add_release(self.box.repo, version)

    def add_release_files(self, version, files):
        """A commit of ``version`` with ``files`` ({path: text}) on top."""
        return sample_repo.add_release(self.box.repo, version, files=files)

    def currents(self, nodes=None):
        return {n: self.box.current(n) for n in (nodes or self.box.nodes)}

    # ---------------------------------------------------------------- results
    def finish(self, **data):
        self.result.update(data)
        self.result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        self.result["runtime_seconds"] = round(time.monotonic() - self.started, 1)
        os.makedirs(RESULTS_DIR, exist_ok=True)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = os.path.join(RESULTS_DIR, f"{self.name}-{stamp}.json")
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.result, fh, indent=2, sort_keys=True, default=str)
        say(f"result file: {os.path.relpath(path, REPO_ROOT)}")
        return path

    def machine_line(self):
        m = self.result["machine"]
        return (f"machine: {m['cpu_count']} cores (os.cpu_count()), load average at start {m['loadavg_start'][0]}, "
                f"now {os.getloadavg()[0]:.2f}; salt {m['salt']}, python {m['python']}")


def _raise_exit(signum, _frame):
    raise SystemExit(128 + signum)


def _salt_version():
    try:
        import salt.version

        return salt.version.__version__
    except Exception:  # pylint: disable=broad-except
        return "?"
    finally:  # importing salt installs its own excepthook: keep Python's tracebacks plain
        sys.excepthook = sys.__excepthook__


def timings_of(record):
    """(build, prepare, preprod, [batch dicts], [drain seconds]) of a history record."""
    t = (record or {}).get("timings") or {}
    return t.get("build"), t.get("prepare"), t.get("preprod"), t.get("batches") or [], t.get("drain") or []


# --------------------------------------------------------------------------- bytes on a TCP port


class PortBytes:
    """Bytes carried by the TCP connections whose local port is one of ``ports`` (the
    master's side), between :meth:`start` and :meth:`stop`.

    From the kernel's tcp_info, read with ``ss``: snapshots of the established connections
    (at start, every ``interval`` seconds, at stop) plus ``ss -E`` socket-destroy events, which
    carry a connection's final numbers (netlink may drop some of those on a busy machine:
    the periodic snapshots bound what is lost to the last ``interval`` of a connection).  Per
    connection: the highest ``bytes_acked`` (sent by the master and acknowledged) and
    ``bytes_received`` seen, minus what it had at start.  Loopback, so no NIC counter is shared
    with other users of the machine."""

    def __init__(self, ports, interval=0.1):
        self.ports = [int(p) for p in ports]
        self.interval = interval
        self.seen = {}
        self.base = {}
        self.proc = None
        self.threads = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.events = 0

    def _filter(self):
        return "( " + " or ".join(f"sport = :{p}" for p in self.ports) + " )"

    @staticmethod
    def _parse(text):
        out = {}
        key = None
        for line in text.splitlines():
            if not line.strip():
                continue
            if not line[0].isspace():
                parts = line.split()
                addrs = [p for p in parts if ":" in p and p[-1].isdigit()]
                key = tuple(addrs[:2]) if len(addrs) >= 2 else None
                continue
            if key is None:
                continue
            vals = {}
            for tok in line.split():
                if ":" in tok:
                    k, _, v = tok.partition(":")
                    if k in ("bytes_acked", "bytes_received") and v.isdigit():
                        vals[k] = int(v)
            if vals:
                out[key] = (vals.get("bytes_acked", 0), vals.get("bytes_received", 0))
            key = None
        return out

    def snapshot(self):
        proc = subprocess.run(["ss", "-tinH", "state", "established", self._filter()], capture_output=True,
                              text=True, check=False)
        return self._parse(proc.stdout)

    def _merge(self, found):
        with self.lock:
            for key, (acked, recv) in found.items():
                old = self.seen.get(key, (0, 0))
                self.seen[key] = (max(old[0], acked), max(old[1], recv))

    def _events(self):
        pending = []
        for line in self.proc.stdout:
            if line and not line[0].isspace():
                pending = [line]
            else:
                pending.append(line)
                found = self._parse("".join(pending))
                self.events += len(found)
                self._merge(found)
                pending = []

    def _poll(self):
        while not self.stopping.wait(self.interval):
            self._merge(self.snapshot())

    def start(self):
        self.proc = subprocess.Popen(["stdbuf", "-oL", "ss", "-EtinH", self._filter()], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.threads = [threading.Thread(target=self._events, daemon=True)]
        time.sleep(0.3)  # let ss subscribe to the destroy events
        self.base = self.snapshot()
        self._merge(self.base)
        self.threads.append(threading.Thread(target=self._poll, daemon=True))
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        time.sleep(0.2)
        self.stopping.set()
        self._merge(self.snapshot())
        time.sleep(0.3)
        self.proc.terminate()
        self.proc.wait(timeout=5)
        for t in self.threads:
            t.join(timeout=5)
        sent = received = 0
        with self.lock:
            for key, (acked, recv) in self.seen.items():
                b_acked, b_recv = self.base.get(key, (0, 0))
                sent += max(acked - b_acked, 0)
                received += max(recv - b_recv, 0)
            connections = len(self.seen)
        return {"sent": sent, "received": received, "connections": connections, "destroy_events": self.events}


# --------------------------------------------------------------------------- CPU and memory of daemons


def _proc_fields(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def proc_usage(pids):
    """(CPU seconds (user+system of the processes and their reaped children), RSS bytes summed) of ``pids``."""
    tick = os.sysconf("SC_CLK_TCK")
    page = os.sysconf("SC_PAGE_SIZE")
    cpu = rss = 0
    for pid in pids:
        f = _proc_fields(pid)
        if not f:
            continue
        cpu += (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / tick
        rss += int(f[21]) * page
    return cpu, rss


def daemon_pids(box, name):
    """PIDs of the sandbox's salt daemon ``name`` and its worker processes: 'master' (the top master), a
    syndic master ('sm-1': its salt-master), a syndic master's salt-syndic ('sm-1-syndic') or a minion id.

    Salt keeps the command line it was started with and appends the process's role
    (``.../salt-master -d -c <conf dir> RequestServer MWorker-default-0``, ``.../salt-syndic -d -c
    <conf dir> MinionProcessManager``): a process is the daemon's when it runs that tool with exactly
    that config folder (``<path>/etc/salt`` is a prefix of ``<path>/etc/salt-sm-1``)."""
    syndic_of = name[: -len("-syndic")] if name.endswith("-syndic") else None
    if syndic_of in getattr(box, "syndic_names", ()):
        conf, tool = box.conf_dirs[syndic_of], "salt-syndic"
    elif name in box.conf_dirs:
        conf, tool = box.conf_dirs[name], "salt-master"
    else:
        conf, tool = box.minion_conf_dir(name), "salt-minion"
    return [pid for pid in processes_matching(conf) if tool in _cmdline(pid) and conf in _cmdline(pid).split()]


def proc_pss(pids):
    """Proportional set size (bytes) summed over ``pids``: forked workers' shared pages counted once."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


class PeakRSS:
    """Peak memory (PSS, bytes, summed over the daemon's processes and live children: its job
    processes) of the named daemons, sampled every ``interval`` s."""

    def __init__(self, box, names, interval=0.25):
        self.box, self.names, self.interval = box, list(names), interval
        self.pids = {n: daemon_pids(box, n) for n in self.names}
        self.peak = dict.fromkeys(self.names, 0)  # PSS
        self.peak_rss = dict.fromkeys(self.names, 0)  # RSS summed (shared pages counted in every process)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        for name in self.names:
            pids = self.pids[name] + _children(self.pids[name])
            self.peak[name] = max(self.peak[name], proc_pss(pids))
            self.peak_rss[name] = max(self.peak_rss[name], proc_usage(pids)[1])

    def _run(self):
        while not self.stopping.wait(self.interval):
            self._sample()

    def __enter__(self):
        self._sample()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.thread.join(timeout=5)
        self._sample()
        return False


def _children(pids):
    """Live child processes of ``pids`` (a minion's job processes)."""
    parents, out = set(pids), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _proc_fields(int(entry))
            if f and int(f[1]) in parents and int(entry) not in parents:
                out.append(int(entry))
    return out


def cpu_of(box, names):
    """CPU seconds so far of the named daemons (their processes and reaped children)."""
    return proc_usage([pid for n in names for pid in daemon_pids(box, n)])[0]


def cpu_each(box, names):
    """{name: CPU seconds so far} of each named daemon (see :func:`cpu_of`)."""
    return {n: cpu_of(box, [n]) for n in names}


def cpu_since(box, before):
    """{name: CPU seconds since ``before``} (a :func:`cpu_each` result), rounded to the ms."""
    return {n: round(cpu_of(box, [n]) - v, 3) for n, v in before.items()}


# --------------------------------------------------------------------------- Salt's file transfer floor


def get_file_floor(bench, nodes, size, cpu_names=("master",), cli_timeout=300):
    """``salt -L <nodes> cp.get_file`` of a file of ``size`` incompressible bytes, written into the
    sandbox's ``file_roots`` (with syndics the syndic masters serve that same folder to their
    minions), each node into a folder of its own; every node must get the whole file.  A new file
    each call, removed afterwards with the nodes' copies, so every call transfers it whole.
    Returns (wall, {name: CPU seconds of each of ``cpu_names`` during it})."""
    folder = os.path.join(bench.box.file_roots, "bench-getfile")
    into = os.path.join(bench.box.path, "bench-getfile")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "blob.bin"), "wb") as fh:
        fh.write(os.urandom(size))
    try:
        before = cpu_each(bench.box, cpu_names)
        wall, data = bench.salt("-L", ",".join(nodes), "cp.get_file", "salt://bench-getfile/blob.bin",
                                os.path.join(into, "{{ grains.id }}", "blob.bin"), "template=jinja",
                                "makedirs=True", cli_timeout=cli_timeout)
        cpu = cpu_since(bench.box, before)
        if len(data) != len(nodes) or not all(data.values()):
            raise RuntimeError(f"cp.get_file: {len(data)} of {len(nodes)} nodes answered: {str(data)[:1500]}")
        got = [n for n in nodes if os.path.exists(os.path.join(into, n, "blob.bin"))
               and os.path.getsize(os.path.join(into, n, "blob.bin")) == size]
        if len(got) != len(nodes):
            raise RuntimeError(f"cp.get_file: {len(got)} of {len(nodes)} nodes got the whole file")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(into, ignore_errors=True)
    return wall, cpu


def human_bytes(n):
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return str(n)


__all__ = [
    "Bench", "BenchSandbox", "PeakRSS", "PortBytes", "cpu_each", "cpu_of", "cpu_since", "daemon_pids",
    "get_file_floor", "proc_usage", "ENV", "PROJECT",
    "STAT_HEADERS", "base_parser", "batch_envs", "fmt",
    "human_bytes", "salt_bin", "say", "stat_row", "stats", "table", "timings_of",
]
