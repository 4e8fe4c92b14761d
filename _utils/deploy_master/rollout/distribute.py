"""What travels to the nodes (one archive, the artifact or a part), and the prepare step."""

import os
import time

from deploy_master import DeployError, build, manifest
from deploy_master.rollout import batches


def distribute(run, nodes, info):
    """What travels: ONE archive for every node, the artifact itself when a node lacks everything
    (or every node has the release), else a part with the contents some node lacks.

    A node the master's record shows without any release of the project lacks everything: the
    artifact, nobody is asked (a first release).  Otherwise one call asks every node which contents
    it lacks; the node reads the release's manifest from the fileserver, so neither the question
    nor the answer grows with the files.  Returns (the archive's ``{source, checksum}``, the nodes
    to prepare, errors)."""
    started = time.monotonic()
    doc = build.manifest_of(run.opts, run.project, run.release)
    sizes = manifest.blob_sizes(doc)
    record = run.store.record_read(run.project, run.env)
    new = [n for n in nodes if not (isinstance(record.get(n), dict) and record[n].get("releases"))]
    if new:  # unasked, every node is one to prepare (an empty answer: not prepared)
        errors, answers, lacking, whole = {}, {n: {} for n in nodes}, set(sizes), True
        why = f"{len(new)} nodes hold no release of {run.project} (the master's record)"
    else:
        ret = run.call(nodes, "deploy.lacking", {"project": run.project, "release": run.release,
                                                 "tree": info["tree"], "manifest": info["manifest"]})
        errors = {n: r["error"] for n, r in ret.items() if not r["ok"]}
        answers = {n: r["ret"] for n, r in ret.items() if r["ok"]}
        lacking, whole = manifest.plan_transfer(answers, sizes)
        why = f"lacking {len(lacking)}/{len(sizes)} contents"
    fresh = [n for n, a in answers.items() if not a.get("prepared")]
    if whole:
        what = {"source": info["source"], "checksum": info["checksum"], "bytes": info["bytes"]}
        line = f"distribute: {len(fresh)} nodes to prepare, {why}: the whole artifact ({info['bytes']} bytes)"
    else:
        what = build.part(run.opts, run.project, info, lacking)
        line = (f"distribute: {len(fresh)} nodes to prepare, {why} ({sum(sizes[s] for s in lacking)} bytes): "
                f"a part of {what['bytes']} bytes ({100 * what['bytes'] / max(info['bytes'], 1):.2f}% of the artifact)")
    run.emit("prepare", line, ready=0, total=len(nodes), bytes=what["bytes"], done=False)
    run.timings["distribute"] = {"seconds": round(time.monotonic() - started, 3), "contents": len(sizes),
                                 "lacking": len(lacking), "bytes": what["bytes"], "artifact_bytes": info["bytes"],
                                 "asked": not new}
    return what, [n for n in nodes if n in answers], errors


PROGRESS_EVERY = 2.0  # seconds between two progress lines of prepare while nodes answer


def _as_nodes_answer(run, total, size):
    """prepare's progress while the nodes answer: a line (and ``prepare`` event, ``done: false``) at most
    every PROGRESS_EVERY seconds, and when the last node answered."""
    last = [time.monotonic()]

    def landed(outcomes):
        now = time.monotonic()
        if now - last[0] < PROGRESS_EVERY and len(outcomes) < total:
            return
        last[0] = now
        ready = sum(1 for o in outcomes.values() if o["ok"])
        run.emit("prepare", f"prepare: {ready}/{total} nodes ready, {size / 1e6:.1f} MB"
                 + (f", {len(outcomes) - ready} failed" if len(outcomes) > ready else ""),
                 ready=ready, total=total, bytes=size, done=False, ok=ready,
                 failed=sorted(n for n, o in outcomes.items() if not o["ok"]))
    return landed


def prepare(run, plan, build):
    started = time.monotonic()
    archive, nodes, errors = distribute(run, plan["nodes"], build)
    kwarg = {
        "project": run.project, "release": run.release, "source": archive["source"], "checksum": archive["checksum"],
        "tree": build["tree"],
        "meta": {k: build[k] for k in ("version", "branch", "commit", "committer", "time")}, "inventory": True,
    }
    try:
        ret = run.node_call(nodes, "deploy.prepare", kwarg, landed=_as_nodes_answer(run, len(nodes), archive["bytes"]))
    finally:
        if archive.get("path"):  # a part serves this run only
            os.unlink(archive["path"])
    errors.update({n: r["error"] for n, r in ret.items() if not r["ok"]})
    ret.update({n: {"ok": False, "error": e} for n, e in errors.items()})
    batches.fail(run, errors, errors)
    run.timings["prepare"] = round(time.monotonic() - started, 3)
    fresh = sum(1 for r in ret.values() if r["ok"] and r["ret"].get("changed"))
    run.emit("prepare", f"prepare: {len(ret) - len(errors)}/{len(ret)} nodes ready ({fresh} unpacked) in "
             f"{run.timings['prepare']}s",
             ready=len(ret) - len(errors), total=len(ret), bytes=archive["bytes"], done=True,
             ok=len(ret) - len(errors), failed=sorted(errors))
    if len(run.failed) > run.max_failures:
        raise DeployError(
            f"prepare failed on {', '.join(sorted(errors))}: nothing was switched"
        )
    return [n for n in plan["nodes"] if n not in errors]
