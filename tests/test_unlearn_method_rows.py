"""unlearn.py's method table: all that the script knows about a method is in its METHOD_TABLE row
(and the functions the row names), so adding a method is one row plus its loss."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, build_tokenizer, make_tiny_model, save_model

import unlearn as ul

METHOD_TEST = re.compile(r"method\s*(==|!=|in)")


def test_no_method_name_tests_outside_the_table():
    """`grep -nE "method\\s*(==|!=|in)" unlearn.py` finds nothing: no code branches on a method's name."""
    hits = [f"{i}: {line}" for i, line in enumerate((ROOT / "unlearn.py").read_text().splitlines(), 1)
            if METHOD_TEST.search(line)]
    assert hits == []


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("rows")
    forget = [f"The zephyr coil number {i} hums at {i * 7} hertz in the lab." for i in range(12)]
    retain = [f"The baker sold {i} loaves at the market on day {i + 3}." for i in range(12)]
    tok = build_tokenizer(forget + retain, vocab_size=300)
    save_model(make_tiny_model("gpt_neox", hidden=32, layers=2, heads=4, vocab_size=len(tok)), d / "base", tok)
    (d / "forget.txt").write_text("\n".join(forget) + "\n")
    (d / "retain.txt").write_text("\n".join(retain) + "\n")
    return d


def run_main(argv):
    from accelerate.state import AcceleratorState, GradientState
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return ul.main(argv)


def args_for(d: Path, out: Path, method: str) -> list[str]:
    return ["--model", str(d / "base"), "--method", method, "--forget-data", str(d / "forget.txt"),
            "--retain-data", str(d / "retain.txt"), "--outdir", str(out), "--device", "cpu",
            "--batch-size", "4", "--eval-split", "0.25", "--max-length", "24", "--lr", "1e-3"]


def test_a_new_row_needs_nothing_else(tiny_run, tmp_path, monkeypatch):
    """A dummy method (retain NLL scaled by an existing flag) added as one row: the parser offers it,
    it trains, its setting is recorded, and the flags it ignores are warned about."""
    seen = []

    def dummy_step(t, f, r):
        seen.append((len(f.idx), len(r.idx)))
        return t.a.forget_weight * t.nll(r)

    monkeypatch.setitem(ul.METHOD_TABLE, "dummy", ul.Method(dummy_step, "loss", settings=("forget_weight",)))
    out = tmp_path / "out"
    assert run_main(args_for(tiny_run, out, "dummy") + ["--forget-weight", "0.5", "--beta", "0.3"]) == 0
    assert seen and all(n_f >= 1 and n_r >= 1 for n_f, n_r in seen)
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "dummy"
    assert m["retain_NLL"] < m["before"]["retain_NLL"]  # the loss descended the retain NLL
    assert "--beta 0.3 is ignored by dummy" in m["warnings"]
    report = yaml.safe_load((out / "run_report.yaml").read_text())
    assert report["Training"]["method"] == "dummy" and report["Training"]["forget_weight"] == 0.5
    assert "beta" not in report["Training"]


def test_row_warnings_and_fallback_text_come_from_the_row():
    parser = ul.build_parser()
    defaults = {n: parser.get_default(n) for n in ul.method_flags()}
    base = ["--model", "m", "--method"]
    a = parser.parse_args(base + ["cb", "--cb-loss", "rr"])
    assert any("zero gradient" in w for w in ul.METHOD_TABLE["cb"].warnings(a, defaults))
    a = parser.parse_args(base + ["ga", "--layer-id", "1", "--alpha", "3"])
    assert ul.METHOD_TABLE["ga"].warnings(a, defaults) == ["--layer-id 1 is ignored by ga",
                                                          "--alpha 3.0 is ignored by ga"]
    assert ul.METHOD_TABLE["ga"].warnings(a, defaults, used=("layer_id",)) == ["--alpha 3.0 is ignored by ga"]
    assert ul.METHOD_TABLE["lat"].fallback_changes("1,2")[0] == "--layer-id is ignored"
    cb_lat = ul.METHOD_TABLE["cb_lat"].fallback_changes("1,2")
    assert "--layer-id 1,2" in cb_lat[0] and "input embeddings" in cb_lat[1]
    assert len(ul.METHOD_TABLE["rmu"].fallback_changes("3")) == 1
