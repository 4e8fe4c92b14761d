"""
Release a project to a whole environment, and roll it back: the cluster side of the article.

``salt-run deploy.release project=rainbow env=pro`` runs the article's flow:

1. lock the project+env on the master;
2. build on the master from git (a cached mirror, ``git describe`` for the version),
   package once, sha256, publish on the master's fileserver;
3. plan: the env's nodes, its pre-production node, its stages and their batches;
4. prepare the release on every node in parallel (nothing switches yet);
5. switch the pre-production node first, restart, test; stop on failure;
6. then each stage, batch by batch: take the batch out of the load balancer, switch,
   restart, test, put it back; stop once failures exceed ``max_failures``;
7. record: history, statistics, cleanup of old releases, and a summary.

Orchestration lives here; everything done on a node is a call to the ``deploy``
execution module (one batched Salt call per step and batch), and load-balancer
actions are calls to ``deploy_lb`` on the LB minion.

The project definitions are read from the pillar compiled for the master's own id
(as ``state.orchestrate`` does); node secrets are never read here.

Master options (all optional):

``deploy_state_dir``
    locks and history (default ``<cachedir>/deploy``)
``deploy_artifacts_dir``
    where artifacts are written; must lie inside a ``file_roots`` directory of
    ``base`` (default ``<first base file_root>/deploy_artifacts``)
``deploy_keep_artifacts``
    artifacts kept per project (default 10)
``deploy_timeout``
    seconds to wait for a silent minion before it counts as failed (default 15)
"""

import contextlib
import datetime
import fcntl
import getpass
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import hashlib

import salt.client
import salt.pillar
import salt.utils.event
import salt.utils.jid
import salt.utils.minions
from salt.exceptions import SaltInvocationError

# gitpython is imported where a build needs it: a rollback does not pay for its import (~0.1 s)
HAS_GIT = importlib.util.find_spec("git") is not None

try:
    import psutil
except ImportError:  # pragma: no cover
    psutil = None

log = logging.getLogger(__name__)

__virtualname__ = "deploy"

PROJECT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
ENV_RE = PROJECT_RE
REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
RELEASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
FIELD_RE = re.compile(r"[^A-Za-z0-9.-]+")
LATE_RETURN_GRACE = 5  # seconds to look for returns in the job cache after the client gave up


def __virtual__():
    if not HAS_GIT:
        return (False, "the deploy runner needs gitpython")
    return __virtualname__


class DeployError(Exception):
    """A release or rollback stopped: the message says why."""


# --------------------------------------------------------------------------- small helpers


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _state_dir(*parts):
    base = __opts__.get("deploy_state_dir") or os.path.join(__opts__["cachedir"], "deploy")
    path = os.path.join(base, *parts)
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def _valid(value, regex, what):
    if not isinstance(value, str) or not regex.fullmatch(value) or ".." in value or value.endswith("/"):
        raise SaltInvocationError(
            f"invalid {what} {value!r}: allowed are {regex.pattern} without '..'"
        )
    return value


def _field(value):
    return FIELD_RE.sub("-", str(value)).strip("-") or "none"


def _batch_size(batch, count, where):
    text = str(batch).strip()
    if re.fullmatch(r"[0-9]+", text) and int(text) >= 1:
        return min(int(text), max(count, 1))
    match = re.fullmatch(r"([0-9]+)%", text)
    if match and 1 <= int(match.group(1)) <= 100:
        return max(1, math.ceil(count * int(match.group(1)) / 100))
    raise SaltInvocationError(f"{where}: batch {batch!r} must be a whole number >= 1 or a percentage 1%-100%")


def _caller():
    user = os.environ.get("SUDO_USER") or getpass.getuser()
    origin = os.environ.get("SSH_CLIENT", "").split(" ")[0] or socket.gethostname()
    return user, origin


# --------------------------------------------------------------------------- configuration


def _master_pillar():
    return salt.pillar.get_pillar(
        __opts__,
        {"id": __opts__["id"]},
        __opts__["id"],
        saltenv=__opts__.get("saltenv"),
        pillarenv=__opts__.get("pillarenv"),
    ).compile_pillar()


def _config(project, env=None):
    """The project (and env) definition, validated, from the master's pillar."""
    _valid(project, PROJECT_RE, "project name")
    if env is not None:
        _valid(env, ENV_RE, "env name")
    projects = (_master_pillar().get("deploy") or {}).get("projects") or {}
    conf = projects.get(project)
    if not isinstance(conf, dict):
        known = ", ".join(sorted(projects)) or "none"
        raise SaltInvocationError(
            f"unknown project {project!r}: the master's pillar deploy:projects has {known}"
        )
    for key in ("repo", "root", "envs"):
        if not conf.get(key):
            raise SaltInvocationError(f"project {project!r}: pillar is missing {key!r}")
    root = conf["root"]
    if not isinstance(root, str) or not os.path.isabs(root) or os.path.realpath(root) == "/":
        raise SaltInvocationError(f"project {project!r}: root {root!r} must be an absolute path other than '/'")
    if env is None:
        return conf, None
    envc = conf["envs"].get(env)
    if not isinstance(envc, dict):
        raise SaltInvocationError(
            f"unknown env {env!r} for project {project!r}: pillar has {', '.join(sorted(conf['envs']))}"
        )
    if not envc.get("target") and not envc.get("preprod"):
        raise SaltInvocationError(f"project {project!r} env {env!r}: give a 'target' (and optionally 'preprod')")
    for index, stage in enumerate(envc.get("stages") or []):
        if not isinstance(stage, dict):
            raise SaltInvocationError(f"env {env!r}: stage {index + 1} must be a dict with name, target, batch")
        _batch_size(stage.get("batch", "25%"), 1, f"env {env!r} stage {stage.get('name') or index + 1!r}")
    lb = envc.get("lb") or conf.get("lb") or {"driver": "none"}
    if lb.get("driver", "none") not in ("none", "haproxy", "nginx"):
        raise SaltInvocationError(f"project {project!r}: unknown lb driver {lb.get('driver')!r}")
    if lb.get("driver", "none") != "none" and not lb.get("minion"):
        raise SaltInvocationError(f"project {project!r}: lb needs the 'minion' that runs the load balancer")
    try:
        int(envc.get("max_failures", 0))
    except (TypeError, ValueError):
        raise SaltInvocationError(f"env {env!r}: max_failures must be a whole number") from None
    return conf, envc


# --------------------------------------------------------------------------- lock


