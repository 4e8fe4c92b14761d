"""Names and their validation; the release name; who runs and when (the stamps in names and records)."""

import datetime
import getpass
import os
import re
import socket

from salt.exceptions import SaltInvocationError

# the node module (_modules/deploy.py) keeps its own copy of PROJECT_RE and RELEASE_RE:
# tests/unit/test_names.py pins that they are equal
PROJECT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
ENV_RE = PROJECT_RE
REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
RELEASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
FIELD_RE = re.compile(r"[^A-Za-z0-9.-]+")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
DOTS_RE = re.compile(r"\.{2,}")
FIELD_MAX = 48  # characters per field of a release name (version, branch, committer)
BY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:/#+=-]{0,127}$")  # a CI job's identity: jenkins:app/deploy#12


def valid(value, regex, what):
    """``value`` if it matches ``regex`` and has no ``..`` nor a trailing ``/``; else SaltInvocationError."""
    if not isinstance(value, str) or not regex.fullmatch(value) or ".." in value or value.endswith("/"):
        raise SaltInvocationError(
            f"invalid {what} {value!r}: allowed are {regex.pattern} without '..'"
        )
    return value


def field(value, cap=FIELD_MAX):
    """One field of a release name, reduced to ``[A-Za-z0-9.-]``: control characters dropped, other
    characters become ``-``, runs of dots collapse to one, no ``.``/``-`` at either end, at most
    ``cap`` characters (None: no cap; project and env are validated names); ``none`` if nothing is left.
    An odd committer (``..``, 300 characters) still gives a name the nodes accept."""
    text = DOTS_RE.sub(".", FIELD_RE.sub("-", CONTROL_RE.sub("", str(value)))).strip(".-")
    return (text[:cap].rstrip(".-") if cap else text) or "none"


def check_release(name):
    """``name`` if the nodes accept it as a release name (their own rule: ``RELEASE_RE``, no ``..``,
    not ``switch``); else SaltInvocationError.  tests/unit/test_names.py pins it to the node's rule."""
    if not isinstance(name, str) or not RELEASE_RE.fullmatch(name) or ".." in name or name == "switch":
        raise SaltInvocationError(
            f"invalid release name {name!r}: the nodes accept {RELEASE_RE.pattern} without '..' (not 'switch')"
        )
    return name


def release_name(project, env, revision):
    """``{project}_{env}_{version}_{branch}_{YYYY-mm-dd}_{HH-MM-SS}_{committer}``, time in UTC.

    ``revision`` is a :class:`deploy_master.source.Revision`.
    """
    when = revision.time.astimezone(datetime.timezone.utc)
    fields = [revision.version, revision.branch, when.strftime("%Y-%m-%d"), when.strftime("%H-%M-%S"), revision.author]
    return "_".join([field(project, None), field(env, None)] + [field(f) for f in fields])


def now():
    """The time stamp written into records: UTC, ISO 8601, seconds."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


_ACTING = {}  # this process's runner call: Salt's user of the call and the CI's by=


def acting(salt_user=None, by=None):
    """Say whom the runner call now starting acts for: Salt's user of the call (the runner's ``__user__``)
    and the identity a CI job gives with ``by=`` (validated: one token, at most 128 characters).  Every
    record the call writes names them (:func:`caller`, :func:`by`)."""
    if by is not None:
        by = valid(str(by), BY_RE, "by")
    _ACTING.clear()
    _ACTING.update(salt_user=salt_user, by=by)


def person(salt_user=None):
    """The person behind a runner call.  ``salt-run`` as root passes Salt's own user (``root``, or
    ``sudo_<login>`` under sudo); a call through the master's external authentication (salt-api, the
    console, ``salt-run -a pam``) passes the eauth user, while the master process itself runs as root."""
    login = os.environ.get("SUDO_USER") or getpass.getuser()
    if not salt_user or salt_user == "UNKNOWN" or salt_user == getpass.getuser():
        return login
    if salt_user.startswith("sudo_"):
        return salt_user[len("sudo_"):]
    return salt_user


def caller():
    """Who runs this, and from where: (user, host)."""
    user = person(_ACTING.get("salt_user"))
    origin = os.environ.get("SSH_CLIENT", "").split(" ")[0] or socket.gethostname()
    return user, origin


def by():
    """The CI identity the current runner call was given with ``by=`` (None: none)."""
    return _ACTING.get("by")
