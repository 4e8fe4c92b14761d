"""A live node that is slow to answer is waited for; only a node that is really gone counts as failed.

Salt's client gives up on a node that leaves one ``saltutil.find_job`` unanswered for
``gather_job_timeout`` (5 s in this cluster).  On a loaded master or minion (100 nodes on two
cores, or several test sessions at once) that is a live node still running the job: the
runner asks again and waits while the node says it runs the job.

Uses the session cluster (``clean_cluster``).
"""

import os
import signal
import threading
import time

from .conftest import NODES
from .test_rollback import release_new


def test_a_node_that_answers_late_is_waited_for_not_reported_down(clean_cluster):
    c = clean_cluster
    a = release_new(c)
    release_new(c)
    slow = "web-2"
    # the slow node's restart takes 25 s, longer than Salt's own wait (deploy_timeout 5 +
    # gather_job_timeout 5) and the runner's old 5 s grace after it
    c.set_pillar(node_extra={slow: {"restart": [{"cmd": "sleep 25"}, {"cmd": c.php[slow].reload_command()}]}})
    pid = c.minions[slow].pid
    result = {}
    worker = threading.Thread(
        target=lambda: result.update(ret=c.run("deploy.rollback", project="rainbow", env="pro", emergency=True)))
    # the minion's main process (which answers find_job) is frozen for the first 16 s: Salt's
    # find_job round goes unanswered, while the job itself runs on (or starts once it thaws)
    os.kill(pid, signal.SIGSTOP)
    try:
        worker.start()
        time.sleep(16)
    finally:
        os.kill(pid, signal.SIGCONT)
    worker.join(timeout=240)
    ret = result["ret"]
    assert ret.returncode == 0, ret.stdout[-3000:]
    assert ret.data["nodes"][slow]["result"] == "ok", ret.data["nodes"][slow]
    assert c.currents() == {n: a for n in NODES}
