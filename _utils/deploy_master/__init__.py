"""
The master side of salt-deploy, as a plain package: what the ``deploy`` runner uses.

One module per concern, every function takes what it needs (``opts``, the project's
pillar dict) as arguments, as saltext-vault keeps ``utils/vault/*.py``:

``names``   names, their validation, the release name, who and when
``config``  the project/env definition from the master's pillar, master options
``plan``    batch sizes and stages (pure)
``policy``  the rollback target and the cluster view (pure)
``source``  where code comes from: one module per VCS behind one interface
``archive`` the tar member checks the nodes use, and a safe unpack
``build``   build, package, and place an artifact on the master's fileserver
``store``   the master's state: lock, detached list, history, the record of the nodes
``contract`` exit codes and the arguments of the runner's public functions
``notify``  notifications: the hooks, the message and its wire formats, the POST

Importable on both install routes: ``pip install`` (a top-level package of the
distribution) and the classic route (``_utils/`` synced by ``saltutil.sync_utils``, which
Salt keeps on ``sys.path``).  Salt's utils loader also sees this folder; nothing here is
meant for ``__utils__``, and importing this file imports nothing else.

``__version__`` is the version of salt-deploy: setup.cfg reads it from here (``version = attr:``).
"""

__version__ = "0.1.0"


class DeployError(Exception):
    """A release or rollback stopped: the message says why."""


class Locked(DeployError):
    """Refused: the project+env is locked by another run (the message names the holder)."""


class UnknownRef(DeployError):
    """Refused, bad input: the ref names nothing (or more than one thing) in the repository, or the
    release name it gives is one the nodes would refuse."""


class Aborted(DeployError):
    """The run was stopped by a signal (SIGTERM, SIGINT)."""


class NotPaused(DeployError):
    """deploy.promote / deploy.abort: the project+env has no paused run."""
