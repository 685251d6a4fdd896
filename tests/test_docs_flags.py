"""docs/tools.md cannot go stale: its flag tables are generated from the tools' parsers
(common/gen_docs.py), and every long option of every top-level tool appears in it."""
from __future__ import annotations

import importlib.util
import sys

from conftest import ROOT

spec = importlib.util.spec_from_file_location("gen_docs_under_test", ROOT / "common" / "gen_docs.py")
gen = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = gen
spec.loader.exec_module(gen)


def test_flag_tables_are_generated_from_the_parsers_and_cover_every_long_option():
    doc = gen.DOC.read_text(encoding="utf-8")
    parsers = {path.name: gen.parser_of(path) for path in gen.tools()}
    assert {"unlearn.py", "evaluate_unlearning.py", "tamper_attack.py", "check_models.py"} <= set(parsers)
    stale = [name for name, parser in parsers.items() if gen.render(doc, {name: gen.table(parser)}) != doc]
    assert not stale, f"docs/tools.md is stale for {stale}; regenerate it with: {gen.COMMAND}"
    missing = sorted(f"{name} {opt}" for name, parser in parsers.items() for action in parser._actions
                     for opt in action.option_strings if opt.startswith("--") and opt != "--help"
                     and f"`{opt}`" not in doc)
    assert not missing, f"long options missing from docs/tools.md: {missing}; run {gen.COMMAND}"


def test_a_new_flag_makes_the_docs_stale():
    import argparse

    parser = gen.parser_of(ROOT / "plot_tamper.py")
    doc = gen.DOC.read_text(encoding="utf-8")
    assert gen.render(doc, {"plot_tamper.py": gen.table(parser)}) == doc
    parser.add_argument("--brand-new-flag", type=int, default=3, help="a flag added to the tool")
    new = gen.render(doc, {"plot_tamper.py": gen.table(parser)})
    assert new != doc and "| `--brand-new-flag` | `3` | a flag added to the tool |" in new
    # a tool the docs have never seen gets a table in the generated section
    fresh = argparse.ArgumentParser()
    fresh.add_argument("--x", required=True, help="the x")
    assert "### `new_tool.py`" in gen.render(doc, {"new_tool.py": gen.table(fresh)})
