"""Distribution of a 100 MB artifact to 10 nodes, and a redeploy that transfers nothing (issue 5).

    python bench/distribution.py [--reps 3] [--size 100000000]

A sandbox with 10 web nodes whose env ``pro`` targets only them (no preprod; one stage,
batches of 34%) and whose project has a build step ``head -c <size> /dev/urandom > blob.bin``:
the artifact (tar.gz) is ~100 MB of incompressible data.  ``--reps`` times:

1. the minions' file caches of the artifacts (``<minion cachedir>/files/base/deploy_artifacts``,
   where ``cp.cache_file`` keeps what ``deploy.prepare`` fetched) are emptied, then a new
   version is released (``salt-run deploy.release``; rep 1 releases the repo's v1.1.0, the
   others a new commit v3.0.<n>): the runner's ``prepare`` timing, and the per-node
   ``deploy.prepare`` returns (their ``seconds`` = unpack + config + chown, after the
   fetch and the sha256) from the master's job cache;
2. baseline in the same run: ``salt -L <the 10 nodes> cp.get_file salt://<the same artifact>
   <dir>/{{ grains.id }}/artifact.tar.gz template=jinja makedirs=True -t 600`` (the same transfer
   through the master's fileserver, nothing else).

Then a redeploy of the already prepared release (``deploy.release`` again, same commit): the
runner reuses the artifact and ``deploy.prepare`` answers "already prepared".

Bytes: what the master sent (and received) on its ret and publish ports during each step,
from the kernel's per-connection tcp_info (``bytes_acked``/``bytes_received``) read with
``ss``: a snapshot at start and end plus ``ss -E`` socket-destroy events (connections opened
and closed inside the window count too).  For the redeploy also: each minion's cached
artifact (inode, mtime) before and after, and the release directory's inode.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import (STAT_HEADERS, Bench, PortBytes, base_parser, batch_envs, fmt, human_bytes,  # noqa: E402
                           say, stat_row, stats, table, timings_of)


def cache_dir(bench, mid):
    return os.path.join(bench.box.base, "var", mid, "cache", "files", "base", "deploy_artifacts")


def clear_caches(bench, nodes):
    for mid in nodes:
        shutil.rmtree(cache_dir(bench, mid), ignore_errors=True)


def cached_files(bench, nodes, release):
    out = {}
    for mid in nodes:
        path = os.path.join(cache_dir(bench, mid), "rainbow", f"{release}.tar.gz")
        try:
            st = os.stat(path)
            out[mid] = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            out[mid] = None
    return out


def prepare_returns(bench, release):
    """The nodes' deploy.prepare returns for ``release`` from the master's job cache."""
    _, proc = bench.salt_run("jobs.list_jobs", out="json", search_function="deploy.prepare")
    try:
        jobs = json.loads(proc.stdout)
    except ValueError:
        return {}
    for jid in sorted(jobs, reverse=True):
        _, proc = bench.salt_run("jobs.lookup_jid", jid, out="json")
        try:
            ret = json.loads(proc.stdout)
        except ValueError:
            continue
        if any(isinstance(v, dict) and v.get("release") == release for v in ret.values()):
            return ret
    return {}


def ports(bench):
    return [bench.box.ports["ret"], bench.box.ports["publish"]]


def main(argv=None):
    parser = base_parser("distribution", __doc__, reps=3)
    parser.add_argument("--size", type=int, default=100_000_000, help="bytes of random data in the artifact")
    args = parser.parse_args(argv)

    envs = batch_envs("34%", preprod=None, target="G@roles:rainbow and G@env:pro and web-*")
    extra = {"build": [f"head -c {int(args.size)} /dev/urandom > blob.bin"], "keep_releases": 2}
    bench = Bench("distribution", args, envs=envs, project_extra=extra)
    with bench:
        box = bench.box
        nodes = list(box.web_ids)
        getfile_dir = os.path.join(box.path, "bench-getfile")
        reps = []
        for i in range(1, args.reps + 1):
            version = "v1.1.0" if i == 1 else f"v3.0.{i}"
            if i > 1:
                bench.add_release(version)
            clear_caches(bench, nodes)
            meter = PortBytes(ports(bench)).start()
            wall, record, _ = bench.release()
            moved = meter.stop()
            release = record["release"]
            build, prepare, _, _, _ = timings_of(record)
            rets = prepare_returns(bench, release)
            unpack = [v.get("seconds") for v in rets.values() if isinstance(v, dict) and v.get("changed")]
            artifact = os.path.join(box.file_roots, "deploy_artifacts", "rainbow", f"{release}.tar.gz")
            size = os.path.getsize(artifact)

            shutil.rmtree(getfile_dir, ignore_errors=True)
            os.makedirs(getfile_dir)
            meter = PortBytes(ports(bench)).start()
            g_wall, data = bench.salt("-L", ",".join(nodes), "cp.get_file",
                                      f"salt://deploy_artifacts/rainbow/{release}.tar.gz",
                                      os.path.join(getfile_dir, "{{ grains.id }}", "artifact.tar.gz"),
                                      "template=jinja", "makedirs=True", cli_timeout=600)
            g_moved = meter.stop()
            got = [n for n in nodes
                   if os.path.getsize(os.path.join(getfile_dir, n, "artifact.tar.gz")) == size] \
                if os.path.isdir(getfile_dir) else []
            shutil.rmtree(getfile_dir, ignore_errors=True)
            if len(got) != len(nodes):
                raise RuntimeError(f"cp.get_file: only {got} got the whole file: {data}")
            rep = {"rep": i, "version": version, "release": release, "artifact_bytes": size,
                   "release_wall": round(wall, 3), "build": build, "prepare": prepare,
                   "node_unpack_seconds": stats(unpack), "release_bytes": moved,
                   "getfile_wall": round(g_wall, 3), "getfile_bytes": g_moved}
            reps.append(rep)
            say(f"rep {i}/{args.reps} {version}: artifact {human_bytes(size)}; release wall {wall:.1f}s, "
                f"build {build}s, prepare {prepare}s (node unpack median {rep['node_unpack_seconds']['median']}s), "
                f"master sent {human_bytes(moved['sent'])}; cp.get_file {g_wall:.1f}s, "
                f"master sent {human_bytes(g_moved['sent'])}")

        # redeploy of the release that is already prepared everywhere (same commit)
        last = reps[-1]["release"]
        before = cached_files(bench, nodes, last)
        dirs_before = {n: os.stat(os.path.join(box.node_root(n), "releases", last)).st_ino for n in nodes}
        meter = PortBytes(ports(bench)).start()
        r_wall, r_record, r_proc = bench.release()
        r_moved = meter.stop()
        after = cached_files(bench, nodes, last)
        dirs_after = {n: os.stat(os.path.join(box.node_root(n), "releases", last)).st_ino for n in nodes}
        if r_record["release"] != last:
            raise RuntimeError(f"the redeploy released {r_record['release']}, not {last}")
        reused = "reused" in r_proc.stdout + r_proc.stderr  # progress: stderr with --out=json
        unpacked = next((ln for ln in (r_proc.stdout + r_proc.stderr).splitlines() if "prepare:" in ln and "nodes ready" in ln), "")
        redeploy = {
            "release": last, "wall": round(r_wall, 3), "build": r_record["timings"].get("build"),
            "prepare": r_record["timings"].get("prepare"), "bytes": r_moved, "artifact_reused": reused,
            "prepare_line": unpacked.strip(),
            "cached_artifact_unchanged": sum(1 for n in nodes if before[n] is not None and before[n] == after[n]),
            "release_dir_unchanged": sum(1 for n in nodes if dirs_before[n] == dirs_after[n]),
        }

        s = {k: stats([r[k] for r in reps]) for k in ("release_wall", "prepare", "getfile_wall", "build")}
        sent = stats([r["release_bytes"]["sent"] / 1e6 for r in reps])
        g_sent = stats([r["getfile_bytes"]["sent"] / 1e6 for r in reps])
        unpack_med = stats([r["node_unpack_seconds"]["median"] for r in reps])
        say()
        say(f"==> a {human_bytes(reps[0]['artifact_bytes'])} artifact to {len(nodes)} nodes, {args.reps} reps")
        say(bench.machine_line())
        say(table([
            stat_row("salt-run deploy.release (wall)", s["release_wall"]),
            stat_row("  build (git archive + 100 MB urandom + tar.gz + sha256)", s["build"]),
            stat_row("  prepare (runner timing: fetch + sha256 + unpack, all nodes)", s["prepare"]),
            stat_row("    per node: unpack+config+chown (median of nodes)", unpack_med),
            stat_row(f"baseline: salt -L <{len(nodes)} nodes> cp.get_file (wall)", s["getfile_wall"]),
            stat_row("master sent during the release", sent, " MB"),
            stat_row("master sent during cp.get_file", g_sent, " MB"),
        ], STAT_HEADERS))
        ratio = s["prepare"]["median"] / s["getfile_wall"]["median"]
        say(f"prepare / cp.get_file (medians): {ratio:.2f}")
        say()
        say(f"==> redeploy of the prepared release {last} (same commit)")
        say(table([
            ["salt-run deploy.release (wall)", fmt(redeploy["wall"])],
            ["build (artifact reused: " + ("yes" if reused else "NO") + ")", fmt(redeploy["build"])],
            ["prepare", fmt(redeploy["prepare"])],
            ["runner's prepare line", redeploy["prepare_line"].split(": ", 1)[-1]],
            ["master sent (ret + publish ports)", human_bytes(r_moved["sent"])],
            ["master received", human_bytes(r_moved["received"])],
            ["minions' cached artifact unchanged (inode, mtime)", f"{redeploy['cached_artifact_unchanged']}/{len(nodes)}"],
            ["release directory unchanged (inode)", f"{redeploy['release_dir_unchanged']}/{len(nodes)}"],
        ], ["redeploy", "value"]))
        bench.finish(reps=reps, summary=s, sent_mb=sent, getfile_sent_mb=g_sent, node_unpack=unpack_med,
                     prepare_over_getfile=round(ratio, 3), redeploy=redeploy, nodes=nodes,
                     bytes_method="tcp_info bytes_acked/bytes_received of the master's ret+publish port "
                                  "connections via ss (snapshots + ss -E destroy events)")
        say(f"runtime {bench.result['runtime_seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