class _Lock:
    """One release or rollback per project+env at a time, held in a file on the master."""

    def __init__(self, project, env, kind):
        self.project, self.env, self.kind = project, env, kind
        self.path = os.path.join(_state_dir("locks"), f"{project}_{env}.lock")
        self.detached_path = os.path.join(_state_dir("locks"), f"{project}_{env}.detached.json")
        self.warnings = []

    def holder(self):
        try:
            with open(self.path, encoding="utf-8") as fh:
                return json.load(fh)
        except FileNotFoundError:
            return None
        except ValueError:
            return {}

    @staticmethod
    def alive(info):
        pid = info.get("pid")
        if not pid or psutil is None:
            return bool(pid) and os.path.exists(f"/proc/{pid}")
        try:
            proc = psutil.Process(pid)
            return abs(proc.create_time() - info.get("created", 0)) < 1
        except psutil.Error:
            return False

    @staticmethod
    def describe(info):
        return (
            f"{info.get('kind', 'a run')} by {info.get('user', '?')} from {info.get('host', '?')} "
            f"(jid {info.get('jid', '?')}, pid {info.get('pid', '?')}) since {info.get('since', '?')}"
        )

    def acquire(self, jid):
        user, host = _caller()
        info = {
            "kind": self.kind,
            "user": user,
            "host": host,
            "jid": jid,
            "pid": os.getpid(),
            "created": psutil.Process().create_time() if psutil else 0,
            "since": _now(),
        }
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(info, fh)
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.path)  # atomic: fails if a lock exists
                    self.info = info
                    return self
                except FileExistsError:
                    held = self.holder()
                    if held is None:
                        continue
                    if held == {} or self.alive(held):
                        raise DeployError(
                            f"{self.project}/{self.env} is locked: "
                            + (self.describe(held) if held else "a lock is being written")
                            + f"; see salt-run deploy.unlock project={self.project} env={self.env}"
                        )
                    self.take_over(held)
            raise DeployError(f"could not take the lock {self.path}")
        finally:
            os.unlink(tmp)

    def take_over(self, held):
        """A stale lock: its run died.  Put back what it left out of the LB, then remove it."""
        stale = f"{self.path}.stale-{os.getpid()}"
        try:
            os.rename(self.path, stale)
        except FileNotFoundError:
            return
        message = f"took over a stale lock of {self.describe(held)}"
        self.warnings.append(message)
        log.warning("deploy: %s", message)
        os.unlink(stale)
        _history_append(
            self.project,
            {
                "kind": held.get("kind", "release"),
                "env": self.env,
                "result": "interrupted",
                "user": held.get("user"),
                "host": held.get("host"),
                "jid": held.get("jid"),
                "started": held.get("since"),
                "finished": _now(),
            },
        )

    def release(self):
        try:
            if self.holder() == self.info:
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    # nodes taken out of the LB: written before detaching, removed after restoring
    def detached(self):
        try:
            with open(self.detached_path, encoding="utf-8") as fh:
                return json.load(fh)
        except FileNotFoundError:
            return []

    def set_detached(self, nodes):
        if not nodes:
            if os.path.exists(self.detached_path):
                os.unlink(self.detached_path)
            return
        tmp = f"{self.detached_path}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(sorted(nodes), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.detached_path)


# --------------------------------------------------------------------------- history


def _history_path(project):
    return os.path.join(_state_dir("history"), f"{project}.jsonl")


def _history_append(project, record):
    record = {"project": project, **record}
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(_history_path(project), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _history_read(project, env=None):
    records = []
    try:
        with open(_history_path(project), encoding="utf-8") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if env is None or rec.get("env") == env:
                    records.append(rec)
    except FileNotFoundError:
        pass
    return records


# --------------------------------------------------------------------------- record of the nodes
# Every deploy.* call made by a run reports the node's inventory (releases, statuses, current and
# their fingerprint); the master keeps the latest one per node and env.  The emergency rollback
# acts on it in a single call, and a node whose state differs from it refuses (``expect``).

MUTATING = ("deploy.prepare", "deploy.switch", "deploy.cleanup", "deploy.mark")


def _record_path(project, env):
    return os.path.join(_state_dir("inventory"), f"{project}_{env}.json")


def _record_read(project, env):
    try:
        with open(_record_path(project, env), encoding="utf-8") as fh:
            return json.load(fh).get("nodes") or {}
    except (FileNotFoundError, ValueError, AttributeError):
        return {}


def _record_update(project, env, changes):
    """``changes``: node -> its inventory, or None when its state is unknown now (forget it)."""
    if not changes:
        return
    path = _record_path(project, env)
    with open(f"{path}.lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        nodes = _record_read(project, env)
        for node, inv in changes.items():
            if inv is None:
                nodes.pop(node, None)
            else:
                nodes[node] = inv
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"updated": _now(), "nodes": nodes}, fh, sort_keys=True)
        os.replace(tmp, path)


def _reported_inventory(fun, res):
    """What a deploy.* return says of the node: its inventory, None (unknown), or False (nothing)."""
    data = res.get("ret")
    if isinstance(data, dict):
        if isinstance(data.get("inventory"), dict) and data["inventory"].get("fingerprint"):
            return data["inventory"]
        if fun == "deploy.releases" and res["ok"] and data.get("fingerprint"):
            return data
    return None if fun in MUTATING else False


# --------------------------------------------------------------------------- a run


