"""Distribution of a ~100 MB release of many files to 10 nodes: a full release, a release that
changes 1 % of the files (incremental distribution), and a redeploy.

    python bench/distribution.py [--reps 2] [--files 1000] [--file-size 100000] [--change 0.01] [--web 10]

A sandbox with ``--web`` web nodes whose env ``pro`` targets only them (no preprod; one stage,
batches of 34%).  The project's build step writes ``data/f0000.bin`` … (``--files`` files of
``--file-size`` bytes of incompressible data), each a deterministic function of its index, the
seed and its generation in the committed ``bench-gen.json``, so that a commit can change exactly
the files it names.  ``--reps`` times:

1. **full**: a commit with a new seed (every content new, as on a node's first release; rep 1 is
   the nodes' first release: the master's record shows no release, nobody is asked); the
   runner's ``prepare`` timing (``deploy.lacking`` call + archive + ``deploy.prepare`` call) and
   its ``distribute`` part; baseline in the same run: ``salt -L <nodes> cp.get_file`` of the same
   artifact (the same bytes through the master's fileserver, nothing else);
2. **1 %**: a commit that changes ``--change`` of the files: the bytes the master sent during
   the release against the full release's, the part's size against the artifact's, and each
   node's extra disk (``du`` of its project root and its minion's file cache, hard links counted
   once, before and after) against the release's size.

Then a redeploy of the prepared release (same commit): nothing travels, nothing is unpacked.

Bytes: what the master sent (and received) on its ret and publish ports during each step,
from the kernel's per-connection tcp_info (``bytes_acked``/``bytes_received``) read with
``ss``: a snapshot at start and end plus ``ss -E`` socket-destroy events (connections opened
and closed inside the window count too).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import (STAT_HEADERS, Bench, PortBytes, base_parser, batch_envs, fmt, human_bytes,  # noqa: E402
                           say, stat_row, stats, table, timings_of)

# the build step: deterministic incompressible files from the committed bench-gen.json
GENERATE = ("/usr/bin/python3 -c 'import hashlib, json, os\n"
            "g = json.load(open(\"bench-gen.json\"))\n"
            "os.makedirs(\"data\", exist_ok=True)\n"
            "for i in range(g[\"files\"]):\n"
            "    key = \"%d-%d-%d\" % (g[\"seed\"], i, g[\"gen\"].get(str(i), 0))\n"
            "    open(\"data/f%04d.bin\" % i, \"wb\").write(hashlib.shake_256(key.encode()).digest(g[\"size\"]))\n'")


def cache_dir(bench, mid):
    return os.path.join(bench.box.base, "var", mid, "cache", "files")


def disk(bench, nodes):
    """Bytes on disk per node: its project root and its minion's file cache (hard links once)."""
    out = {}
    for mid in nodes:
        paths = [p for p in (bench.box.node_root(mid), cache_dir(bench, mid)) if os.path.exists(p)]
        proc = subprocess.run(["du", "-s", "-B1", "-c", *paths], capture_output=True, text=True, check=True)
        out[mid] = int(proc.stdout.strip().splitlines()[-1].split()[0])
    return out


def cached_archives(bench, nodes):
    return sum(1 for mid in nodes for _, _, files in os.walk(cache_dir(bench, mid))
               for f in files if f.endswith((".tar.gz", ".tar")))


def node_timings(bench, release):
    """Medians over the nodes of their deploy.prepare ``timings`` (pillar compile, transfer into the
    store, build + verify), from the master's job cache."""
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
        rets = [v for v in ret.values() if isinstance(v, dict) and v.get("release") == release]
        if rets:
            out = {}
            for key in ("pillar", "transfer", "build"):
                values = [r["timings"][key] for r in rets if isinstance(r.get("timings"), dict) and key in r["timings"]]
                if values:
                    out[key] = stats(values)["median"]
            return out
    return {}


def ports(bench):
    return [bench.box.ports["ret"], bench.box.ports["publish"]]


def commit(bench, version, files, size, seed, changed):
    gen = {"files": files, "size": size, "seed": seed, "gen": {str(i): 1 for i in changed}}
    bench.add_release_files(version, {"bench-gen.json": json.dumps(gen, sort_keys=True) + "\n"})


def release(bench, nodes):
    meter = PortBytes(ports(bench)).start()
    wall, record, proc = bench.release()
    moved = meter.stop()
    _, prepare, _, _, _ = timings_of(record)
    dist = (record.get("timings") or {}).get("distribute") or {}
    return {"release": record["release"], "wall": round(wall, 3), "prepare": prepare,
            "distribute": dist, "bytes": moved, "output": proc.stdout + proc.stderr}


