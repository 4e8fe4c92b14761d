"""
Salt loader entry points for the deploy extension.

``pip install .`` registers these callables under the ``salt.loader`` entry-point
group, so masters and minions find the ``deploy`` execution module, state and runner
without any ``file_roots`` change or ``saltutil.sync_*``.

The runner's package ships inside this one, as ``saltext_deploy/master/`` (from
``_utils/deploy_master/``), and nothing of it lands in site-packages' top level.  Its code
imports itself as ``deploy_master`` (the name the classic route's ``saltutil.sync_utils``
gives it): importing this package adds, at the end of ``sys.meta_path``, a finder that
resolves that one top-level name to ``saltext_deploy/master`` (installed) or
``_utils/deploy_master`` (a source checkout).  Salt imports this package before any runner
(it calls :func:`get_runner_dirs` to find them), and a ``deploy_master`` found on
``sys.path`` first (the classic route's ``extmods/utils``) still wins.

``python -m saltext_deploy file-roots`` prints the folder that holds the node-preparation
states (``deploy``): add it to the master's ``file_roots``.
"""

import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
MASTER_PACKAGE = "deploy_master"


def _dirs(kind, marker="deploy.py"):
    # installed: saltext_deploy/<kind>; editable or source checkout: the repo's top-level folder
    for path in (os.path.join(_HERE, kind), os.path.join(os.path.dirname(_HERE), kind)):
        if os.path.isfile(os.path.join(path, marker)):
            return [path]
    return []


def _master_dir():
    """Where the runner's package is: ``saltext_deploy/master`` (wheel) or ``_utils/deploy_master``."""
    for path in (os.path.join(_HERE, "master"), os.path.join(os.path.dirname(_HERE), "_utils", MASTER_PACKAGE)):
        if os.path.isfile(os.path.join(path, "__init__.py")):
            return path
    return None


class _MasterFinder:
    """Finds the top-level ``deploy_master`` in :func:`_master_dir`; its submodules follow its ``__path__``."""

    @staticmethod
    def find_spec(name, path=None, target=None):  # pylint: disable=unused-argument
        if name != MASTER_PACKAGE:
            return None
        folder = _master_dir()
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(
            MASTER_PACKAGE, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder])


if not any(isinstance(f, _MasterFinder) or type(f).__name__ == "_MasterFinder" for f in sys.meta_path):
    sys.meta_path.append(_MasterFinder())


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
    """Outputters: ``deploy_progress`` (progress lines) and ``deploy_summary`` (the end of a run)."""
    return _dirs("_output", "deploy_progress.py")


def get_netapi_dirs():
    """salt-api modules: ``deploy_console`` (rest_cherrypy with the console's HTTP headers)."""
    return _dirs("_netapi", "deploy_console.py")


def console_dir():
    """The web console's static files (``index.html``, ``app.js``, ``app.css``): salt-api's ``static``."""
    for path in (os.path.join(_HERE, "console"), os.path.join(os.path.dirname(_HERE), "console")):
        if os.path.isfile(os.path.join(path, "index.html")):
            return path
    return None


def file_roots_dir():
    """The folder to add to the master's ``file_roots``: ``deploy/init.sls`` (the node-preparation
    states, ``state.apply deploy``)."""
    for path in (os.path.join(_HERE, "salt"), os.path.join(os.path.dirname(_HERE), "salt")):
        if os.path.isfile(os.path.join(path, "deploy", "init.sls")):
            return path
    return None
