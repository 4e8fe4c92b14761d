"""Where the master keeps its own state on disk: ``deploy_state_dir`` (default ``<cachedir>/deploy``)."""

import os


def base(opts):
    """The master's state folder: ``deploy_state_dir``, default ``<cachedir>/deploy``."""
    return opts.get("deploy_state_dir") or os.path.join(opts["cachedir"], "deploy")


def folder(opts, *parts):
    """A folder under :func:`base`, created 0700."""
    path = os.path.join(base(opts), *parts)
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path
