"""SourceAdapter._realpath (folders resolved once) agrees with os.path.realpath on every kind of path."""

from __future__ import annotations

import os

from cxrflow.sources.folders import FolderSource


def test_cached_realpath_matches_os_realpath(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "images").mkdir(parents=True)
    outside.mkdir()
    (root / "images" / "a.png").write_bytes(b"x")
    (outside / "b.png").write_bytes(b"x")
    os.symlink(outside / "b.png", root / "images" / "out.png")  # a file link leaving the root
    os.symlink(root / "images" / "a.png", root / "images" / "in.png")  # a file link staying inside
    os.symlink(outside, root / "linked")  # a folder link leaving the root
    os.symlink(root / "images", root / "alias")  # a folder link staying inside
    os.symlink("missing.png", root / "images" / "dangling.png")
    adapter = FolderSource(str(root), ("covid",))
    paths = [
        str(root),
        str(root / "images"),
        *(str(root / "images" / n) for n in ("a.png", "out.png", "in.png", "dangling.png", "never.png")),
        str(root / "linked" / "b.png"),
        str(root / "alias" / "a.png"),
        str(root / "alias" / "out.png"),
    ]
    for _ in range(2):  # the second pass answers from the folder cache
        assert [adapter._realpath(p) for p in paths] == [os.path.realpath(p) for p in paths]
    assert adapter.resolve_inside_root("images/a.png") == str(root / "images" / "a.png")
    assert adapter.resolve_inside_root("alias/a.png") == str(root / "alias" / "a.png")
    assert adapter.resolve_inside_root("images/out.png") is None
    assert adapter.resolve_inside_root("linked/b.png") is None
