"""Every package of the tree is in the distribution: a wheel built from pyproject.toml must carry
the whole node, not only what an editable install happens to find."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_directory_is_listed_in_pyproject():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    dirs = {"meter." + ".".join(p.parent.relative_to(ROOT / "meter").parts)
            for p in (ROOT / "meter").rglob("__init__.py") if p.parent != ROOT / "meter"}
    missing = sorted(dirs - listed)
    assert not missing, f"pyproject.toml [tool.setuptools] packages lacks {missing}"
    for package, folder in setuptools["package-dir"].items():
        assert (ROOT / folder).is_dir(), f"package-dir {package} -> {folder}: no such folder"