class _Run:
    """State of one release or rollback: config, plan, client, progress, results."""

    def __init__(self, project, env, kind, mode="normal"):
        self.project, self.env, self.kind, self.mode = project, env, kind, mode
        self.conf, self.envc = _config(project, env)
        self.lb = self.envc.get("lb") or self.conf.get("lb") or {"driver": "none"}  # an env may have its own
        self.has_lb = self.lb.get("driver", "none") != "none"
        self.max_failures = int(self.envc.get("max_failures", 0))
        self.timeout = int(__opts__.get("deploy_timeout", 15))
        self.started = time.monotonic()
        self.started_at = _now()
        self.client = salt.client.LocalClient(mopts=__opts__)
        self.event = salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"], listen=False)
        self.nodes = {}  # node -> {old, new, result, out_of_lb, error}
        self.timings = {}
        self.failed = []
        self.silent = set()  # nodes that never answered a switch
        self.refused = {}  # node -> its inventory: refused a switch, its state differs from the record
        self.inventories = {}  # node -> latest inventory it reported in this run (None: unknown)
        self.lock = None
        self.release = None
        self.build = {}

    def close(self):
        self.event.destroy()
        self.client.destroy()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- output
    def progress(self, message, **data):
        line = f"[{time.monotonic() - self.started:6.1f}s] {self.project}/{self.env}: {message}"
        log.info("deploy: %s", line)
        try:
            __jid_event__.fire_event({"message": line, "outputter": "deploy_progress"}, "progress")
        except (NameError, ReferenceError):
            pass
        if data:
            self.fire("node" if "node" in data else "step", message=message, **data)

    def fire(self, what, **data):
        data.update({"project": self.project, "env": self.env, "kind": self.kind, "mode": self.mode})
        if self.release:
            data.setdefault("release", self.release)
        self.event.fire_event(data, f"deploy/{self.project}/{self.env}/{what}")

    # --- salt calls: one batched call to a list of minions
    def call(self, nodes, fun, kwarg=None, timeout=None):
        nodes = sorted(nodes)
        if not nodes:
            return {}
        jid = salt.utils.jid.gen_jid(__opts__)
        ret = self.client.cmd(
            nodes, fun, kwarg=kwarg or {}, tgt_type="list", full_return=True,
            timeout=timeout or self.timeout, jid=jid,
        ) or {}
        ret = {n: r for n, r in ret.items() if not _no_return(r)}
        if len(ret) < len(nodes):
            ret.update(self.late_returns(jid, [n for n in nodes if n not in ret]))
        out = {}
        for node in nodes:
            got = ret.get(node)
            if got is None:
                out[node] = {"ok": False, "silent": True, "error": "no response: minion down or not connected"}
                continue
            data = got.get("ret") if isinstance(got, dict) else got
            retcode = got.get("retcode", 0) if isinstance(got, dict) else 0
            if isinstance(data, dict):
                ok = retcode == 0 and data.get("result", True) is not False
                out[node] = {"ok": ok, "ret": data}
                if not ok:
                    out[node]["error"] = _first_error(data)
            else:
                out[node] = {"ok": False, "error": str(data).replace("ERROR: ", "", 1)[:500]}
        if fun.startswith("deploy."):
            reported = {n: _reported_inventory(fun, res) for n, res in out.items()}
            reported = {n: inv for n, inv in reported.items() if inv is not False}
            self.inventories.update(reported)
            _record_update(self.project, self.env, reported)
        return out

    def late_returns(self, jid, missing):
        """A job can finish just as the client gives up on it: its return is in the job cache."""
        found = {}
        deadline = time.monotonic() + LATE_RETURN_GRACE
        while missing and time.monotonic() < deadline:
            try:
                cached = self.client.get_cache_returns(jid)
            except Exception:  # pylint: disable=broad-except
                cached = {}
            for node in list(missing):
                got = cached.get(node) or {}
                if got.get("ret") is not None:
                    found[node] = {"ret": got["ret"], "retcode": 0}
                    missing.remove(node)
            if missing:
                time.sleep(0.2)
        return found

    def lb_call(self, fun, nodes, **kwarg):
        minion = self.lb["minion"]
        lb = {k: v for k, v in self.lb.items() if k != "minion"}
        ret = self.call([minion], f"deploy_lb.{fun}", {"lb": lb, "servers": sorted(nodes), **kwarg})[minion]
        if not ret["ok"]:
            raise DeployError(f"load balancer ({self.lb['driver']} on {minion}): {fun} failed: {ret['error']}")
        return ret["ret"]


def _failed(ret):
    """Mark a runner return as failed: salt-run exits with ``retcode`` (as state.orchestrate does)."""
    __context__["retcode"] = 1
    ret["retcode"] = 1
    return ret


def _no_return(got):
    data = got.get("ret") if isinstance(got, dict) else got
    return isinstance(data, str) and data.startswith("Minion did not return")


def _first_error(data):
    for step in data.get("steps", []):
        if not step.get("result"):
            details = step.get("details") or []
            for detail in details:
                if not detail.get("result", detail.get("ok", True)):
                    return f"{step['step']}: {detail.get('step') or detail.get('url')}: {detail.get('output') or detail.get('error')}"
            return f"{step['step']} failed"
    return data.get("error") or "failed"


# --------------------------------------------------------------------------- build


