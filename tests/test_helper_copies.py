"""The shared helpers are copies by design (every tool is a self-contained script): this holds them equal.

Every tool that needs them carries a block between the two marker lines below, right after its
imports. For each helper (by name) every copy must be the same code (``ast.dump``: comments and
blank lines aside), the block may hold only the helpers listed here, in this order, no helper may
be defined again outside the block, and every name a copy uses must exist in its script. Then each
helper's behaviour is tested once, on one copy.
"""
from __future__ import annotations

import ast
import builtins
import errno
import os
import stat
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
START = "# --- shared helpers (copied; tests/test_helper_copies.py keeps the copies identical) ---"
END = "# --- end shared helpers ---"
# the canonical order; a script copies the ones it needs
HELPERS = ["first_line", "normalise", "read_numbered_lines", "read_lines", "drop_duplicates", "pick_device",
           "pick_dtype", "hub_reachable", "HUB_ID_RE", "MODEL_FILES", "SKIP_FILES", "resolve_model_dir",
           "_umask", "check_outdir", "write_atomically", "publish_folder", "label_log_axis"]
# names the helpers had before they were unified: none may come back as a drifting copy
OLD_NAMES = ["resolve_device", "resolve_dtype", "normalise_text", "_hub_reachable", "_is_offline", "write_csv_atomic",
             "write_csvs_atomically", "publish"]


def scripts() -> list[Path]:
    found = sorted(ROOT.glob("*.py")) + sorted((ROOT / "demo").glob("*.py")) + sorted((ROOT / "bench").glob("*.py"))
    return [p for p in found if START in p.read_text(encoding="utf-8")]


def node_name(node: ast.stmt) -> str | None:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id
    return None


def split_script(path: Path) -> tuple[dict[str, ast.stmt], ast.Module, ast.Module]:
    """(helpers in the block by name, the block's module, the whole script's module)."""
    text = path.read_text(encoding="utf-8")
    assert text.count(START) == 1 and text.count(END) == 1, f"{path.name}: one start and one end marker expected"
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line == START)
    end = next(i for i, line in enumerate(lines) if line == END)
    assert start < end, f"{path.name}: the end marker comes before the start marker"
    block = ast.parse("\n".join(lines[start + 1:end]))
    helpers = {}
    for node in block.body:
        name = node_name(node)
        assert name is not None, f"{path.name}: the shared block holds something that is not a named helper"
        helpers[name] = node
    return helpers, block, ast.parse(text)


