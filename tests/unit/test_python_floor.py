"""
The Python floor (setup.cfg: python_requires >=3.10): the code masters and minions run uses no
newer API.  ``.ci/python-floor`` (vermin) is the check; it runs in ``.ci/run`` before the tests.
"""

import glob
import hashlib
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLOOR = os.path.join(ROOT, ".ci", "python-floor")


def _floor(*paths):
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run([FLOOR, *paths], capture_output=True, text=True, env=env, timeout=300, check=False)


def test_shipped_code_runs_on_python_3_10():
    run = _floor()
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_check_catches_a_3_11_api(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('import hashlib\n\n\ndef h(fh):\n    return hashlib.file_digest(fh, "sha256").hexdigest()\n')
    run = _floor(str(bad))
    assert run.returncode != 0
    assert "hashlib.file_digest" in run.stdout


def _python310():
    """A working Python 3.10 interpreter (PATH, then pyenv's), or None."""
    found = [shutil.which("python3.10")] + sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10")))
    for exe in filter(None, found):
        if subprocess.run([exe, "-c", "pass"], capture_output=True, check=False).returncode == 0:
            return exe
    return None


def test_the_master_side_sha256_on_python_3_10(tmp_path):
    exe = _python310()
    if not exe:
        pytest.skip("no Python 3.10 on this machine")
    data = os.urandom(3 << 20) + b"tail"
    path = tmp_path / "blob"
    path.write_bytes(data)
    code = "import sys; from deploy_master import manifest; print(manifest.sha256(sys.argv[1]))"
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "_utils"))
    run = subprocess.run([exe, "-c", code, str(path)], capture_output=True, text=True, env=env, timeout=120,
                         check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [hashlib.sha256(data).hexdigest()]