@contextlib.contextmanager
def _mirror_lock(project):
    """Runs of different envs share a project's mirror: one clone/fetch at a time."""
    with open(os.path.join(_state_dir("git"), f"{project}.lock"), "w", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _mirror(project, repo_url):
    import git  # pylint: disable=import-outside-toplevel

    path = os.path.join(_state_dir("git"), f"{project}.git")
    env = {"GIT_TERMINAL_PROMPT": "0"}
    try:
        if os.path.isdir(path):
            repo = git.Repo(path)
            with repo.git.custom_environment(**env):
                repo.git.remote("set-url", "origin", repo_url)  # follow the pillar's `repo`
                repo.git.fetch("--prune", "origin")
        else:
            repo = git.Repo.clone_from(repo_url, path, mirror=True, env=env)
    except git.GitCommandError as exc:
        if not os.path.isfile(os.path.join(path, "HEAD")):
            shutil.rmtree(path, ignore_errors=True)
        raise DeployError(f"git: cannot fetch {repo_url}: {(exc.stderr or str(exc)).strip()[-300:]}") from None
    return repo


def _resolve(repo, ref):
    import git  # pylint: disable=import-outside-toplevel

    try:
        commit = repo.commit(ref)
    except (git.exc.BadName, git.exc.BadObject, ValueError, git.exc.GitCommandError):
        raise DeployError(f"git: unknown ref {ref!r}: not a branch, tag or commit of the repository") from None
    version = repo.git.describe("--tags", "--always", commit.hexsha)
    return commit, version


def _release_name(run, ref, commit, version):
    when = commit.committed_datetime.astimezone(datetime.timezone.utc)
    fields = [run.project, run.env, version, ref, when.strftime("%Y-%m-%d"), when.strftime("%H-%M-%S"),
              commit.committer.name]
    return "_".join(_field(f) for f in fields)


def _artifacts_dir(project):
    roots = (__opts__.get("file_roots") or {}).get("base") or []
    if not roots:
        raise DeployError("the master has no file_roots for 'base': artifacts cannot be served")
    base = __opts__.get("deploy_artifacts_dir") or os.path.join(roots[0], "deploy_artifacts")
    for root in roots:
        rel = os.path.relpath(base, root)
        if not rel.startswith(".."):
            path = os.path.join(base, project)
            os.makedirs(path, exist_ok=True)
            return path, "salt://" + (os.path.join(rel, project) if rel != "." else project)
    raise DeployError(f"deploy_artifacts_dir {base} is not inside a file_roots directory of 'base'")


def _package(run, repo, commit, workdir):
    src = os.path.join(workdir, "src")
    os.makedirs(src)
    archive = os.path.join(workdir, "git.tar")
    with open(archive, "wb") as fh:
        repo.archive(fh, treeish=commit.hexsha, format="tar")
    with tarfile.open(archive) as tar:
        tar.extractall(src, filter="data")
    for command in run.conf.get("build") or []:
        run.progress(f"build: {command}")
        proc = subprocess.run(
            ["/bin/sh", "-c", command], cwd=src, capture_output=True, text=True, check=False,
            env={**os.environ, "DEPLOY_PROJECT": run.project, "DEPLOY_ENV": run.env, "DEPLOY_RELEASE": run.release},
        )
        if proc.returncode:
            raise DeployError(
                f"build command failed (exit {proc.returncode}): {command}: {(proc.stderr or proc.stdout).strip()[-300:]}"
            )
    out = os.path.join(workdir, "release.tar.gz")
    with tarfile.open(out, "w:gz", compresslevel=6) as tar:
        for name in sorted(os.listdir(src)):
            tar.add(os.path.join(src, name), arcname=name)
    return out


def _sha256(path):
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _build(run, ref, test=False):
    """Step 1-4 of the article: latest code, build, package, place it on the fileserver."""
    started = time.monotonic()
    with _mirror_lock(run.project):
        repo = _mirror(run.project, run.conf["repo"])
        commit, version = _resolve(repo, ref)
    run.release = _release_name(run, ref, commit, version)
    info = {
        "release": run.release, "commit": commit.hexsha, "version": version, "branch": ref,
        "committer": commit.committer.name, "time": commit.committed_datetime.isoformat(),
    }
    if test:
        return info
    directory, url = _artifacts_dir(run.project)
    artifact = os.path.join(directory, f"{run.release}.tar.gz")
    record_path = os.path.join(directory, f"{run.release}.json")
    # an artifact is reused for the same commit built by the same commands (records without a
    # digest predate it, and were built by the commands of their time: taken as they are)
    steps = hashlib.sha256(json.dumps(run.conf.get("build") or []).encode()).hexdigest()
    record = None
    rebuilt = False
    if os.path.isfile(artifact) and os.path.isfile(record_path):
        with open(record_path, encoding="utf-8") as fh:
            record = json.load(fh)
        rebuilt = record.get("build", steps) != steps
        if record.get("commit") != commit.hexsha or _sha256(artifact) != record.get("checksum") or rebuilt:
            record = None
    reused = record is not None
    if rebuilt:
        run.progress(f"build: the build commands changed since {run.release} was built: building it again "
                     "(nodes that hold the old build refuse the new one: release a new commit)")
    if not reused:
        with tempfile.TemporaryDirectory(prefix="deploy-build-", dir=_state_dir("build")) as workdir:
            built = _package(run, repo, commit, workdir)
            record = {"commit": commit.hexsha, "checksum": _sha256(built), "build": steps}
            os.replace(built, artifact)
        os.chmod(artifact, 0o644)
        with open(record_path, "w", encoding="utf-8") as fh:
            json.dump(record, fh)
        _prune_artifacts(directory)
    info.update({
        "source": f"{url}/{run.release}.tar.gz",
        "checksum": record["checksum"],
        "reused": reused,
        "bytes": os.path.getsize(artifact),
    })
    run.timings["build"] = round(time.monotonic() - started, 3)
    run.progress(
        f"build: {run.release} ({commit.hexsha[:10]}, {'reused' if reused else 'built'} "
        f"{info['bytes']} bytes) in {run.timings['build']}s"
    )
    return info


def _prune_artifacts(directory):
    keep = int(__opts__.get("deploy_keep_artifacts", 10))
    tars = sorted(
        (os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".tar.gz")),
        key=os.path.getmtime, reverse=True,
    )
    for path in tars[keep:]:
        for victim in (path, path[: -len(".tar.gz")] + ".json"):
            if os.path.exists(victim):
                os.unlink(victim)


# --------------------------------------------------------------------------- plan


def _plan(run):
    """The env's nodes: preprod first, then stages of batches."""
    envc = run.envc
    ckminions = salt.utils.minions.CkMinions(__opts__)

    def match(target):
        return set(ckminions.check_minions(target, "compound")["minions"])

    nodes = match(envc["target"]) if envc.get("target") else set()
    preprod = envc.get("preprod")
    if preprod:
        nodes.add(preprod)
    if not nodes:
        raise DeployError(f"env {run.env!r}: target {envc.get('target')!r} matches no minion")
    remaining = sorted(n for n in nodes if n != preprod)
    stages = []
    for index, stage in enumerate(envc.get("stages") or [{"name": "all", "batch": "25%"}]):
        name = str(stage.get("name") or f"stage{index + 1}")
        matched = match(stage["target"]) if stage.get("target") else None  # once per stage, not per node
        members = [n for n in remaining if n in matched] if matched is not None else remaining
        remaining = [n for n in remaining if n not in members]
        size = _batch_size(stage.get("batch", "25%"), len(members), f"stage {name!r}")
        if members:
            stages.append({"name": name, "batches": [members[i:i + size] for i in range(0, len(members), size)]})
    if remaining:
        size = _batch_size("25%", len(remaining), "stage 'rest'")
        stages.append({"name": "rest", "batches": [remaining[i:i + size] for i in range(0, len(remaining), size)]})
    connected = ckminions.connected_ids()
    return {
        "nodes": sorted(nodes),
        "preprod": preprod,
        "stages": stages,
        "down": sorted(n for n in nodes if n not in connected),
    }


def _describe_plan(run, plan):
    lines = []
    if plan["preprod"]:
        lines.append(f"preprod: {plan['preprod']} (not behind the LB): switch, restart, checks")
    for stage in plan["stages"]:
        for i, batch in enumerate(stage["batches"], 1):
            lb = f"{run.lb['driver']} on {run.lb.get('minion')}: drain+maint, then restore" if run.has_lb else "no LB actions"
            lines.append(f"stage {stage['name']} batch {i}/{len(stage['batches'])}: {', '.join(batch)} ({lb})")
    return lines


# --------------------------------------------------------------------------- steps


def _fail(run, nodes, errors):
    for node in nodes:
        run.nodes.setdefault(node, {})
        run.nodes[node].update({"result": "failed", "error": errors[node]})
        if node not in run.failed:
            run.failed.append(node)
        run.progress(f"{node}: FAILED: {errors[node]}", node=node, result=False, error=errors[node])


def _check_lb(run, plan):
    if not run.has_lb:
        return {}
    nodes = [n for stage in plan["stages"] for b in stage["batches"] for n in b]
    status = run.lb_call("status", nodes)
    run.progress(f"load balancer: {run.lb['driver']} on {run.lb['minion']} answers for {len(nodes)} nodes")
    return status["states"]


