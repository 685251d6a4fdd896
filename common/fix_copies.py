# /// script
# requires-python = ">=3.10"
# dependencies = []
# ///
"""Rewrite every tool's shared-helper block from the one source, common/helpers.py.

Each tool carries the helpers it needs between a start line (``# --- shared helpers ...``) and an
end line (``# --- end shared helpers ---``). A tool's helpers are the ones its block defines, the
ones named on ``# take: name, name`` lines inside the block, the ones it defines loose at the top
level under a helper's name (a ``# Copied from ...`` copy; it is moved into the block), and every
helper those use. They are written in the canonical order (the order of common/helpers.py), each
exactly as in the source; a missing standard-library import a helper needs is added above the
block.

    uv run --script common/fix_copies.py            # rewrite the copies
    uv run --script common/fix_copies.py --check    # list the copies that differ; exit 1 if any
    uv run --script common/fix_copies.py TOOL.py    # only these files

Exit status: 0 done (or, with --check, every copy equal), 1 something differs or a block holds a
name that is not a helper, 2 usage.
"""
from __future__ import annotations

import argparse
import ast
import builtins
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "common" / "helpers.py"
COMMAND = "uv run --script common/fix_copies.py"
START_PREFIX = "# --- shared helpers"
END = "# --- end shared helpers ---"
START = f"# --- shared helpers: copied from common/helpers.py; edit them there, then run `{COMMAND}` ---"
HEADER = ["# (the helpers named here, plus the ones they use, in the canonical order; to take another one add a",
          "# line `# take: NAME` here and run the command; the helpers use this script's imports)"]
TAKE_RE = re.compile(r"^#\s*take:\s*(.*)$")


def node_name(node: ast.stmt) -> str | None:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id
    return None


def node_start(node: ast.stmt, lines: list[str], stop_at_comments: bool = False, floor: int = 0) -> int:
    """0-based first line of a definition: its decorators and the comment lines right above it
    (not above line ``floor``)."""
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1
    while not stop_at_comments and first > floor and lines[first - 1].startswith("#") \
            and not lines[first - 1].startswith((START_PREFIX, END)) and not TAKE_RE.match(lines[first - 1]):
        first -= 1
    return first


def free_names(node: ast.AST) -> set[str]:
    """Global names a definition reads: loaded names it neither binds nor takes as parameters."""
    bound, loaded = set(), set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            (loaded if isinstance(sub.ctx, ast.Load) else bound).add(sub.id)
        elif isinstance(sub, ast.arg):
            bound.add(sub.arg)
        elif isinstance(sub, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in sub.names}
        elif isinstance(sub, ast.ExceptHandler) and sub.name:
            bound.add(sub.name)
        elif isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and sub is not node:
            bound.add(sub.name)
    return loaded - bound - set(dir(builtins))


