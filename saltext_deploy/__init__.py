"""
Salt loader entry points for the deploy extension.

``pip install .`` registers these callables under the ``salt.loader`` entry-point
group, so masters and minions find the ``deploy`` execution module, state and runner
without any ``file_roots`` change or ``saltutil.sync_*``.
"""

import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def _dirs(kind, marker="deploy.py"):
    # installed: saltext_deploy/<kind>; editable or source checkout: the repo's top-level folder
    for path in (os.path.join(_HERE, kind), os.path.join(os.path.dirname(_HERE), kind)):
        if os.path.isfile(os.path.join(path, marker)):
            return [path]
    return []


def get_module_dirs():
    """Execution modules: ``deploy``, ``deploy_lb``."""
    return _dirs("_modules")


def get_states_dirs():
    """State modules: ``deploy``."""
    return _dirs("_states")


def get_runner_dirs():
    """Runners: ``deploy``."""
    return _dirs("_runners")


def get_outputter_dirs():
    """Outputters: ``deploy_progress`` (plain progress lines for ``salt-run deploy.*``)."""
    return _dirs("_output", "deploy_progress.py")


def console_dir():
    """The web console's static files (``index.html``, ``app.js``, ``app.css``): salt-api's ``static``."""
    for path in (os.path.join(_HERE, "console"), os.path.join(os.path.dirname(_HERE), "console")):
        if os.path.isfile(os.path.join(path, "index.html")):
            return path
    return None