def _prepare_everywhere(run, plan, build):
    started = time.monotonic()
    kwarg = {
        "project": run.project, "release": run.release, "source": build["source"], "checksum": build["checksum"],
        "meta": {k: build[k] for k in ("version", "branch", "commit", "committer", "time")}, "inventory": True,
    }
    ret = run.call(plan["nodes"], "deploy.prepare", kwarg)
    errors = {n: r["error"] for n, r in ret.items() if not r["ok"]}
    _fail(run, errors, errors)
    run.timings["prepare"] = round(time.monotonic() - started, 3)
    fresh = sum(1 for r in ret.values() if r["ok"] and r["ret"].get("changed"))
    run.progress(
        f"prepare: {len(ret) - len(errors)}/{len(ret)} nodes ready ({fresh} unpacked) in {run.timings['prepare']}s",
        step="prepare", ok=len(ret) - len(errors), failed=sorted(errors),
    )
    if len(run.failed) > run.max_failures:
        raise DeployError(
            f"prepare failed on {', '.join(sorted(errors))}: nothing was switched"
        )
    return [n for n in plan["nodes"] if n not in errors]


def _switch(run, nodes, release, mark_left=None, checks="gate", expect=None):
    """One batched deploy.switch; returns the nodes that passed.

    With ``expect`` (node -> fingerprint), a node in another state refuses: it lands in
    ``run.refused`` with its inventory, unchanged, and is not counted as failed.
    """
    kwarg = {"project": run.project, "release": release, "checks": checks, "inventory": True}
    if mark_left:
        kwarg["mark_left"] = mark_left
    if expect:
        kwarg["expect"] = {n: expect[n] for n in nodes}
    ret = run.call(nodes, "deploy.switch", kwarg)
    passed = []
    for node, res in ret.items():
        out = res.get("ret") or {}
        if res.get("silent"):
            run.silent.add(node)
        if out.get("refused") and isinstance(out.get("inventory"), dict):
            run.refused[node] = out["inventory"]
            run.nodes.setdefault(node, {}).update({"result": "refused", "old": out.get("current")})
            run.progress(f"{node}: {res['error']}", node=node, result=None)
            continue
        entry = run.nodes.setdefault(node, {})
        entry.setdefault("old", out.get("previous"))
        entry["new"] = out.get("current") if out else "unknown (no return)"
        entry["seconds"] = out.get("seconds")
        if res["ok"]:
            entry["result"] = "ok"
            passed.append(node)
            steps = ", ".join(f"{s['step']} {s['seconds']}s" for s in out.get("steps", []))
            run.progress(f"{node}: {out.get('previous')} -> {release}: {steps}", node=node, result=True)
        else:
            _fail(run, [node], {node: res["error"] + (" (switched back)" if out.get("reverted") else "")})
    return passed


def _preprod(run, plan, release, **switch_args):
    node = plan["preprod"]
    if not node:
        return
    if node in run.failed:
        raise DeployError(f"pre-production node {node} failed: {run.nodes[node]['error']}; nothing was switched")
    started = time.monotonic()
    run.progress(f"preprod {node}: switching to {release}")
    passed = _switch(run, [node], release, **switch_args)
    run.timings["preprod"] = round(time.monotonic() - started, 3)
    if not passed:
        raise DeployError(f"pre-production node {node} failed: {run.nodes[node]['error']}; stopped before any web node")
    run.fire("stage", stage="preprod", nodes=[node], seconds=run.timings["preprod"])


def _batch(run, stage, index, nodes, release, **switch_args):
    started = time.monotonic()
    label = f"stage {stage['name']} batch {index}/{len(stage['batches'])}"
    detached_at = None
    try:
        if run.has_lb:
            run.lock.set_detached(set(run.lock.detached()) | set(nodes))
            detached_at = time.monotonic()
            out = run.lb_call("detach", nodes, wait=float(run.lb.get("drain_timeout", 30)))
            run.timings.setdefault("drain", []).append(out.get("drain_seconds"))
            run.progress(f"{label}: {', '.join(nodes)} out of the LB (drained in {out.get('drain_seconds')}s)")
        passed = _switch(run, nodes, release, **switch_args)
    finally:
        if detached_at is not None:
            # a node that never answered may be half-restarted: it stays out, and the summary says so
            back = [n for n in nodes if n not in run.silent]
            if back:
                run.lb_call("attach", back)
            run.lock.set_detached(set(run.lock.detached()) - set(back))
            out_for = round(time.monotonic() - detached_at, 3)
            for node in back:
                run.nodes.setdefault(node, {})["out_of_lb"] = out_for
            if back:
                run.progress(f"{label}: {', '.join(back)} back in the LB after {out_for}s")
            for node in sorted(set(nodes) - set(back)):
                run.progress(f"{label}: {node} left out of the LB: it did not answer; check it, then "
                             f"salt-run deploy.unlock project={run.project} env={run.env}")
    seconds = round(time.monotonic() - started, 3)
    run.timings.setdefault("batches", []).append({"stage": stage["name"], "batch": index, "nodes": nodes, "seconds": seconds})
    run.fire("batch", stage=stage["name"], batch=index, nodes=nodes, passed=passed, seconds=seconds)
    return passed


def _stages(run, plan, release, **switch_args):
    for stage in plan["stages"]:
        for index, batch in enumerate(stage["batches"], 1):
            nodes = [n for n in batch if n not in run.failed]
            if nodes:
                _batch(run, stage, index, nodes, release, **switch_args)
            if len(run.failed) > run.max_failures:
                raise DeployError(
                    f"{len(run.failed)} node(s) failed ({', '.join(run.failed)}), more than max_failures="
                    f"{run.max_failures}: stopped; nodes not reached stay on their release"
                )
        run.fire("stage", stage=stage["name"])
        run.progress(f"stage {stage['name']} done")


