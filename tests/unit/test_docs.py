"""The documentation holds together: every relative link of README.md, docs/*.md and bench/README.md
leads to a file of the repository (and its ``#anchor`` to a heading there), the README stays a front
page, and the text speaks of the project in its own words."""

import glob
import os
import re

import pytest

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = sorted([os.path.join(TOP, "README.md"), os.path.join(TOP, "bench", "README.md"),
               *glob.glob(os.path.join(TOP, "docs", "*.md"))])
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
CODE = re.compile(r"`[^`\n]*`")


def _name(path):
    return os.path.relpath(path, TOP)


def _prose(path):
    with open(path, encoding="utf-8") as fh:
        return CODE.sub("", FENCE.sub("", fh.read()))


def slug(heading):
    """The anchor a heading gets (GitHub's rule): lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path):
    with open(path, encoding="utf-8") as fh:
        text = FENCE.sub("", fh.read())
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def links():
    for path in DOCS:
        for match in LINK.finditer(_prose(path)):
            target = match.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            yield path, target


def test_the_documents_are_found():
    names = {_name(p) for p in DOCS}
    assert {"README.md", "bench/README.md", "docs/runner.md", "docs/troubleshooting.md"} <= names
    assert len(list(links())) >= 20


@pytest.mark.parametrize("path,target", list(links()), ids=lambda v: v if isinstance(v, str) else None)
def test_every_relative_link_resolves(path, target):
    file_part, _, anchor = target.partition("#")
    linked = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
    assert os.path.exists(linked), f"{_name(path)}: link to {target!r}: no such file"
    assert os.path.commonpath([TOP, linked]) == TOP, f"{_name(path)}: link to {target!r} leaves the repository"
    if anchor:
        assert linked.endswith(".md"), f"{_name(path)}: {target!r}: an anchor into a file that is not markdown"
        assert anchor in anchors(linked), f"{_name(path)}: link to {target!r}: no such heading in {_name(linked)}"


@pytest.mark.parametrize("path", DOCS, ids=_name)
def test_the_project_speaks_in_its_own_words(path):
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    assert not re.search(r"\b(issue|stop)\s+#?\d+", text, re.I), f"{_name(path)}: a numbered issue or stop"
    assert "../shared" not in text and "/work/" not in text, f"{_name(path)}: a path outside the repository"


def test_the_readme_is_a_front_page():
    size = os.path.getsize(os.path.join(TOP, "README.md"))
    assert size <= 16 * 1024, f"README.md is {size} bytes: move the detail into docs/"
    assert slug("What happens when…") == "what-happens-when"
    assert slug("The runner: `salt-run deploy.*`") == "the-runner-salt-run-deploy"