def module_names(tree: ast.Module) -> set[str]:
    """Names bound at the top level of a script (imports, defs, classes, assignments)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and node in tree.body:
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.If, ast.Try)):          # guarded imports
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    names |= {(a.asname or a.name).split(".")[0] for a in sub.names}
    return names


def free_names(node: ast.stmt) -> set[str]:
    """Global names a helper reads: loaded names that it neither binds nor takes as parameters."""
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
    return loaded - bound - set(dir(builtins))


def test_copies_are_identical():
    found = scripts()
    assert len(found) >= 8, f"the shared block is missing from some tools (found in {[p.name for p in found]})"
    first: dict[str, tuple[str, str]] = {}
    problems = []
    for path in found:
        helpers, _, _ = split_script(path)
        for name, node in helpers.items():
            dump = ast.dump(node)
            if name not in first:
                first[name] = (path.name, dump)
            elif first[name][1] != dump:
                problems.append(f"{name}: the copy in {path.relative_to(ROOT)} differs from the one in {first[name][0]}")
    assert not problems, "\n".join(problems)
    assert set(first) == set(HELPERS), f"helpers never copied or unknown: {set(first) ^ set(HELPERS)}"


@pytest.mark.parametrize("path", scripts(), ids=lambda p: str(p.relative_to(ROOT)))
def test_block_is_known_ordered_complete_and_alone(path):
    helpers, block, tree = split_script(path)
    unknown = [n for n in helpers if n not in HELPERS]
    assert not unknown, f"{path.name}: {unknown} in the shared block are not shared helpers (add them to HELPERS)"
    order = [n for n in HELPERS if n in helpers]
    assert list(helpers) == order, f"{path.name}: helpers out of the canonical order {order}"
    # the block comes right after the imports: no function or class of the script before it
    block_names = set(helpers)
    before = [node_name(n) for n in tree.body if node_name(n) in block_names]
    assert before, path.name
    first_helper_line = min(n.lineno for n in tree.body if node_name(n) in block_names)
    early = [node_name(n) for n in tree.body if n.lineno < first_helper_line
             and isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert not early, f"{path.name}: {early} defined before the shared block (it goes right after the imports)"
    # a helper defined twice (a drifting copy outside the block), or under its old name
    defs = [node_name(n) for n in tree.body if isinstance(n, (ast.FunctionDef, ast.Assign))]
    twice = sorted({n for n in defs if n in HELPERS and defs.count(n) > 1})
    assert not twice, f"{path.name}: {twice} defined again outside the shared block"
    stale = sorted(set(defs) & set(OLD_NAMES))
    assert not stale, f"{path.name}: {stale} are old copies of shared helpers; use the block's helpers"
    # every name a copy reads is defined in the script (imports, UsageError, other helpers)
    have = module_names(tree)
    for name, node in helpers.items():
        missing = free_names(node) - have
        assert not missing, f"{path.name}: helper {name} uses {sorted(missing)}, which the script does not define"


def test_no_script_splits_messages_unsafely():
    """``str(e).splitlines()[0]`` raises IndexError on an empty message: first_line is the one way."""
    for path in sorted(ROOT.glob("*.py")) + sorted((ROOT / "demo").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        helpers_block = text[text.find(START):text.find(END)] if START in text else ""
        rest = text.replace(helpers_block, "")
        assert "splitlines()[0]" not in rest, f"{path.name} splits an error message with splitlines()[0]; use first_line"


# ---------------------------------------------------------------------------------------------
# Behaviour, once per helper (the copies are identical, so one copy stands for all)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ul():
    import unlearn
    return unlearn


@pytest.fixture(scope="module")
def cd():
    import create_datasets
    return create_datasets


@pytest.fixture(scope="module")
def bd():
    sys.path.insert(0, str(ROOT / "demo"))
    import build_demo
    return build_demo


@pytest.fixture
def umask():
    """Set a umask for one test and restore the old one."""
    old = os.umask(0o022)
    os.umask(old)

    def set_(mask):
        os.umask(mask)
    yield set_
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_first_line_never_raises(ul):
    assert ul.first_line(ValueError("")) == "ValueError"
    assert ul.first_line(OSError()) == "OSError"
    assert ul.first_line(RuntimeError("\n   \n")) == "RuntimeError"
    assert ul.first_line(RuntimeError("\n  disk full  \nsecond line")) == "disk full"
    assert ul.first_line(KeyError("k")) == "'k'"


def test_normalise_and_drop_duplicates(ul):
    assert ul.normalise("  The\u00a0Cell\t\tCYCLE ") == "the cell cycle"     # NBSP -> space (NFKC)
    assert ul.normalise("ﬁne Straße") == "fine strasse"                      # ligature (NFKC), ß (casefold)
    kept, dropped = ul.drop_duplicates(["A b", "c", "a  B", "C", "d"])
    assert kept == ["A b", "c", "d"] and dropped == 2


def test_read_numbered_lines(ul, tmp_path):
    f = tmp_path / "x.txt"
    f.write_bytes("\ufeff first \r\n\r\n  second\n\t\nthird".encode("utf-8"))
    assert ul.read_numbered_lines(f) == [(1, "first"), (3, "second"), (5, "third")]
    assert ul.read_lines(f) == ["first", "second", "third"]                  # BOM dropped, not kept in "first"
    (tmp_path / "dup.txt").write_text("a\na\n", encoding="utf-8")
    assert ul.read_lines(tmp_path / "dup.txt") == ["a", "a"]                  # reading never dedupes
    cases = {"missing.txt": (None, "does not exist"), "empty.txt": (b"", "is empty"),
             "blank.txt": (b"\n  \n", "only blank lines"), "latin1.txt": ("café".encode("latin-1"), "not UTF-8"),
             "folder": ("dir", "is not a file")}
    for name, (content, words) in cases.items():
        p = tmp_path / name
        if content == "dir":
            p.mkdir()
        elif content is not None:
            p.write_bytes(content)
        with pytest.raises(ul.UsageError, match=words) as info:
            ul.read_numbered_lines(p)
        assert "\n" not in str(info.value)


def test_pick_device_and_dtype(ul):
    import torch
    assert ul.pick_dtype("auto", "cuda") == "bf16" and ul.pick_dtype("auto", "mps") == "fp16"
    assert ul.pick_dtype("auto", "cpu") == "fp32" and ul.pick_dtype("fp16", "cpu") == "fp16"
    assert ul.pick_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        assert ul.pick_device("auto") in ("cpu", "mps")
        with pytest.raises(ul.UsageError, match="CUDA is not available"):
            ul.pick_device("cuda")


def test_hub_reachable_honours_offline(ul, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ul.hub_reachable.cache_clear()
    try:
        assert ul.hub_reachable() is False
    finally:
        ul.hub_reachable.cache_clear()


def test_resolve_model_dir(ul, tmp_path, monkeypatch):
    assert ul.resolve_model_dir(str(tmp_path)) == tmp_path
    (tmp_path / "f").write_text("x")
    with pytest.raises(ul.UsageError, match="is a file"):
        ul.resolve_model_dir(str(tmp_path / "f"))
    with pytest.raises(ul.UsageError, match="does not exist"):
        ul.resolve_model_dir("./no/such/model")
    # a hub ID that is not cached, with the hub unreachable: one sentence, no retries
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ul.hub_reachable.cache_clear()
    try:
        with pytest.raises(ul.UsageError, match=r"offline\?.*not in the local cache") as info:
            ul.resolve_model_dir("nobody-h12b/no-such-model")
        assert "\n" not in str(info.value)
    finally:
        ul.hub_reachable.cache_clear()


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750),
                                                       (0o002, 0o664, 0o775)])
def test_write_atomically_modes_follow_umask(cd, tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    target = tmp_path / "new" / "a.txt"
    cd.write_atomically({target: "héllo\n", tmp_path / "b.bin": b"\x00\x01",
                         tmp_path / "c.csv": lambda p: p.write_text("x,y\n")})
    assert target.read_bytes() == "héllo\n".encode() and (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "c.csv").read_text() == "x,y\n"
    assert mode(target) == mode(tmp_path / "b.bin") == mode(tmp_path / "c.csv") == file_mode
    assert mode(tmp_path / "new") == dir_mode
    assert sorted(p.name for p in tmp_path.rglob(".*")) == []                 # no temporary file left


@pytest.mark.parametrize("fault", ["writer_error", "enospc", "ctrl_c"])
def test_write_atomically_fault_leaves_old_files_and_no_temp(cd, tmp_path, monkeypatch, fault):
    old_a, old_b = tmp_path / "a.txt", tmp_path / "b.txt"
    old_a.write_text("old a\n")
    old_b.write_text("old b\n")

    def bad_writer(p):
        p.write_text("half")
        raise {"writer_error": ValueError("boom"), "ctrl_c": KeyboardInterrupt()}[fault]

    if fault == "enospc":
        real_fdopen = os.fdopen

        class Full:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def write(self, data):
                raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: Full(real_fdopen(fd, *a, **k)))
        files = {old_a: "new a\n", old_b: "new b\n"}
        expected = cd.UsageError                                              # "cannot write ...: No space left"
    else:
        files = {old_a: "new a\n", old_b: bad_writer}
        expected = KeyboardInterrupt if fault == "ctrl_c" else ValueError
    with pytest.raises(expected):
        cd.write_atomically(files)
    assert old_a.read_text() == "old a\n" and old_b.read_text() == "old b\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_publish_folder_modes_and_replace(bd, tmp_path, umask):
    umask(0o022)
    final = tmp_path / "model"
    final.mkdir()
    (final / "old.txt").write_text("old")
    tmp = Path(tempfile.mkdtemp(dir=tmp_path, prefix=".tmp-"))
    (tmp / "sub").mkdir(mode=0o700)
    (tmp / "sub" / "w.safetensors").write_bytes(b"w")
    os.chmod(tmp / "sub" / "w.safetensors", 0o600)
    (tmp / "config.json").write_text("{}")
    assert mode(tmp) == 0o700
    bd.publish_folder(tmp, final)
    assert not tmp.exists() and not (final / "old.txt").exists() and (final / "config.json").read_text() == "{}"
    assert mode(final) == mode(final / "sub") == 0o755
    assert mode(final / "config.json") == mode(final / "sub" / "w.safetensors") == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]           # the old folder is gone too


def test_publish_folder_puts_the_old_folder_back_when_the_rename_fails(bd, tmp_path, monkeypatch):
    final = tmp_path / "model"
    final.mkdir()
    (final / "old.txt").write_text("old")
    tmp = Path(tempfile.mkdtemp(dir=tmp_path, prefix=".tmp-"))
    real_replace = os.replace

    def replace(src, dst):
        if Path(src) == tmp:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        bd.publish_folder(tmp, final)
    assert (final / "old.txt").read_text() == "old"