def _finish(run, plan, error=None, extra=None):
    """Record and report: cleanup, LB state of every node, history, events, summary."""
    reached = [n for n in plan["nodes"] if n not in run.failed] if plan else []
    if run.kind == "release" and reached and run.release and not error:
        run.call(reached, "deploy.cleanup", {"project": run.project, "inventory": True})
    lb_states = {}
    if plan and run.has_lb and run.mode != "emergency":
        nodes = [n for s in plan["stages"] for b in s["batches"] for n in b]
        try:
            lb_states = run.lb_call("status", nodes)["states"]
        except DeployError as exc:
            lb_states = {n: f"unknown ({exc})" for n in nodes}
    for node, state in lb_states.items():
        run.nodes.setdefault(node, {})["lb"] = state
    result = "failure" if error or run.failed else "success"
    seconds = round(time.monotonic() - run.started, 3)
    user, host = _caller()
    record = {
        "kind": run.kind, "mode": run.mode, "env": run.env, "result": result, "user": user, "host": host,
        "release": run.release, "started": run.started_at, "finished": _now(), "seconds": seconds,
        "nodes": run.nodes, "timings": run.timings, "error": error, **(extra or {}),
    }
    _history_append(run.project, record)
    run.fire("success" if result == "success" else "failure", result=result, error=error, seconds=seconds)
    run.progress(f"{run.kind} {result} in {seconds}s" + (f": {error}" if error else ""))
    summary = {"result": result, "retcode": 0, "release": run.release, "seconds": seconds, "nodes": run.nodes,
               "timings": run.timings, **(extra or {})}
    if error:
        summary["error"] = error
    if run.lock and run.lock.warnings:
        summary["warnings"] = run.lock.warnings
    return summary if result == "success" else _failed(summary)


def _take_lock(run):
    run.lock = _Lock(run.project, run.env, f"{run.kind} ({run.mode})" if run.kind == "rollback" else run.kind)
    run.lock.acquire(globals().get("__jid__"))
    _recover(run)


def _recover(run):
    """After a stale lock: nodes the dead run had taken out of the LB go back in their prior state."""
    left = run.lock.detached()
    if left and run.has_lb:
        out = run.lb_call("attach", left)
        run.lock.set_detached([])
        message = f"restored LB state of {', '.join(left)} left detached by an interrupted run: {out['restored']}"
        run.lock.warnings.append(message)
        run.progress(message)


def _guard(run, plan, body):
    """Run body(); whatever happens, release the lock and write the summary."""
    error = None
    extra = {}
    try:
        extra = body() or {}
    except DeployError as exc:
        error = str(exc)
    except Exception as exc:  # pylint: disable=broad-except
        log.exception("deploy: unexpected error")
        error = f"unexpected error: {exc}"
    try:
        return _finish(run, plan, error, extra)
    finally:
        if run.lock:
            run.lock.release()
        run.close()


# --------------------------------------------------------------------------- public: release


def release(project, env, ref=None, test=False):
    """
    Release a project to an environment: build, prepare everywhere, preprod, stages and
    batches behind the load balancer, record.

    project
        Project name (pillar ``deploy:projects:<project>`` on the master).
    env
        Environment (``envs:<env>``).
    ref
        Branch, tag or commit to release (default: the env's ``branch``).
    test
        ``True``: print the release name and the plan, change nothing.

    Exit code 0 on success, 1 on any failure.  Progress lines while it runs; the
    summary lists every node (old -> new release, result, time out of the LB, LB state).

    CLI Example:

    .. code-block:: bash

        salt-run deploy.release project=rainbow env=pro
        salt-run deploy.release project=rainbow env=pro ref=v1.1.0
        salt-run deploy.release project=rainbow env=pro test=True
    """
    try:
        run = _Run(project, env, "release")
    except SaltInvocationError as exc:
        return _failed({"result": "refused", "error": str(exc)})
    try:
        ref = _valid(str(ref or run.envc.get("branch") or "master"), REF_RE, "ref")
        if test:
            with run:
                return _release_plan(run, ref)
        _take_lock(run)
    except (DeployError, SaltInvocationError) as exc:
        run.close()
        return _failed({"result": "refused", "error": str(exc)})
    plan = {}

    def body():
        nonlocal plan
        run.fire("start", ref=ref)
        build = _build(run, ref)
        plan.update(_plan(run))
        for line in _describe_plan(run, plan):
            run.progress(f"plan: {line}")
        _check_lb(run, plan)
        ready = _prepare_everywhere(run, plan, build)
        _preprod(run, plan, run.release)
        _stages(run, {**plan, "nodes": ready}, run.release)
        return {"ref": ref, "commit": build["commit"], "version": build["version"]}

    return _guard(run, plan, body)


def _release_plan(run, ref):
    build = _build(run, ref, test=True)
    plan = _plan(run)
    return {"result": None, "comment": "test=True: nothing was changed", "release": run.release,
            "commit": build["commit"], "plan": _describe_plan(run, plan), "down": plan["down"]}


# --------------------------------------------------------------------------- public: rollback


def _inventories(run, nodes):
    ret = run.call(nodes, "deploy.releases", {"project": run.project})
    errors = {n: r["error"] for n, r in ret.items() if not r["ok"]}
    if errors:
        raise DeployError("cannot list releases on " + "; ".join(f"{n}: {e}" for n, e in sorted(errors.items())))
    return {n: r["ret"] for n, r in ret.items()}


def _cluster_view(inventories):
    """Which release is current where, who differs, and the release a rollback goes to."""
    currents = {n: inv["current"] for n, inv in inventories.items()}
    counts = {}
    for cur in currents.values():
        counts[cur] = counts.get(cur, 0) + 1
    majority = max(counts, key=counts.get) if counts else None
    by_name = {}
    for node, inv in inventories.items():
        for rel in inv["releases"]:
            by_name.setdefault(rel["name"], {})[node] = rel
    # a release's age is when it was first prepared (released), not when it was last activated:
    # a node switched back to r2 after r3 failed there must not make r2 look newer than r3
    stamp = lambda rels: min((r.get("prepared_at") or r.get("activated_at") or 0) for r in rels.values())
    newest_current = max(
        (c for c in set(currents.values()) if c and c in by_name), key=lambda c: stamp(by_name[c]), default=None
    )
    candidates = [
        name for name, rels in by_name.items()
        if len(rels) == len(inventories)
        and name != newest_current
        and not any(r["status"] == "bad" for r in rels.values())
        and any(r["status"] == "good" for r in rels.values())
        and (newest_current is None or stamp(rels) < stamp(by_name[newest_current]))
    ]
    target = max(candidates, key=lambda c: stamp(by_name[c]), default=None)
    return {
        "current": currents,
        "majority": majority,
        "differ": sorted(n for n, c in currents.items() if c != majority),
        "rollback_target": target,
    }


def _rollback_target(run, inventories, to):
    if to:
        _valid(to, RELEASE_RE, "release")
        missing = sorted(n for n, inv in inventories.items() if to not in {r["name"] for r in inv["releases"]})
        if missing:
            raise DeployError(f"release {to} is not on {', '.join(missing)}: refusing (nothing was changed)")
        bad = sorted(n for n, inv in inventories.items() for r in inv["releases"] if r["name"] == to and r["status"] == "bad")
        if bad:
            raise DeployError(f"release {to} is marked bad on {', '.join(bad)}: refusing to roll back to it")
        return to
    view = _cluster_view(inventories)
    if view["rollback_target"]:
        return view["rollback_target"]
    have = "; ".join(
        f"{n}: current {inv['current']}, good {[r['name'] for r in inv['releases'] if r['status'] == 'good' and not r['current']] or 'none'}"
        for n, inv in sorted(inventories.items())
    )
    raise DeployError(
        f"no good release older than the current one is present on every node ({have}); "
        "choose one with to=<release>"
    )


