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


def with_outputter(ret, opts, fun, outputter):
    """``ret`` naming ``outputter`` when ``fun`` runs on a salt-run command line without ``--out``: Salt
    reads a module's ``__outputter__`` for execution modules only; salt-run takes a runner return's
    outputter from its ``outputter`` key.  ``--out=json``, salt-api, orchestration and Python callers
    get the return unchanged."""
    if isinstance(ret, dict) and opts.get("fun") == fun and "selected_output_option" in opts and not opts.get("output"):
        ret["outputter"] = outputter
    return ret


def whole_number(fun, name, value):
    """``value`` as an int, or SaltInvocationError naming ``fun``'s argument ``name``."""
    try:
        return int(value)
    except (TypeError, ValueError):
        raise SaltInvocationError(f"{fun}: {name}={value!r} must be a whole number") from None


def check_rollback(to, emergency, force, allow_bad):
    """The rules between deploy.rollback's arguments (SaltInvocationError, one line)."""
    if force and not emergency:
        raise SaltInvocationError("force=True is only for emergency=True (it passes the lock); to go to a "
                                  "release marked bad, use to=<release> allow_bad=True")
    if allow_bad and not to:
        raise SaltInvocationError("allow_bad=True needs to=<release>: a rollback goes to a release marked "
                                  "bad only when it is named")


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
