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


def valid(value, regex, what):
    """``value`` if it matches ``regex`` and has no ``..`` nor a trailing ``/``; else SaltInvocationError."""
    if not isinstance(value, str) or not regex.fullmatch(value) or ".." in value or value.endswith("/"):
        raise SaltInvocationError(
            f"invalid {what} {value!r}: allowed are {regex.pattern} without '..'"
        )
    return value


def field(value):
    """One field of a release name, reduced to ``[A-Za-z0-9.-]``."""
    return FIELD_RE.sub("-", str(value)).strip("-") or "none"


def release_name(project, env, revision):
    """``{project}_{env}_{version}_{branch}_{YYYY-mm-dd}_{HH-MM-SS}_{committer}``, time in UTC.

    ``revision`` is a :class:`deploy_master.source.Revision`.
    """
    when = revision.time.astimezone(datetime.timezone.utc)
    fields = [project, env, revision.version, revision.branch, when.strftime("%Y-%m-%d"),
              when.strftime("%H-%M-%S"), revision.author]
    return "_".join(field(f) for f in fields)


def now():
    """The time stamp written into records: UTC, ISO 8601, seconds."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def caller():
    """Who runs this, and from where: (user, host)."""
    user = os.environ.get("SUDO_USER") or getpass.getuser()
    origin = os.environ.get("SSH_CLIENT", "").split(" ")[0] or socket.gethostname()
    return user, origin