def _known_inventories(run, nodes):
    """The master's record of every node (see ``_record_update``), or None if one is missing."""
    record = _record_read(run.project, run.env)
    known = {n: record.get(n) for n in nodes}
    if all(isinstance(inv, dict) and inv.get("fingerprint") for inv in known.values()):
        return known
    return None


def _target_or_none(run, inventories, to):
    try:
        return _rollback_target(run, inventories, to)
    except DeployError:
        return None


def _fingerprints(inventories):
    return {n: inv["fingerprint"] for n, inv in inventories.items()}


def _emergency_target(run, nodes, to):
    """The target from the master's record; the nodes are listed first only if the record cannot tell."""
    known = _known_inventories(run, nodes)
    target = _target_or_none(run, known, to) if known else None
    if target:
        return known, target, "record"
    run.progress("the master's record does not cover every node or gives no target: listing releases first")
    known = _inventories(run, nodes)
    return known, _rollback_target(run, known, to), "listing"


def _undo(run, nodes, known):
    """Switch nodes back to the release the record says they served, and give it back its status."""
    groups = {}  # (release served before, its status then) -> nodes: one call per group
    for node in nodes:
        prev = known[node]["current"]
        status = next((r["status"] for r in known[node]["releases"] if r["name"] == prev), None)
        groups.setdefault((prev, status), []).append(node)
    for (prev, status), members in groups.items():
        if not prev:
            run.progress(f"{', '.join(members)}: served no release before; left on {run.release}")
            continue
        run.progress(f"{', '.join(members)}: back to {prev}")
        _switch(run, members, prev, checks="report")
        if status:
            run.call(members, "deploy.mark", {"project": run.project, "release": prev, "status": status, "inventory": True})


def _emergency(run, plan, to):
    """Emergency rollback: every node at once, in one batched call, acting on the master's record.

    The target comes from the record the runs keep of every node, so no listing round trip
    is needed; each node checks that its state is the recorded one (``expect``) and refuses
    before changing anything if not.  A refusal never leaves the env split: if the nodes'
    true state gives the same target, the refused nodes follow; if not, the switched nodes
    go back and the target is chosen again from the true state, once.
    """
    nodes = list(plan["nodes"])
    known, target, source = _emergency_target(run, nodes, to)
    run.release = target
    run.fire("start", to=target)
    run.progress(f"emergency rollback to {target}: one call to {len(nodes)} nodes (target from the {source}), "
                 "no LB actions, checks reported")
    changed = set()
    for attempt in (1, 2):
        run.refused = {}
        _switch(run, nodes, target, mark_left="bad", checks="report", expect=_fingerprints(known))
        if not run.refused:
            break
        refused = dict(run.refused)
        changed.update(refused)
        truth = {**known, **refused}
        if _target_or_none(run, truth, to) == target:
            run.progress(f"{', '.join(sorted(refused))}: changed since the master's record; "
                         f"{target} is still the target there: switching them too")
            run.refused = {}
            _switch(run, sorted(refused), target, mark_left="bad", checks="report", expect=_fingerprints(refused))
            _fail(run, sorted(run.refused), {n: "its releases changed again during the rollback: not switched"
                                             for n in run.refused})
            break
        switched = [n for n in nodes if n not in refused and n not in run.silent]
        _undo(run, switched, known)
        if attempt == 2:
            raise DeployError(
                f"the releases on {', '.join(sorted(refused))} changed during the rollback: every switched node "
                "was switched back; run the rollback again"
            )
        nodes = [n for n in nodes if n not in run.silent]
        known = {n: run.inventories.get(n) or truth[n] for n in nodes}
        target = run.release = _rollback_target(run, known, to)
        run.progress(f"{', '.join(sorted(refused))}: changed since the master's record, which made "
                     f"{target} the target: every node goes there instead")
    return {"to": target, "target_from": source, "changed_since_record": sorted(changed)}


def rollback(project, env, to=None, emergency=False, force=False, test=False):
    """
    Roll an environment back to the last good release (or ``to``).

    Normal: the path of a release (lock, preprod first, stages, batches behind the LB,
    restart, checks, stop on failure) without build or distribution.  Emergency: one
    batched call to every node at once (atomic switch + restart steps, no LB actions;
    checks run and are reported, not gating).  The release left is marked bad.

    project
        Project name.
    env
        Environment.
    to
        Release to go to (default: the newest good release older than the current one
        that is present on every node of the env).
    emergency
        ``True`` for the emergency path.
    force
        With ``emergency=True``: go ahead even if a release or rollback holds the lock.
    test
        ``True``: say what would be done, change nothing.

    CLI Example:

    .. code-block:: bash

        salt-run deploy.rollback project=rainbow env=pro
        salt-run deploy.rollback project=rainbow env=pro to=rainbow_pro_v1.0.0_master_2016-08-10_10-00-00_xuliangwei
        salt-run deploy.rollback project=rainbow env=pro emergency=True
    """
    mode = "emergency" if emergency else "normal"
    try:
        if to is not None:
            _valid(to, RELEASE_RE, "release")
        if force and not emergency:
            raise SaltInvocationError("force=True is only for emergency=True")
        run = _Run(project, env, "rollback", mode)
    except SaltInvocationError as exc:
        return _failed({"result": "refused", "error": str(exc)})
    try:
        if test:
            with run:
                plan = _plan(run)
                target = _rollback_target(run, _inventories(run, plan["nodes"]), to)
                return {"result": None, "comment": f"test=True: {mode} rollback would go to {target}",
                        "target": target, "plan": _describe_plan(run, plan) if not emergency else plan["nodes"]}
        if not force:
            _take_lock(run)
    except (DeployError, SaltInvocationError) as exc:
        run.close()
        return _failed({"result": "refused", "error": str(exc)})
    plan = {}

    def body():
        plan.update(_plan(run))
        if emergency:
            return _emergency(run, plan, to)
        run.release = _rollback_target(run, _inventories(run, plan["nodes"]), to)
        run.fire("start", to=run.release)
        run.progress(f"normal rollback to {run.release}")
        _check_lb(run, plan)
        _preprod(run, plan, run.release, mark_left="bad")
        _stages(run, plan, run.release, mark_left="bad")
        return {"to": run.release}

    return _guard(run, plan, body)


