"""The console's live view reads the structured events' fields (docs/events.md), never the progress text.

A static look at ``console/app.js`` (no browser): the text of a progress line (``message``) may only be
shown as it came, never matched, split or searched; salt's progress events are not read at all; every
event type of the contract has its handler.
"""

import os
import re

APP_JS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "console",
                      "app.js")
TYPES = ("start", "build", "plan", "prepare", "stage", "batch", "node", "analysis", "hook", "pause", "promote",
         "abort", "rollback", "done")
# what may be done with an event's message: put it into the progress log, as text
SHOWN = re.compile(r"logLine\((?:data|event)\.message\)")


def source():
    with open(APP_JS, encoding="utf-8") as fh:
        return fh.read()


def test_message_is_shown_never_parsed():
    text = source()
    uses = [m.start() for m in re.finditer(r"\b(?:data|event|info|ret)\.message\b", text)]
    assert uses, "the progress log shows the events' message"
    for pos in uses:
        line = text[text.rfind("\n", 0, pos) + 1: text.find("\n", pos)]
        assert SHOWN.search(line), f"app.js reads the progress text: {line.strip()}"


def test_no_progress_line_matching():
    text = source()
    assert "/progress" not in text, "app.js follows salt/run/<jid>/progress: the text of progress lines"
    assert "onProgress" not in text
    # a regular expression applied to the text of a progress line: "[  1.2s] project/env: ..."
    for pattern in (r"\\\[\[\^\\\]\]", r"plan: stage", r"out of the LB/", r"\(success\|failure\) in"):
        assert not re.search(pattern, text), f"app.js matches progress text ({pattern})"


def test_every_event_type_has_a_handler():
    text = source()
    start = text.index("const EVENT_HANDLERS = {")
    handlers = set(re.findall(r"^  (\w+)\(run", text[start:text.index("\n};", start)], re.M))
    opening = set(re.findall(r'"(\w+)"', text[text.index("const OPENING"):].split("\n", 1)[0]))
    missing = [t for t in TYPES if t not in handlers | opening | {"build"}]
    assert not missing, f"no handler in app.js for the event types {missing}"
