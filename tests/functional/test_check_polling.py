"""
Checks poll fast with a deadline: the first attempt at once, then a short
backoff (50 ms, doubling, at most ``delay`` apart) for the check's window, at least ``retries``
attempts.  Behaviour only: the speed is measured by bench/, never asserted here.
"""

import http.server
import threading

import pytest
from tests.functional.fnlib import PROJECT


class _ComesUp(http.server.BaseHTTPRequestHandler):
    """503 for the first ``server.down`` requests (a service still restarting), then 200."""

    def do_GET(self):  # noqa: N802
        self.server.hits += 1
        status = 503 if self.server.hits <= self.server.down else 200
        body = b"rainbow-ok"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def comes_up():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ComesUp)
    server.daemon_threads = True
    server.hits, server.down = 0, 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_a_service_back_soon_is_seen_within_the_old_retries_window(project, comes_up):
    """Five 503s, then 200: three attempts one second apart (the old model) saw only 503s; the
    backoff (0, 50, 150, 350, 750, 1550 ms) reaches the sixth answer inside the same 2 s window."""
    server, url = comes_up
    server.down = 5
    project.write_pillar(checks=[{"url": url, "status": 200, "retries": 3, "delay": 1}])
    ret = project.mod.check(PROJECT)
    assert ret["result"] is True, ret
    assert ret["checks"][0]["attempts"] == 6 == server.hits


def test_a_failing_check_stops_at_its_window(project, comes_up):
    server, url = comes_up
    server.down = 10**6
    project.write_pillar(checks=[{"url": url, "status": 200, "retries": 2, "delay": 0.2}])
    ret = project.mod.check(PROJECT)
    assert ret["result"] is False and ret["checks"][0]["error"] == "status 503, expected 200"
    # window 0.2 s: attempts at 0, 50, 150 and 200 ms (the last one at the window's end)
    assert ret["checks"][0]["attempts"] == server.hits >= 2


def test_retries_is_a_minimum_and_deadline_widens_the_window(project, comes_up):
    server, url = comes_up
    server.down = 10**6
    project.write_pillar(checks=[{"url": url, "status": 200, "retries": 4, "delay": 0}])
    assert project.mod.check(PROJECT)["checks"][0]["attempts"] == 4  # delay 0: no window, 4 attempts
    server.hits, server.down = 0, 7
    project.write_pillar(checks=[{"url": url, "status": 200, "retries": 1, "delay": 0.5, "deadline": 30}])
    ret = project.mod.check(PROJECT)
    assert ret["result"] is True and ret["checks"][0]["attempts"] == 8, ret
