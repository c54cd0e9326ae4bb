"""The README's field reference is generated from the schema, so it cannot drift."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_readme_fields_are_generated_from_schema():
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_readme_fields.py"), "--check"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_quickstart_has_exactly_two_setup_commands():
    text = (REPO / "README.md").read_text()
    block = text.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    cmds = [line for line in block.splitlines() if line.strip()]
    assert [c.split("#")[0].strip() for c in cmds] == ["bash scripts/quickstart.sh", "bash .ci/run"]
    ci = (REPO / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci
