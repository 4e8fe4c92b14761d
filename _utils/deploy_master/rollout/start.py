"""The first steps of a release: build (steps 1-4 of the article) and plan."""

import time

import salt.utils.minions

from deploy_master import build as builds
from deploy_master import plan as planning


def build(run, ref, test=False, branch=False):
    """Step 1-4 of the article: latest code, build, package, place it on the fileserver."""
    started = time.monotonic()
    info = builds.build(run.opts, run.project, run.env, run.conf, ref, run.progress, test=test, branch=branch,
                       resolved=getattr(run, "resolved", None))
    run.release = info["release"]
    if test:
        return info
    run.timings["build"] = round(time.monotonic() - started, 3)
    run.emit("build", f"build: {run.release} ({info['commit'][:10]}, {'reused' if info['reused'] else 'built'} "
                      f"{info['bytes']} bytes) in {run.timings['build']}s",
             **{k: info.get(k) for k in ("version", "commit", "branch", "source")}, seconds=run.timings["build"])
    return info



def plan(run):
    """The env's nodes: preprod first, then stages of batches."""
    ckminions = salt.utils.minions.CkMinions(run.opts)

    def match(target):
        return set(ckminions.check_minions(target, "compound")["minions"])

    return planning.make(run.env, run.envc, match, ckminions.connected_ids)


def describe(run, plan):  # pylint: disable=redefined-outer-name
    """The plan in lines, for people."""
    return planning.describe(plan, run.balancer.describe())