# --------------------------------------------------------------------------- public: views


def releases(project, env):
    """
    List the releases on every node of an environment, and the cluster view: which
    release is current where, the nodes that differ from the majority, and the release
    a rollback would go to.

    project
        Project name.
    env
        Environment.

    CLI Example:

    .. code-block:: bash

        salt-run deploy.releases project=rainbow env=pro
    """
    try:
        with _Run(project, env, "list") as run:
            inventories = _inventories(run, _plan(run)["nodes"])
    except (DeployError, SaltInvocationError) as exc:
        return _failed({"result": "refused", "error": str(exc)})
    nodes = {
        node: [
            {k: r.get(k) for k in ("name", "version", "commit", "committer", "time", "status", "current")}
            for r in inv["releases"]
        ]
        for node, inv in inventories.items()
    }
    return {"nodes": nodes, "cluster": _cluster_view(inventories)}


def history(project, env=None, limit=20):
    """
    The release and rollback history of a project (newest last): who, when, ref, commit,
    release, result per node, durations.

    project
        Project name.
    env
        Only this environment.
    limit
        How many records (default 20).

    CLI Example:

    .. code-block:: bash

        salt-run deploy.history project=rainbow env=pro limit=5
    """
    _valid(project, PROJECT_RE, "project name")
    records = _history_read(project, env)
    return records[-int(limit):] if int(limit) > 0 else records


def stats(project, env=None):
    """
    Deployment statistics (the article's 部署统计): successful and failed releases,
    rollbacks (normal / emergency), interrupted runs, mean durations.

    project
        Project name.
    env
        Only this environment.

    CLI Example:

    .. code-block:: bash

        salt-run deploy.stats project=rainbow
        salt-run deploy.stats project=rainbow env=pro
    """
    _valid(project, PROJECT_RE, "project name")
    out = {
        "releases": {"success": 0, "failure": 0, "interrupted": 0},
        "rollbacks": {"normal": 0, "emergency": 0, "failure": 0, "interrupted": 0},
    }
    durations = {"release": [], "rollback": []}
    for rec in _history_read(project, env):
        kind = "rollbacks" if str(rec.get("kind", "")).startswith("rollback") else "releases"
        result = rec.get("result")
        if kind == "releases":
            out["releases"][result if result in out["releases"] else "failure"] += 1
        elif result == "success":
            out["rollbacks"][rec.get("mode", "normal")] += 1
        else:
            out["rollbacks"]["interrupted" if result == "interrupted" else "failure"] += 1
        if rec.get("seconds") is not None:
            durations[kind[:-1]].append(rec["seconds"])
    out["mean_seconds"] = {k: round(sum(v) / len(v), 3) if v else None for k, v in durations.items()}
    return out


def unlock(project, env, force=False, show=False):
    """
    Show or clear the lock of a project+env.  A lock whose run is gone (stale) is cleared
    and the nodes that run left out of the load balancer are put back in their prior
    state; a live lock is cleared only with ``force=True``.

    project
        Project name.
    env
        Environment.
    force
        Clear a lock even though its run still seems alive.
    show
        Only show the lock.

    CLI Example:

    .. code-block:: bash

        salt-run deploy.unlock project=rainbow env=pro show=True
        salt-run deploy.unlock project=rainbow env=pro
    """
    try:
        _config(project, env)
    except SaltInvocationError as exc:
        return _failed({"result": "refused", "error": str(exc)})
    lock = _Lock(project, env, "unlock")
    held = lock.holder()
    if held is None:
        return {"locked": False, "detached": lock.detached()}
    alive = bool(held) and lock.alive(held)
    info = {"locked": True, "holder": held, "alive": alive, "detached": lock.detached()}
    if show:
        return info
    if alive and not force:
        return _failed({**info, "result": "refused", "error": f"the lock is held by a running {lock.describe(held)}; use force=True"})
    try:
        with _Run(project, env, "unlock") as run:
            run.lock = lock
            lock.take_over(held)
            _recover(run)
    except DeployError as exc:
        return _failed({**info, "result": "failure", "error": str(exc)})
    return {**info, "result": "cleared", "warnings": lock.warnings}


# --------------------------------------------------------------------------- public: views for the web console
# (issue 14) What the console needs and no other runner function gives: the projects and envs of the
# pillar with each env's lock, and the refs of a project's mirror.  Read-only; no node is called.


def projects():
    """
    The projects and envs of the master's pillar, with each env's default branch and lock
    (holder, whether its run is alive, nodes it left out of the LB): the web console's
    first page.  Changes nothing.

    CLI Example:

    .. code-block:: bash

        salt-run deploy.projects
    """
    out = {}
    defined = (_master_pillar().get("deploy") or {}).get("projects") or {}
    for name, conf in sorted(defined.items()):
        if not isinstance(conf, dict) or not PROJECT_RE.fullmatch(str(name)):
            continue
        envs = {}
        for env, envc in sorted((conf.get("envs") or {}).items()):
            if not isinstance(envc, dict) or not ENV_RE.fullmatch(str(env)):
                continue
            lock = _Lock(name, env, "view")
            held = lock.holder()
            envs[env] = {
                "branch": str(envc.get("branch") or "master"),
                "lock": None if held is None else {"holder": held, "alive": bool(held) and lock.alive(held)},
                "detached": lock.detached(),
            }
        out[name] = {"envs": envs}
    return out


def refs(project, limit=50):
    """
    The branches and tags of a project's repository (fetched into the master's mirror),
    newest first, each with its commit, date, committer and subject: the console's ref
    chooser.  Changes nothing on any node.

    project
        Project name.
    limit
        How many branches and how many tags (default 50).

    CLI Example:

    .. code-block:: bash

        salt-run deploy.refs project=rainbow
    """
    try:
        conf, _ = _config(project)
        with _mirror_lock(project):
            repo = _mirror(project, conf["repo"])
            found = {"branches": repo.branches, "tags": repo.tags}
            out = {}
            for kind, items in found.items():
                rows = []
                for ref in items:
                    commit = ref.commit
                    rows.append({
                        "name": ref.name, "commit": commit.hexsha, "committer": commit.committer.name,
                        "date": commit.committed_datetime.astimezone(datetime.timezone.utc).isoformat(),
                        "subject": commit.summary,
                    })
                rows.sort(key=lambda r: r["date"], reverse=True)
                out[kind] = rows[: int(limit)]
    except (DeployError, SaltInvocationError) as exc:
        return _failed({"result": "refused", "error": str(exc)})
    return out
