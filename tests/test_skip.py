"""common/skip.sh: a pipeline step whose marker files are all there is skipped; FORCE=1 runs it."""
from __future__ import annotations

import subprocess

from conftest import ROOT

SCRIPT = """
source "$ROOT/common/skip.sh"
step() { local name="$1"; shift; echo "ran $name"; "$@"; }
unless_done step "stats" "$OUT/a.csv" "$OUT/b.csv" -- touch "$OUT/ran"
"""


def run(tmp_path, force=None):
    env = {"ROOT": str(ROOT), "OUT": str(tmp_path), "PATH": "/usr/bin:/bin"}
    if force is not None:
        env["FORCE"] = force
    return subprocess.run(["bash", "-c", "set -euo pipefail" + SCRIPT], env=env, capture_output=True, text=True,
                          check=True).stdout


def test_runs_until_every_marker_is_there_then_skips_unless_forced(tmp_path):
    assert run(tmp_path) == "ran stats\n" and (tmp_path / "ran").exists()
    (tmp_path / "a.csv").write_text("x\n")
    (tmp_path / "b.csv").write_text("")                      # empty: a half-written report is not done
    assert run(tmp_path) == "ran stats\n"
    (tmp_path / "b.csv").write_text("y\n")
    (tmp_path / "ran").unlink()
    out = run(tmp_path)
    assert out.startswith("==> stats: done already") and "FORCE=1" in out and not (tmp_path / "ran").exists()
    assert run(tmp_path, force="1") == "ran stats\n" and (tmp_path / "ran").exists()
    assert run(tmp_path, force="0").startswith("==> stats: done already")
    assert run(tmp_path, force="TRUE") == "ran stats\n"                 # the one boolean rule (env_flag)
