"""A loopback webhook sink for the notification tests: records every POST as (path, JSON body)."""

import contextlib
import http.server
import json
import threading


@contextlib.contextmanager
def webhook_sink(fail_prefix="/fail"):
    """Yields (base URL, list of (path, body)); a path starting with ``fail_prefix`` is answered 500, any other
    200 with a body every chat format takes for a delivery (Slack's ``ok``, DingTalk's and WeCom's ``errcode 0``)."""
    got = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append((self.path, json.loads(body)))
            failing = self.path.startswith(fail_prefix)
            answer = b"" if failing else b'{"ok": true, "errcode": 0, "errmsg": "ok"}'  # what each chat says
            self.send_response(500 if failing else 200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", got
    finally:
        server.shutdown()
        server.server_close()