def main(argv=None):
    parser = base_parser("distribution", __doc__, reps=2)
    parser.add_argument("--files", type=int, default=1000, help="files in the release (default %(default)s)")
    parser.add_argument("--file-size", type=int, default=100_000, help="bytes per file (default %(default)s)")
    parser.add_argument("--change", type=float, default=0.01, help="share of the files a release changes")
    args = parser.parse_args(argv)

    envs = batch_envs("34%", preprod=None, target="G@roles:rainbow and G@env:pro and web-*")
    extra = {"build": [GENERATE], "keep_releases": 10}
    bench = Bench("distribution", args, envs=envs, project_extra=extra)
    changes = max(1, round(args.files * args.change))
    rng = random.Random(4711)
    with bench:
        box = bench.box
        nodes = list(box.web_ids)
        getfile_dir = os.path.join(box.path, "bench-getfile")
        reps = []
        for i in range(1, args.reps + 1):
            # 1. full: a new seed, every content new
            commit(bench, f"v3.{i}.0", args.files, args.file_size, seed=i, changed=[])
            full = release(bench, nodes)
            full["node_timings"] = node_timings(bench, full["release"])
            folder = os.path.join(box.file_roots, "deploy_artifacts", "rainbow")
            name = next(n for n in os.listdir(folder) if n in (f"{full['release']}.tar.gz", f"{full['release']}.tar"))
            size = os.path.getsize(os.path.join(folder, name))
            shutil.rmtree(getfile_dir, ignore_errors=True)
            os.makedirs(getfile_dir)
            meter = PortBytes(ports(bench)).start()
            g_wall, data = bench.salt("-L", ",".join(nodes), "cp.get_file",
                                      f"salt://deploy_artifacts/rainbow/{name}",
                                      os.path.join(getfile_dir, "{{ grains.id }}", "artifact.tar.gz"),
                                      "template=jinja", "makedirs=True", cli_timeout=600)
            g_moved = meter.stop()
            got = [n for n in nodes
                   if os.path.getsize(os.path.join(getfile_dir, n, "artifact.tar.gz")) == size] \
                if os.path.isdir(getfile_dir) else []
            shutil.rmtree(getfile_dir, ignore_errors=True)
            if len(got) != len(nodes):
                raise RuntimeError(f"cp.get_file: only {got} got the whole file: {data}")

            # 2. 1 %: the same seed, `changes` files of a new generation
            changed = sorted(rng.sample(range(args.files), changes))
            commit(bench, f"v3.{i}.1", args.files, args.file_size, seed=i, changed=changed)
            before = disk(bench, nodes)
            inc = release(bench, nodes)
            after = disk(bench, nodes)
            extra_disk = {n: after[n] - before[n] for n in nodes}
            rep = {
                "rep": i, "artifact_bytes": size, "full": {k: v for k, v in full.items() if k != "output"},
                "getfile_wall": round(g_wall, 3), "getfile_bytes": g_moved,
                "incremental": {k: v for k, v in inc.items() if k != "output"}, "changed_files": len(changed),
                "extra_disk": extra_disk,
                "bytes_ratio": round(inc["bytes"]["sent"] / max(full["bytes"]["sent"], 1), 5),
                "part_ratio": round(inc["distribute"].get("bytes", 0) / size, 5),
                "disk_ratio_max": round(max(extra_disk.values()) / size, 5),
                "prepare_over_getfile": round(full["prepare"] / g_wall, 3),
            }
            reps.append(rep)
            say(f"rep {i}/{args.reps}: artifact {human_bytes(size)}; full: prepare {full['prepare']}s "
                f"(distribute {full['distribute'].get('seconds')}s; node medians {full['node_timings']}), "
                f"master sent {human_bytes(full['bytes']['sent'])}; "
                f"cp.get_file {g_wall:.1f}s ({human_bytes(g_moved['sent'])}); 1 %: prepare {inc['prepare']}s, "
                f"lacking {inc['distribute'].get('lacking')} contents, "
                f"part {human_bytes(inc['distribute'].get('bytes', 0))}, "
                f"master sent {human_bytes(inc['bytes']['sent'])} ({100 * rep['bytes_ratio']:.2f}% of full), "
                f"extra disk per node max {human_bytes(max(extra_disk.values()))} ({100 * rep['disk_ratio_max']:.2f}%)")

        # redeploy of the release that is already prepared everywhere (same commit)
        last = reps[-1]["incremental"]["release"]
        dirs_before = {n: os.stat(os.path.join(box.node_root(n), "releases", last)).st_ino for n in nodes}
        again = release(bench, nodes)
        dirs_after = {n: os.stat(os.path.join(box.node_root(n), "releases", last)).st_ino for n in nodes}
        if again["release"] != last:
            raise RuntimeError(f"the redeploy released {again['release']}, not {last}")
        prepare_line = next((ln for ln in again["output"].splitlines() if "prepare:" in ln and "nodes ready" in ln), "")
        redeploy = {
            "release": last, "wall": again["wall"], "prepare": again["prepare"], "bytes": again["bytes"],
            "artifact_reused": "reused" in again["output"], "prepare_line": prepare_line.strip(),
            "release_dir_unchanged": sum(1 for n in nodes if dirs_before[n] == dirs_after[n]),
            "archives_in_minion_caches": cached_archives(bench, nodes),
        }

        def med(values):
            return stats(values)

        full_prepare = med([r["full"]["prepare"] for r in reps])
        full_dist = med([r["full"]["distribute"].get("seconds") for r in reps])
        getfile = med([r["getfile_wall"] for r in reps])
        full_sent = med([r["full"]["bytes"]["sent"] / 1e6 for r in reps])
        g_sent = med([r["getfile_bytes"]["sent"] / 1e6 for r in reps])
        inc_sent = med([r["incremental"]["bytes"]["sent"] / 1e6 for r in reps])
        inc_prepare = med([r["incremental"]["prepare"] for r in reps])
        part = med([r["incremental"]["distribute"].get("bytes", 0) / 1e6 for r in reps])
        disk_max = med([max(r["extra_disk"].values()) / 1e6 for r in reps])
        say()
        say(f"==> a {human_bytes(reps[0]['artifact_bytes'])} release of {args.files} files to {len(nodes)} nodes, "
            f"{args.reps} reps; 1 % = {changes} files")
        say(bench.machine_line())
        say(table([
            stat_row("full: prepare (runner: lacking + archive + prepare)", full_prepare),
            stat_row("  of which deploy.lacking + choosing the archive", full_dist),
            stat_row(f"baseline: salt -L <{len(nodes)} nodes> cp.get_file (wall)", getfile),
            stat_row("full: master sent during the release", full_sent, " MB"),
            stat_row("cp.get_file: master sent", g_sent, " MB"),
            stat_row("1 %: prepare", inc_prepare),
            stat_row("1 %: the part (one archive for every node)", part, " MB"),
            stat_row("1 %: master sent during the release", inc_sent, " MB"),
            stat_row("1 %: extra disk on the node that grew most", disk_max, " MB"),
        ], STAT_HEADERS))
        ratio = full_prepare["median"] / getfile["median"]
        bytes_ratio = inc_sent["median"] / full_sent["median"]
        disk_ratio = disk_max["median"] * 1e6 / reps[0]["artifact_bytes"]
        first = reps[0]
        first_ratio = first["full"]["prepare"] / first["getfile_wall"]
        say(f"full release: prepare / cp.get_file (medians): {ratio:.2f}  (goal <= 1.0)")
        say(f"first release (rep 1, no node holds a release; asked: {first['full']['distribute'].get('asked')}): "
            f"prepare {first['full']['prepare']}s / cp.get_file {first['getfile_wall']}s = {first_ratio:.2f}")
        say(f"1 % release: master sent / full release's: {100 * bytes_ratio:.2f}%  (goal <= 2 %)")
        say(f"1 % release: extra disk per node / release size: {100 * disk_ratio:.2f}%  (goal <= 2 %)")
        say()
        say(f"==> redeploy of the prepared release {last} (same commit)")
        say(table([
            ["salt-run deploy.release (wall)", fmt(redeploy["wall"])],
            ["prepare", fmt(redeploy["prepare"])],
            ["runner's prepare line", redeploy["prepare_line"].split(": ", 1)[-1]],
            ["master sent (ret + publish ports)", human_bytes(again["bytes"]["sent"])],
            ["release directory unchanged (inode)", f"{redeploy['release_dir_unchanged']}/{len(nodes)}"],
            ["archives left in the minions' caches", str(redeploy["archives_in_minion_caches"])],
        ], ["redeploy", "value"]))
        bench.finish(reps=reps, prepare_over_getfile=round(ratio, 3), first_release_over_getfile=round(first_ratio, 3),
                     incremental_bytes_ratio=round(bytes_ratio, 5),
                     incremental_disk_ratio=round(disk_ratio, 5), redeploy=redeploy, nodes=nodes,
                     files=args.files, file_size=args.file_size, changed_files=changes,
                     bytes_method="tcp_info bytes_acked/bytes_received of the master's ret+publish port "
                                  "connections via ss (snapshots + ss -E destroy events)")
        say(f"runtime {bench.result['runtime_seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
