"""
The master side of salt-deploy, as a plain package: what the ``deploy`` runner uses.

One module per concern, every function takes what it needs (``opts``, the project's
pillar dict) as arguments, as saltext-vault keeps ``utils/vault/*.py`` (tests/unit/test_imports.py
checks that this list names every module, and that they import each other without a cycle):

``names``         names, their validation, the release name, who and when
``config``        the project/env definition from the master's pillar, master options
``pillar_schema`` every key of the project pillar: its type, its default, where it may appear
``plan``          batch sizes and stages (pure)
``hooks``         the pillar's hooks: their steps validated, the plan's lines, which node, already released
``lbs``           the ``lb`` pillar (one load balancer or a list, each named) and merging their answers (pure)
``gates``         the gate seam: a stage's pause and the analysis of live traffic, its providers
``policy``        the rollback target and the cluster view (pure)
``source``        where code comes from: one module per VCS (and CI-built artifacts) behind one interface
``archive``       the tar member checks, and a safe unpack
``manifest``      the release's manifest, its tree hash, the content archive and its parts
``build``         build, package, and place an artifact on the master's fileserver
``jobs``          the whole Salt transport: publish, gather, find_job rounds, late returns
``rollout``       a run's steps: its state and events, distribution, the batches behind the LBs, gates, revert, finish
``changes``       what a release would change: commits and revisions, config keys (``deploy.changes``)
``views``         what the read-only views compute (stats, projects, a validation's answers)
``web``           the HTTP opener for the master's own requests (no redirect, no proxy)
``statedir``      the master's state folder (``deploy_state_dir``)
``store_base``    the interface of the master's state: the lock, the store
``store``         the master's state on its disk: lock, detached list, history, the record of the nodes
``store_etcd``    the same on etcd v3, shared by two or more masters
``contract``      exit codes and the arguments of the runner's public functions
``notify``        notifications: the hooks, the message and its wire formats, the POST

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