def module_names(tree: ast.Module) -> set[str]:
    """Names bound at the top level of a script (imports, also guarded ones; defs; assignments)."""
    names = set()
    for node in tree.body:
        name = node_name(node)
        if name:
            names.add(name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
        for sub in ast.walk(node) if isinstance(node, (ast.If, ast.Try, ast.Import, ast.ImportFrom)) else ():
            if isinstance(sub, (ast.Import, ast.ImportFrom)):
                names |= {(a.asname or a.name).split(".")[0] for a in sub.names}
    return names


class Source:
    """The helpers of common/helpers.py: text, canonical order, what each uses."""

    def __init__(self, path: Path = SOURCE):
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        tree = ast.parse(text)
        self.order: list[str] = []
        self.text: dict[str, str] = {}
        self.nodes: dict[str, ast.stmt] = {}
        self.imports: dict[str, str] = {}  # name bound by an import -> the import line
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                if not (isinstance(node, ast.ImportFrom) and node.module == "__future__"):
                    for a in node.names:
                        self.imports[(a.asname or a.name).split(".")[0]] = ast.get_source_segment(text, node)
                continue
            name = node_name(node)
            if name is None:
                continue  # the module docstring
            self.order.append(name)
            self.nodes[name] = node
            self.text[name] = "\n".join(lines[node_start(node, lines):node.end_lineno])
        self.uses = {n: free_names(node) & set(self.order) for n, node in self.nodes.items()}
        self.needs = {n: free_names(node) - set(self.order) for n, node in self.nodes.items()}

    def closure(self, names: set[str]) -> list[str]:
        todo, seen = list(names), set()
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo += self.uses[n]
        return [n for n in self.order if n in seen]

    def block(self, names: list[str]) -> str:
        return "\n".join([START, *HEADER, "\n\n\n".join(self.text[n] for n in names), END])


def targets() -> list[Path]:
    found = sorted(ROOT.glob("*.py")) + sorted((ROOT / "demo").glob("*.py")) + sorted((ROOT / "bench").glob("*.py"))
    return [p for p in found if any(line.startswith(START_PREFIX) for line in p.read_text(encoding="utf-8").splitlines())]


def rewrite(path: Path, src: Source) -> tuple[str, list[str], list[str]]:
    """(the script's new text, notes on what changed, errors that stop the rewrite)."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(START_PREFIX)]
    ends = [i for i, line in enumerate(lines) if line == END]
    if len(starts) != 1 or len(ends) != 1 or starts[0] > ends[0]:
        return text, [], [f"{path.name}: one start line ({START_PREFIX} ...) and then one end line ({END}) expected"]
    start, end = starts[0], ends[0]
    tree = ast.parse(text)
    wanted, notes, errors = set(), [], []
    for i in range(start + 1, end):
        m = TAKE_RE.match(lines[i])
        if m:
            wanted |= {n.strip() for n in m.group(1).replace(",", " ").split() if n.strip()}
    loose = []  # (first line, last line) of top-level helper definitions outside the block
    for node in tree.body:
        name = node_name(node)
        if name is None:
            continue
        inside = start < node.lineno - 1 < end
        if inside:
            wanted.add(name)
        elif name in src.text:
            wanted.add(name)
            first = node_start(node, lines, stop_at_comments=True)
            while first > 0 and lines[first - 1].startswith("# Copied from"):
                first -= 1
            loose.append((first, node.end_lineno - 1))
            notes.append(f"{path.name}: moved its own {name} (line {node.lineno}) into the block")
    unknown = sorted(wanted - set(src.text))
    if unknown:
        errors.append(f"{path.name}: {', '.join(unknown)} in the shared block {'is' if len(unknown) == 1 else 'are'} "
                      f"not in common/helpers.py (add {'it' if len(unknown) == 1 else 'them'} there, or move "
                      f"{'it' if len(unknown) == 1 else 'them'} out of the block)")
        return text, notes, errors
    names = src.closure(wanted)
    # the script's new lines: loose copies removed (with the blank lines after them), the block replaced
    drop = set()
    for first, last in loose:
        drop |= set(range(first, last + 1))
        k = last + 1
        while k < len(lines) and not lines[k].strip() and k not in range(start, end + 1):
            drop.add(k)
            k += 1
    before = [line for i, line in enumerate(lines[:start]) if i not in drop]
    after = [line for i, line in enumerate(lines[end + 1:], start=end + 1) if i not in drop]
    new_lines = before + src.block(names).split("\n") + after
    # the standard-library imports the copied helpers need and the script lacks
    have = module_names(ast.parse("\n".join(before + after)))
    missing = sorted({n for h in names for n in src.needs[h]} - have - set(names))
    add = sorted({src.imports[n] for n in missing if n in src.imports})
    lacking = [n for n in missing if n not in src.imports]
    if lacking:
        errors.append(f"{path.name}: the helpers use {', '.join(lacking)}, which neither the script nor "
                      "common/helpers.py imports")
    if add:
        notes.append(f"{path.name}: added {'; '.join(add)}")
        for line in add:
            new_lines = insert_import(new_lines, line, len(before))
    new = "\n".join(new_lines) + ("\n" if text.endswith("\n") else "")
    if new != text:
        header_end = start + 1
        while header_end < end and lines[header_end].startswith("#") and not TAKE_RE.match(lines[header_end]):
            header_end += 1
        old_block = {node_name(n): "\n".join(lines[node_start(n, lines, floor=header_end):n.end_lineno]) for n in tree.body
                     if node_name(n) and start < n.lineno - 1 < end}
        differ = [n for n in names if n in old_block and old_block[n] != src.text[n]]
        added = [n for n in names if n not in old_block]
        removed = [n for n in old_block if n not in names]
        for what, items in (("differs from the source", differ), ("is added", added), ("is removed", removed)):
            if items:
                notes.append(f"{path.name}: {', '.join(items)} {what}")
        if not (differ or added or removed or loose or add):
            notes.append(f"{path.name}: the block's layout or markers differ from the source")
    return new, notes, errors


def insert_import(lines: list[str], line: str, limit: int) -> list[str]:
    """``lines`` with the import ``line`` put in alphabetical place in the script's first group of
    plain ``import``/``from`` lines (before line ``limit``), or just above line ``limit``."""
    group = []
    for i, text in enumerate(lines[:limit]):
        if text.startswith(("import ", "from ")) and not text.startswith("from __future__"):
            if group and i != group[-1] + 1:
                break
            group.append(i)
    if not group:
        return lines[:limit] + [line, ""] + lines[limit:]
    at = next((i for i in group if lines[i] > line), group[-1] + 1)
    return lines[:at] + [line] + lines[at:]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", help="the scripts to rewrite (default: every script with a shared block)")
    p.add_argument("--check", action="store_true", help="change nothing; list the copies that differ, exit 1 if any")
    args = p.parse_args(argv)
    src = Source()
    files = [Path(f).resolve() for f in args.files] or targets()
    changed, failed = [], False
    for path in files:
        new, notes, errors = rewrite(path, src)
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
        failed |= bool(errors)
        if errors or new == path.read_text(encoding="utf-8"):
            continue
        changed.append(path)
        for n in notes:
            print(n, file=sys.stderr)
        if not args.check:
            path.write_text(new, encoding="utf-8")
    if args.check and changed:
        print(f"{len(changed)} script(s) differ from common/helpers.py; fix them with: {COMMAND}", file=sys.stderr)
        return 1
    if changed:
        print(f"rewrote the shared block of {len(changed)} script(s)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
