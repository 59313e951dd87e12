"""Check what tox -e build made: one sdist, one wheel; the wheel holds the package
with its py.typed marker and no tests; the sdist holds the package and its metadata."""

from __future__ import annotations

import sys
import tarfile
import zipfile
from pathlib import Path


def main(dist: Path) -> None:
    wheels = list(dist.glob("*.whl"))
    sdists = list(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, f"expected one wheel and one sdist in {dist}: {sorted(dist.iterdir())}"
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "nous_twisted/py.typed" in names, "the wheel has no nous_twisted/py.typed"
    assert "nous_twisted/__init__.py" in names and "nous_twisted/__main__.py" in names
    tests = [n for n in names if n.startswith("tests/") or "/tests/" in n or n.split("/")[-1].startswith("test_")]
    assert not tests, f"the wheel holds tests: {tests[:5]}"
    top = {n.split("/")[0] for n in names}
    extra = {t for t in top if t != "nous_twisted" and not t.endswith(".dist-info")}
    assert not extra, f"the wheel holds more than the package: {sorted(extra)}"
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "nous-twisted = nous_twisted.cli:main" in zipfile.ZipFile(wheels[0]).read(entry).decode()
    members = tarfile.open(sdists[0]).getnames()
    root = members[0].split("/")[0]
    for needed in ("PKG-INFO", "setup.cfg", "nous_twisted/py.typed", "nous_twisted/__init__.py", "README.md"):
        assert f"{root}/{needed}" in members, f"the sdist lacks {needed}"
    print(f"check_dist: {wheels[0].name} ({len(names)} files, py.typed, no tests), {sdists[0].name} ({len(members)} members)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
