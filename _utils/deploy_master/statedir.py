"""Where the master keeps its own state on disk: ``deploy_state_dir`` (default ``<cachedir>/deploy``)."""

import json
import os


def base(opts):
    """The master's state folder: ``deploy_state_dir``, default ``<cachedir>/deploy``."""
    return opts.get("deploy_state_dir") or os.path.join(opts["cachedir"], "deploy")


def folder(opts, *parts):
    """A folder under :func:`base`, created 0700."""
    path = os.path.join(base(opts), *parts)
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def write_json(path, data, durable=False):
    """Write ``data`` to ``path`` as JSON, whole or not at all (a file beside it, then renamed);
    ``durable``: on the disk before the rename (a lock, the nodes out of the LB)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, sort_keys=True)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_json(path):
    """What :func:`write_json` wrote; None when there is no such file or it is not JSON."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None
