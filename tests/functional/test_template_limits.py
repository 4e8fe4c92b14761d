"""
Config templates come from the release (committers): their rendering is bounded in time, output
size and memory (``template_limits``).  Each amplifier fails its node fast, naming the file and the
limit, and leaves nothing behind: ``current`` and the releases untouched, no partial release.
"""

import contextlib
import os
import signal
import threading
import time

import pytest
from salt.exceptions import CommandExecutionError
from tests.functional.fnlib import APP_FILES, PROJECT, SECRET

from tests.functional.test_bad_input import _untouched

BYTES = "template_limits: bytes"
AMPLIFIERS = [
    pytest.param("{{ 'x'|center(100000000) }}", BYTES, id="center filter"),
    pytest.param("{{ 'x'.center(10**10) }}", BYTES, id="center method"),
    pytest.param("{{ 'x'.ljust(100000000) }}{{ 'x'.zfill(100000000) }}", BYTES, id="ljust zfill"),
    pytest.param("{{ '%*s'|format(100000000, 'x') }}", BYTES, id="'%*s'|format"),
    pytest.param("{{ '%100000000s'|format('x') }}", BYTES, id="'%Ns'|format"),
    pytest.param("{{ '%100000000s' % 'x' }}", BYTES, id="% operator"),
    pytest.param("{{ '{:>100000000}'.format('x') }}", BYTES, id="str.format"),
    pytest.param("{{ ('x' * 1000000)|replace('x', 'x' * 64) }}", BYTES, id="replace filter"),
    pytest.param("{{ ('x' * 1000000).replace('x', 'x' * 64) }}", BYTES, id="replace method"),
    pytest.param("{{ 'x' * 1048577 }}", BYTES, id="string multiplication"),
    pytest.param("{{ ['abcd'] * 1048577 }}", BYTES, id="list multiplication"),
    pytest.param("{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}", BYTES, id="output of a loop"),
    pytest.param("{{ 'a b '|indent(100000000) }}", BYTES, id="indent"),
]


def _refused_fast(live, template, limits=None, within=15):
    """prepare with ``template`` as config/app.ini: the error, after checking it came fast and left nothing."""
    if limits is not None:
        live.write_pillar(reload=False, template_limits=limits)
    files = {**APP_FILES, "config/app.ini.example": template}
    url, _, checksum = live.artifact("r2", files=files)
    started = time.monotonic()
    try:
        with pytest.raises(CommandExecutionError) as exc:
            live.mod.prepare(PROJECT, "r2", url, checksum)
    finally:
        live.write_pillar(reload=False, template_limits=None)
    took = time.monotonic() - started
    assert took < within, f"refused only after {took:.1f}s"
    _untouched(live)
    message = str(exc.value)
    assert message.startswith("config config/app.ini: the template "), message
    assert SECRET not in message
    return message


@pytest.mark.parametrize("template, limit", AMPLIFIERS)
def test_amplifying_templates_fail_fast_naming_the_file_and_the_limit(live, template, limit):
    message = _refused_fast(live, template)
    assert f"produces more than the size limit of {1 << 20} bytes ({limit})" in message


def test_nested_loops_stop_at_the_time_limit(live):
    template = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    message = _refused_fast(live, template, {"seconds": 1}, within=10)
    assert "takes longer than the time limit of 1 s (template_limits: seconds)" in message


def test_a_template_hoarding_memory_stops_at_the_memory_limit(live):
    # each step stays under the size limit; together they hold 64 MB
    template = ("{% set a = 'x' * 1000000 %}{% set b = [a, a, a, a, a, a, a, a] %}{% set c = b * 8 %}"
                "{{ (c|join(''))|length }}")
    message = _refused_fast(live, template, {"memory": 32 << 20})
    assert f"needs more than the memory limit of {32 << 20} bytes (template_limits: memory)" in message


def test_the_size_limit_is_the_projects_own(live):
    message = _refused_fast(live, "{{ 'x' * 200 }}", {"bytes": 100})
    assert "produces more than the size limit of 100 bytes (template_limits: bytes)" in message


def test_a_template_within_the_limits_renders_as_before(live):
    live.write_pillar(reload=False, template_limits={"seconds": 2, "bytes": 4096})
    try:
        template = ("key = {{ pillar.rainbow_secrets.sms_key }}\nrelease = {{ release }}\n"
                    "pad = {{ 'ab'|center(6) }}|{{ '%3s'|format('x') }}|{{ 'a-b'|replace('-', '+') }}\n"
                    # large numbers that are no width: not mistaken for an amplifier
                    "stamp = {{ '%d'|format(1700000000) }} {{ '%s' % ('1' * 40) }} {{ 'x'|truncate(5000000) }}\n")
        url, _, checksum = live.artifact("r2", files={**APP_FILES, "config/app.ini.example": template})
        live.mod.prepare(PROJECT, "r2", url, checksum)
    finally:
        live.write_pillar(reload=False, template_limits=None)
    with open(f"{live.root}/releases/r2/config/app.ini", encoding="utf-8") as fh:
        assert fh.read() == f"key = {SECRET}\nrelease = r2\npad =   ab  |  x|a+b\nstamp = 1700000000 {'1' * 40} x\n"


def _stop_the_renderer(seconds, stopped):
    """Stop the first template renderer that starts (SIGSTOP) for ``seconds``, as a busy node's scheduler
    would keep it from a core; it uses no CPU meanwhile."""
    me, deadline = str(os.getpid()), time.monotonic() + 30
    while time.monotonic() < deadline:
        for pid in (p for p in os.listdir("/proc") if p.isdigit()):
            try:
                with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
                    if fh.read().rsplit(")", 1)[1].split()[1] != me:
                        continue
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    if b"jinja2.sandbox" not in fh.read():
                        continue
                os.kill(int(pid), signal.SIGSTOP)
            except (OSError, IndexError):
                continue
            stopped.append(int(pid))
            time.sleep(seconds)
            with contextlib.suppress(ProcessLookupError):  # killed on its wall time meanwhile
                os.kill(int(pid), signal.SIGCONT)
            return


def test_a_renderer_kept_from_the_cpu_is_not_failed_on_its_wall_time(live):
    """``seconds`` bounds the renderer's CPU: kept off the CPU longer than that (a node busy with other
    work), it renders all the same."""
    stopped = []
    starve = threading.Thread(target=_stop_the_renderer, args=(1 + 2 + 1.5, stopped))  # limit + start grace + 1.5
    live.write_pillar(reload=False, template_limits={"seconds": 1})
    try:
        url, _, checksum = live.artifact("r2", files={**APP_FILES, "config/app.ini.example": "release = {{ release }}\n"})
        starve.start()
        live.mod.prepare(PROJECT, "r2", url, checksum)
    finally:
        starve.join()
        live.write_pillar(reload=False, template_limits=None)
    assert stopped, "no renderer was seen to start"
    with open(f"{live.root}/releases/r2/config/app.ini", encoding="utf-8") as fh:
        assert fh.read() == "release = r2\n"


@pytest.mark.parametrize("limits", [{"seconds": 0}, {"bytes": "1M"}, {"cpu": 5}, [5], {"memory": True}])
def test_bad_template_limits_are_refused(live, limits):
    live.write_pillar(reload=False, template_limits=limits)
    url, _, checksum = live.artifact("r2")
    try:
        with pytest.raises(CommandExecutionError, match="template_limits must map some of seconds, bytes, memory"):
            live.mod.prepare(PROJECT, "r2", url, checksum)
    finally:
        live.write_pillar(reload=False, template_limits=None)
    _untouched(live)
