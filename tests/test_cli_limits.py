"""Limits and data that cannot give a search are refused up front with a clear message.

`xsearch run --budget 0` used to run a 300 s search (`budget_s or 300.0`), and a CSV with only a
header said "no 'train' split among []"."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from xsearch.cli import main
from xsearch.data import DataError, load_task
from xsearch.runner import run_search

REPO = Path(__file__).resolve().parent.parent
SMS = REPO / "examples" / "data" / "sms_spam_600.parquet"
TINY = REPO / "tests" / "data" / "tiny_space.yaml"


def _run(tmp_path, *args):
    home, out = tmp_path / "home", tmp_path / "out"
    res = CliRunner().invoke(main, ["run", "--data", str(SMS), "--space", str(TINY), "--home", str(home),
                                    "--out", str(out), "--plain", "--no-energy", *args])
    return res, home, out


@pytest.mark.parametrize("args, option", [
    (["--budget", "0"], "--budget"),
    (["--budget", "0s"], "--budget"),
    (["--budget", "0m"], "--budget"),
    (["--budget", "-5m"], "--budget"),
    (["--energy-budget", "0"], "--energy-budget"),
    (["--energy-budget", "-0.5"], "--energy-budget"),
    (["--energy-budget", "nan"], "--energy-budget"),
    (["--max-evals", "0"], "--max-evals"),
    (["--max-candidate-time", "0"], "--max-candidate-time"),
    (["--max-candidate-time", "-1s"], "--max-candidate-time"),
    (["--memory-limit", "0"], "--memory-limit"),
])
def test_non_positive_limits_are_refused_before_anything_runs(tmp_path, args, option):
    res, home, out = _run(tmp_path, *args)
    assert res.exit_code == 2, res.output  # click's usage error
    assert f"Invalid value for '{option}'" in res.output, res.output
    assert "Traceback" not in res.output
    assert not (home / "searches").exists() and not out.exists()  # no search was started


def test_budget_error_names_the_rule(tmp_path):
    res, _, _ = _run(tmp_path, "--budget", "0")
    assert "must be more than 0" in res.output, res.output


def test_the_real_command_refuses_a_zero_budget(tmp_path):
    env = dict(os.environ, XLOG_HOME=str(tmp_path / "home"))
    p = subprocess.run([sys.executable, "-m", "xsearch.cli", "run", "--budget", "0", "--data", str(SMS),
                        "--space", str(TINY), "--out", str(tmp_path / "out"), "--plain"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "Invalid value for '--budget'" in p.stderr and "must be more than 0" in p.stderr, p.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kw", [dict(budget_s=0), dict(budget_s=-1.0), dict(budget_s=float("nan")),
                                dict(energy_budget_kwh=0.0), dict(max_evals=0), dict(max_candidate_s=0),
                                dict(memory_limit_gb=-2), dict(population=0), dict(max_train=0)])
def test_run_search_refuses_non_positive_limits(tmp_path, kw):
    with pytest.raises(ValueError, match="more than 0"):
        run_search(data=str(SMS), space_path=str(TINY), store_root=str(tmp_path / "home"),
                   out_dir=str(tmp_path / "out"), **kw)
    assert not (tmp_path / "home").exists() and not (tmp_path / "out").exists()


def test_resume_with_zero_budget_is_refused_not_replaced_by_the_recorded_one(tmp_path):
    # The recorded budget used to stand in for a falsy 0 given to the resume.
    with pytest.raises(ValueError, match="budget_s must be more than 0"):
        run_search(resume="xs-does-not-matter", budget_s=0, store_root=str(tmp_path / "home"))


# ---- data with no rows --------------------------------------------------------------------------
def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("header", ["text,label\n", "text,label,split\n", "text,label,split"])
def test_header_only_csv_says_it_has_no_rows(tmp_path, header):
    f = _write(tmp_path / "only_header.csv", header)
    with pytest.raises(DataError) as info:
        load_task(f)
    msg = str(info.value)
    assert "only_header.csv has no rows" in msg and "'text'" in msg, msg
    assert "split among" not in msg


def test_empty_file_says_it_is_empty(tmp_path):
    for name in ("empty.csv", "empty.jsonl", "empty.parquet"):
        with pytest.raises(DataError, match=rf"{name} is empty \(0 bytes\)"):
            load_task(_write(tmp_path / name, ""))


def test_header_only_parquet_says_it_has_no_rows(tmp_path):
    f = tmp_path / "none.parquet"
    pd.DataFrame({"text": pd.Series([], dtype=str), "label": pd.Series([], dtype=str)}).to_parquet(f)
    with pytest.raises(DataError, match="none.parquet has no rows"):
        load_task(f)


def test_cli_reports_a_header_only_csv_without_a_traceback(tmp_path):
    f = _write(tmp_path / "only_header.csv", "text,label,split\n")
    res = CliRunner().invoke(main, ["run", "--data", str(f), "--space", str(TINY), "--home", str(tmp_path / "home"),
                                    "--out", str(tmp_path / "out"), "--plain", "--no-energy", "--budget", "30s"])
    assert res.exit_code == 1, res.output
    assert "only_header.csv has no rows" in res.output and "Traceback" not in res.output, res.output
