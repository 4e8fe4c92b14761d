import time

import pytest


@pytest.fixture
def clock(monkeypatch):
    """A clock the test drives: ``time.monotonic`` reads ``clock[0]`` and ``time.sleep`` advances it."""
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    monkeypatch.setattr(time, "sleep", lambda s: now.__setitem__(0, now[0] + s))
    return now
