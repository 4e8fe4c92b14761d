"""The release manifest, its tree hash and the content archive (deploy_master.manifest)."""

import hashlib
import os
import tarfile

import pytest
from deploy_master import DeployError, manifest
from saltext_deploy._modules import deploy as node_module


def _tree(base):
    os.makedirs(base / "public" / "css")
    os.makedirs(base / "empty")
    (base / "public" / "index.php").write_text("<?php echo 'hi'; ?>\n")
    (base / "public" / "css" / "a.css").write_text("same\n")
    (base / "public" / "b.css").write_text("same\n")  # same content: one blob
    (base / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(base / "run.sh", 0o750)
    os.symlink("public/index.php", base / "index.php")
    return base


def test_scan_lists_every_entry_sorted_with_modes_sizes_and_shas(tmp_path):
    doc, blobs = manifest.scan(str(_tree(tmp_path / "t")))
    same = hashlib.sha256(b"same\n").hexdigest()
    assert doc["format"] == 1
    assert [e[0] for e in doc["entries"]] == sorted(e[0] for e in doc["entries"])
    by_path = {e[0]: e for e in doc["entries"]}
    assert by_path["empty"] == ["empty", "d", 0o755, 0, ""]
    assert by_path["index.php"] == ["index.php", "l", 0o777, 0, "public/index.php"]
    assert by_path["public/b.css"] == ["public/b.css", "f", 0o644, 5, same]
    assert by_path["run.sh"][1:3] == ["f", 0o755]  # only the executable bit is kept
    assert set(blobs) == {e[4] for e in doc["entries"] if e[1] == "f"}
    assert len(blobs) == 3  # a.css and b.css share one
    assert doc["tree"] == manifest.tree_hash(doc["entries"])


def test_tree_hash_changes_with_any_field_and_not_with_mtimes(tmp_path):
    base = _tree(tmp_path / "t")
    first = manifest.scan(str(base))[0]["tree"]
    os.utime(base / "run.sh", (1, 1))
    assert manifest.scan(str(base))[0]["tree"] == first
    os.chmod(base / "run.sh", 0o644)
    assert manifest.scan(str(base))[0]["tree"] != first
    entries = manifest.scan(str(base))[0]["entries"]
    for i in range(5):
        changed = [list(e) for e in entries]
        changed[0][i] = "x" if isinstance(changed[0][i], str) else changed[0][i] + 1
        assert manifest.tree_hash(changed) != manifest.tree_hash(entries)


def test_the_node_module_computes_the_same_tree_hash(tmp_path):
    doc, _ = manifest.scan(str(_tree(tmp_path / "t")))
    assert node_module._tree_hash(doc["entries"]) == doc["tree"]
    odd = [["caf\udce9", "f", 0o644, 1, "0" * 64], ["ünï", "l", 0o777, 0, "a b"]]
    assert node_module._tree_hash(odd) == manifest.tree_hash(odd)


def test_a_file_is_executable_when_its_owner_may_execute_it_on_both_sides(tmp_path):
    # git's rule (the owner's bit): a file only its group or others may execute is not executable, on
    # the master's manifest as on a node that unpacks the same tree (_root_modes)
    base = tmp_path / "t"
    base.mkdir()
    modes = {"owner": 0o744, "group": 0o654, "other": 0o645, "none": 0o644, "all": 0o711}
    for name, mode in modes.items():
        (base / name).write_text(name)
        os.chmod(base / name, mode)
    by_path = {e[0]: e[2] for e in manifest.scan(str(base))[0]["entries"]}
    assert by_path == {"owner": 0o755, "group": 0o644, "other": 0o644, "none": 0o644, "all": 0o755}
    for mode in range(0o10000):
        assert manifest.file_mode(mode) == node_module._file_mode(mode), oct(mode)


def test_the_node_reads_the_same_content_archive_format():
    assert node_module.MANIFEST_MEMBER == manifest.MANIFEST
    assert node_module.BLOB_RE.pattern == manifest.BLOB_RE.pattern


def test_scan_refuses_a_fifo(tmp_path):
    base = tmp_path / "t"
    base.mkdir()
    os.mkfifo(base / "pipe")
    with pytest.raises(DeployError, match="pipe"):
        manifest.scan(str(base))


def test_archive_holds_the_manifest_then_each_content_once_by_sha(tmp_path):
    doc, blobs = manifest.scan(str(_tree(tmp_path / "t")))
    out = tmp_path / "a.tar.gz"
    manifest.write_archive(str(out), doc, blobs)
    with tarfile.open(out) as tar:
        names = tar.getnames()
        assert names[0] == "manifest.json"
        assert sorted(names[1:]) == sorted(blobs) and names[1:] == sorted(names[1:])
        for member in tar.getmembers()[1:]:
            assert manifest.BLOB_RE.fullmatch(member.name) and member.isfile()
            assert hashlib.sha256(tar.extractfile(member).read()).hexdigest() == member.name
    again = tmp_path / "b.tar.gz"
    manifest.write_archive(str(again), doc, blobs)
    assert again.read_bytes() == out.read_bytes()  # reproducible: two masters publish one checksum


def test_a_part_holds_the_manifest_and_only_the_wanted_contents(tmp_path):
    doc, blobs = manifest.scan(str(_tree(tmp_path / "t")))
    artifact = tmp_path / "a.tar.gz"
    manifest.write_archive(str(artifact), doc, blobs)
    want = sorted(blobs)[:1]
    part = tmp_path / "p.tar.gz"
    manifest.write_part(str(artifact), str(part), want)
    with tarfile.open(part) as tar:
        assert tar.getnames() == ["manifest.json"] + want
    with pytest.raises(DeployError, match="lacks"):
        manifest.write_part(str(artifact), str(tmp_path / "q.tar.gz"), ["f" * 64])


def test_plan_transfer_one_archive_for_the_union_of_what_the_nodes_lack():
    sizes = {"a" * 64: 1, "b" * 64: 2, "c" * 64: 3}
    a, b, c = sorted(sizes)

    def lacks(*ranges):
        return {"lacking": [list(r) for r in ranges], "total": 3}

    # two nodes lack one content each: a part with both
    assert manifest.plan_transfer({"n1": lacks((0, 1)), "n2": lacks((1, 2)), "n3": lacks()}, sizes) == ({a, b}, False)
    # a node with an empty store: the whole artifact
    assert manifest.plan_transfer({"n1": lacks((0, 1)), "n2": lacks((0, 3))}, sizes) == ({a, b, c}, True)
    assert manifest.plan_transfer({"n1": lacks((0, 1), (2, 3)), "n2": lacks((1, 2))}, sizes) == ({a, b, c}, True)
    # every node has the release: nothing is fetched (the artifact is named, never read)
    assert manifest.plan_transfer({"n1": {"prepared": True, "lacking": []}}, sizes) == (set(), True)
    # nodes with every content but not the release: a part with only the manifest
    assert manifest.plan_transfer({"n1": lacks()}, sizes) == (set(), False)
    # what a prepared node says it lacks does not count
    assert manifest.plan_transfer({"n1": {"prepared": True, "lacking": [[2, 3]]}, "n2": lacks((0, 1))},
                                  sizes) == ({a}, False)
    # an answer for another set of contents, or a range outside the release's, is refused
    for bad in ({"lacking": [[0, 1]], "total": 4}, lacks((2, 4)), lacks((1, 1)), lacks((-1, 1)),
                {"lacking": ["d" * 64], "total": 3}, {"total": 3}):
        with pytest.raises(DeployError, match="n1 answered for other contents"):
            manifest.plan_transfer({"n1": bad}, sizes)


def test_incompressible_contents_go_into_a_plain_tar(tmp_path):
    text = tmp_path / "a.php"
    text.write_text("<?php echo 'x'; ?>\n" * 10000)
    noise = tmp_path / "b.bin"
    noise.write_bytes(os.urandom(200_000))
    small = tmp_path / "c.bin"
    small.write_bytes(os.urandom(100))
    assert manifest.compressible([str(text)]) and manifest.compressible([str(small)])
    assert not manifest.compressible([str(noise)])
    doc, blobs = manifest.scan(str(tmp_path))
    manifest.write_archive(str(tmp_path / "x.tar"), doc, blobs, compress=False)
    with open(tmp_path / "x.tar", "rb") as fh:
        assert fh.read(2) != b"\x1f\x8b"
    with tarfile.open(tmp_path / "x.tar") as tar:
        assert tar.getnames()[0] == "manifest.json"
