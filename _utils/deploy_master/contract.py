"""The runner's contract with the shell, CI servers and operators: exit codes and arguments.

Exit codes of every ``salt-run deploy.*`` (the return's ``retcode``; docs/runner.md):

==  ===========  ==================================================================
0   OK           done
1   FAILED       the run failed (the env's state: see the summary and docs/runner.md)
2   BAD_INPUT    refused before anything changed: an unknown, missing or invalid argument or pillar value, or
                 a part the master needs for it is not installed (:class:`MissingDependency`)
3   LOCKED       refused before anything changed: the project+env is locked by another run (retry later)
4   ABORTED      stopped by SIGTERM/SIGINT (or deploy.abort during a timed pause): no new batch started, the
                 batch in flight finished, LB restored
5   PAUSED       a release reached a stage with ``pause: true``: it keeps the lock; ``deploy.promote`` goes on,
                 ``deploy.abort`` reverts it (the summary's ``run`` names it)
==  ===========  ==================================================================
"""

from salt.exceptions import SaltInvocationError

from deploy_master import DeployError

OK, FAILED, BAD_INPUT, LOCKED, ABORTED, PAUSED = 0, 1, 2, 3, 4, 5


class MissingDependency(DeployError, SaltInvocationError):
    """Refused before anything changed (exit 2): an optional part this run needs is not installed.
    The message is one line naming the part and how to install it (see :func:`missing`)."""


def missing(what, part, pip=None, deb=None, rpm=None):
    """The :class:`MissingDependency` for ``what`` (who needs it) lacking ``part``: a Python package
    ``pip`` (installed into Salt's own Python) or a system package (``deb``/``rpm`` names)."""
    if pip:
        how = f"pip install {pip} into Salt's Python (onedir: salt-pip install {pip})"
    else:
        how = f"apt-get install {deb} (RHEL: dnf install {rpm or deb})"
    return MissingDependency(f"{what} needs {part}, which is not installed: {how}")


def check_arguments(fun, accepted, kwargs, **required):
    """Refuse (SaltInvocationError, one line) keyword arguments ``fun`` does not take, and required
    ones that are missing (given as ``name=value``, None: missing).  Salt's own ``__pub_*`` (any
    ``__``) keys are accepted and ignored."""
    unknown = sorted(k for k in kwargs if not str(k).startswith("__"))
    if unknown:
        listed = ", ".join(repr(k) for k in unknown)
        raise SaltInvocationError(
            f"{fun}: unknown argument{'s' if len(unknown) > 1 else ''} {listed}; accepted: {', '.join(accepted)}"
        )
    missing = [name for name, value in required.items() if value is None]
    if missing:
        listed = ", ".join(repr(k) for k in missing)
        raise SaltInvocationError(
            f"{fun}: missing argument{'s' if len(missing) > 1 else ''} {listed}; accepted: {', '.join(accepted)}"
        )
