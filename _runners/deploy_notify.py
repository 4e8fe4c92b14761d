"""
Post one message to a project's webhooks by hand (to try a hook): ``deploy_notify.send``.

A release's or rollback's notifications are posted by the ``deploy`` runner itself, from its own run
(docs/notifications.md); no reactor is needed, nor safe: a minion can fire any ``deploy/...`` event
on the master's bus.  The hooks are the project's ``notify`` list in the master's pillar (see
``deploy_master.notify``).
"""

import logging
import os
import sys

try:
    import deploy_master  # noqa: F401
except ImportError:  # a source checkout whose editable install predates _utils/: the package is beside us
    sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_utils"))
    import deploy_master  # noqa: F401
from deploy_master import DeployError, config, notify  # noqa: E402

log = logging.getLogger(__name__)

__virtualname__ = "deploy_notify"


def __virtual__():
    return __virtualname__


def send(tag=None, data=None, **kwargs):  # pylint: disable=unused-argument
    """
    Post one event to the project's webhooks (the ``notify`` list of its pillar), once per hook
    that wants it.  Only a fixed set of the event's fields travels (docs/notifications.md);
    a hook's address is never logged or returned.  Any other tag is ignored.

    tag
        The event's tag, ``deploy/<project>/<env>/<what>``.
    data
        The message's fields (see docs/notifications.md).

    CLI Example:

    .. code-block:: bash

        salt-run deploy_notify.send tag=deploy/rainbow/pro/success data='{"result": "success", "seconds": 31.2}'
    """
    parsed = notify.parse_tag(tag or "")
    if not parsed:
        return {"event": None, "sent": [], "failed": {}, "comment": f"not a notifiable tag: {tag!r}"}
    try:
        conf, _ = config.load(__opts__, parsed[0])
        hooks = notify.hooks(conf, parsed[0])
    except (DeployError, Exception) as exc:  # pylint: disable=broad-except  # one clear line, never a trace
        log.warning("deploy: notification of %s skipped: %s", tag, exc)
        return {"event": parsed[2], "sent": [], "failed": {}, "comment": str(exc)}
    return notify.send(hooks, tag, data if isinstance(data, dict) else {}, log, __opts__.get("deploy_notify_hosts"))
