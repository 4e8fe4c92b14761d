"""
Print ``salt-run deploy.*`` progress events as plain lines.

The runner fires one progress event per step; with this outputter ``salt-run`` shows
``[   2.4s] rainbow/pro: stage gray batch 1/1: web-1 back in the LB after 0.547s`` instead
of a nested dict.  Any other data is printed as indented JSON.  An explicit ``--out``
wins, as for every outputter.

CLI Example:

.. code-block:: bash

    salt-run deploy.release project=rainbow env=pro
"""

import json

__virtualname__ = "deploy_progress"


def __virtual__():
    return __virtualname__


def output(data, **kwargs):  # pylint: disable=unused-argument
    """Return the progress message of a runner event, or the data as JSON."""
    event = data.get("event", data) if isinstance(data, dict) else data
    if isinstance(event, dict) and "message" in event:
        return str(event["message"])
    return json.dumps(data, indent=2, sort_keys=True, default=str)
