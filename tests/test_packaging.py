"""The wheel ships every package and data file the code imports. An editable install hides a
missing package (the source tree is on the path); a real install on a GPU machine found that
``xlog.importers`` was not listed and the ``xlog`` command failed to import."""
from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _setuptools() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def test_every_package_directory_is_listed():
    listed = set(_setuptools()["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts)
               for top in ("xlog", "xsearch") for p in (REPO / top).rglob("__init__.py")}
    assert on_disk - listed == set(), f"packages missing from pyproject.toml: {sorted(on_disk - listed)}"


def test_every_data_file_is_covered_by_package_data():
    cfg = _setuptools()
    dirs = {pkg: REPO / cfg.get("package-dir", {}).get(pkg, pkg.replace(".", "/")) for pkg in cfg["packages"]}
    data = cfg.get("package-data", {})
    missing = []
    for pkg, d in dirs.items():
        for f in d.iterdir():
            if f.is_file() and f.suffix not in (".py", ".pyc") and not f.name.startswith("."):
                if not any(fnmatch.fnmatch(f.name, pat) for pat in data.get(pkg, [])):
                    missing.append(f"{pkg}: {f.name}")
    assert not missing, f"data files the wheel would leave out: {missing}"
    assert (dirs["xlog.schema_files"] / "record_v1.json").is_file()
