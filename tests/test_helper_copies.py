"""One source for every shared helper: common/helpers.py, copied into the tools by common/fix_copies.py.

Every tool is a self-contained script, so the helpers several tools need are copies, kept between
the marker lines of each tool's shared block. This holds the copies equal to the source (the
failure message names the command that fixes them), checks that the fix command restores an edited
copy, takes a helper named on a ``# take:`` line with the helpers it uses, and moves a loose
``# Copied from`` copy into the block; that no two tools define the same name with different
bodies (apart from each tool's own main/parse_args/... ); then tests each helper's behaviour once,
on the source.
"""
from __future__ import annotations

import ast
import errno
import hashlib
import importlib.util
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "common" / "fix_copies.py"
COMMAND = "uv run --script common/fix_copies.py"
# a tool's own entry points: these may differ from tool to tool
TOOL_SPECIFIC = {"main", "parse_args", "build_parser", "check_args", "run", "draw"}


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


fix = load(FIX, "fix_copies_under_test")
SRC = fix.Source()


@pytest.fixture(scope="module")
def H():
    return load(ROOT / "common" / "helpers.py", "helpers_source_under_test")


def tools() -> list[Path]:
    return sorted(ROOT.glob("*.py"))


# ---------------------------------------------------------------------------------------------
# The copies
# ---------------------------------------------------------------------------------------------
def test_every_copy_equals_the_source():
    found = fix.targets()
    assert {p.name for p in tools()} <= {p.name for p in found}, \
        f"tools without a shared block: {sorted({p.name for p in tools()} - {p.name for p in found})}"
    problems = []
    for path in found:
        new, notes, errors = fix.rewrite(path, SRC)
        if errors or new != path.read_text(encoding="utf-8"):
            problems += errors + notes or [f"{path.name}: its block differs from common/helpers.py"]
    assert not problems, "\n".join(problems) + f"\nfix the copies with: {COMMAND}"


def test_check_fails_on_an_edited_copy_and_the_command_restores_it(tmp_path):
    original = (ROOT / "plot_tamper.py").read_text(encoding="utf-8")
    tool = tmp_path / "plot_tamper.py"
    edited = original.replace('return type(exc).__name__', 'return "edited"', 1)
    assert edited != original
    tool.write_text(edited, encoding="utf-8")
    check = subprocess.run([sys.executable, str(FIX), "--check", str(tool)], capture_output=True, text=True)
    assert check.returncode == 1, check.stderr
    assert "first_line differs from the source" in check.stderr and COMMAND in check.stderr
    assert tool.read_text(encoding="utf-8") == edited                      # --check changes nothing
    done = subprocess.run([sys.executable, str(FIX), str(tool)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert tool.read_text(encoding="utf-8") == original
    again = subprocess.run([sys.executable, str(FIX), "--check", str(tool)], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr


NEW_TOOL = """\
\"\"\"A new tool.\"\"\"
from __future__ import annotations

import sys
from pathlib import Path

# --- shared helpers (copied; tests/test_helper_copies.py keeps the copies identical) ---
def first_line(exc):
    return "old copy"
# take: model_name, sha256_file
# --- end shared helpers ---


# Copied from evaluate_unlearning.py: length_batches
def length_batches(lengths, batch_size):
    return [[0]]


def main():
    return model_name(sys.argv[1])
"""


def test_take_line_old_markers_and_loose_copies(tmp_path):
    tool = tmp_path / "new_tool.py"
    tool.write_text(NEW_TOOL, encoding="utf-8")
    new, notes, errors = fix.rewrite(tool, SRC)
    assert not errors, errors
    tree = ast.parse(new)
    defined = [fix.node_name(n) for n in tree.body if fix.node_name(n)]
    # the named helpers, the ones they use, the loose copy: all in the block, in the canonical order
    block = [n for n in defined if n in SRC.text]
    assert block == [n for n in SRC.order if n in block]
    assert {"model_name", "sha256_file", "length_batches", "first_line", "HUB_ID_RE"} <= set(block)
    assert defined.count("length_batches") == 1 and "# Copied from" not in new and "# take: model_name" not in new
    assert SRC.text["first_line"] in new and SRC.text["length_batches"] in new
    assert fix.START in new and "import hashlib" in new and "import os" in new and "import re" in new
    assert new.index("import hashlib") < new.index("import sys")           # in its alphabetical place
    tool.write_text(new, encoding="utf-8")
    assert fix.rewrite(tool, SRC)[0] == new                                 # a second run changes nothing


def test_a_block_with_an_unknown_name_is_refused(tmp_path):
    tool = tmp_path / "t.py"
    tool.write_text(NEW_TOOL.replace("# take: model_name, sha256_file", "# take: no_such_helper"), encoding="utf-8")
    _, _, errors = fix.rewrite(tool, SRC)
    assert errors and "no_such_helper" in errors[0]


def definitions(path: Path) -> dict[str, str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {fix.node_name(n): ast.dump(n) for n in tree.body if fix.node_name(n)}


def test_no_two_tools_define_a_name_differently():
    seen: dict[str, tuple[str, str]] = {}
    clashes = []
    for path in tools():
        for name, dump in definitions(path).items():
            if name in TOOL_SPECIFIC:
                continue
            if name in seen and seen[name][1] != dump:
                clashes.append(f"{name}: {seen[name][0]} and {path.name} define it differently "
                               "(move it to common/helpers.py, or rename the one that only looks alike)")
            seen.setdefault(name, (path.name, dump))
    assert not clashes, "\n".join(clashes)


@pytest.mark.parametrize("path", fix.targets(), ids=lambda p: str(p.relative_to(ROOT)))
def test_block_comes_after_the_imports_and_its_names_exist(path):
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text)
    start = next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith(fix.START_PREFIX))
    early = [fix.node_name(n) for n in tree.body if n.lineno < start and isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert not early, f"{path.name}: {early} defined before the shared block (it goes right after the imports)"
    have = fix.module_names(tree)
    for name in [n for n in SRC.order if n in definitions(path)]:
        missing = fix.free_names(SRC.nodes[name]) - have
        assert not missing, f"{path.name}: helper {name} uses {sorted(missing)}, which the script does not define"


def test_source_helpers_use_only_helpers_and_imports():
    names = fix.module_names(ast.parse((ROOT / "common" / "helpers.py").read_text(encoding="utf-8")))
    for name, node in SRC.nodes.items():
        assert not fix.free_names(node) - names, name


def test_no_script_splits_messages_unsafely():
    """``str(e).splitlines()[0]`` raises IndexError on an empty message: first_line is the one way."""
    for path in tools() + sorted((ROOT / "demo").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        if any(line.startswith(fix.START_PREFIX) for line in lines):               # the helpers' docs name it
            a = next(i for i, line in enumerate(lines) if line.startswith(fix.START_PREFIX))
            b = next(i for i, line in enumerate(lines) if line == fix.END)
            lines = lines[:a] + lines[b:]
        assert "splitlines()[0]" not in "\n".join(lines), f"{path.name}: use first_line"


# ---------------------------------------------------------------------------------------------
# Behaviour, once per helper, on the source
# ---------------------------------------------------------------------------------------------
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


def test_first_line_never_raises(H):
    assert H.first_line(ValueError("")) == "ValueError"
    assert H.first_line(OSError()) == "OSError"
    assert H.first_line(RuntimeError("\n   \n")) == "RuntimeError"
    assert H.first_line(RuntimeError("\n  disk full  \nsecond line")) == "disk full"
    assert H.first_line(KeyError("k")) == "'k'"


def test_normalise_and_drop_duplicates(H):
    assert H.normalise("  The\u00a0Cell\t\tCYCLE ") == "the cell cycle"     # NBSP -> space (NFKC)
    assert H.normalise("ﬁne Straße") == "fine strasse"                      # ligature (NFKC), ß (casefold)
    kept, dropped = H.drop_duplicates(["A b", "c", "a  B", "C", "d"])
    assert kept == ["A b", "c", "d"] and dropped == 2


def test_read_numbered_lines(H, tmp_path):
    f = tmp_path / "x.txt"
    f.write_bytes("\ufeff first \r\n\r\n  second\n\t\nthird".encode("utf-8"))
    assert H.read_numbered_lines(f) == [(1, "first"), (3, "second"), (5, "third")]
    assert H.read_lines(f) == ["first", "second", "third"]                  # BOM dropped, not kept in "first"
    (tmp_path / "dup.txt").write_text("a\na\n", encoding="utf-8")
    assert H.read_lines(tmp_path / "dup.txt") == ["a", "a"]                  # reading never dedupes
    cases = {"missing.txt": (None, "does not exist"), "empty.txt": (b"", "is empty"),
             "blank.txt": (b"\n  \n", "only blank lines"), "latin1.txt": ("café".encode("latin-1"), "not UTF-8"),
             "folder": ("dir", "is not a file")}
    for name, (content, words) in cases.items():
        p = tmp_path / name
        if content == "dir":
            p.mkdir()
        elif content is not None:
            p.write_bytes(content)
        with pytest.raises(H.UsageError, match=words) as info:
            H.read_numbered_lines(p)
        assert "\n" not in str(info.value)


def test_pick_device_and_dtype(H):
    import torch
    assert H.pick_dtype("auto", "cuda") == "bf16" and H.pick_dtype("auto", "mps") == "fp16"
    assert H.pick_dtype("auto", "cpu") == "fp32" and H.pick_dtype("fp16", "cpu") == "fp16"
    assert H.pick_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        assert H.pick_device("auto") in ("cpu", "mps")
        with pytest.raises(H.UsageError, match="CUDA is not available"):
            H.pick_device("cuda")


def test_hub_reachable_honours_offline(H, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    H.hub_reachable.cache_clear()
    try:
        assert H.hub_reachable() is False
    finally:
        H.hub_reachable.cache_clear()


def test_resolve_model_dir(H, tmp_path, monkeypatch):
    assert H.resolve_model_dir(str(tmp_path)) == tmp_path
    (tmp_path / "f").write_text("x")
    with pytest.raises(H.UsageError, match="is a file"):
        H.resolve_model_dir(str(tmp_path / "f"))
    with pytest.raises(H.UsageError, match="does not exist"):
        H.resolve_model_dir("./no/such/model")
    # a hub ID that is not cached, with the hub unreachable: one sentence, no retries
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    H.hub_reachable.cache_clear()
    try:
        with pytest.raises(H.UsageError, match=r"offline\?.*not in the local cache") as info:
            H.resolve_model_dir("nobody-h12b/no-such-model")
        assert "\n" not in str(info.value)
    finally:
        H.hub_reachable.cache_clear()


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750),
                                                       (0o002, 0o664, 0o775)])
def test_write_atomically_modes_follow_umask(H, tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    target = tmp_path / "new" / "a.txt"
    H.write_atomically({target: "héllo\n", tmp_path / "b.bin": b"\x00\x01",
                         tmp_path / "c.csv": lambda p: p.write_text("x,y\n")})
    assert target.read_bytes() == "héllo\n".encode() and (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "c.csv").read_text() == "x,y\n"
    assert mode(target) == mode(tmp_path / "b.bin") == mode(tmp_path / "c.csv") == file_mode
    assert mode(tmp_path / "new") == dir_mode
    assert sorted(p.name for p in tmp_path.rglob(".*")) == []                 # no temporary file left


@pytest.mark.parametrize("fault", ["writer_error", "enospc", "ctrl_c"])
def test_write_atomically_fault_leaves_old_files_and_no_temp(H, tmp_path, monkeypatch, fault):
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
        expected = H.UsageError                                              # "cannot write ...: No space left"
    else:
        files = {old_a: "new a\n", old_b: bad_writer}
        expected = KeyboardInterrupt if fault == "ctrl_c" else ValueError
    with pytest.raises(expected):
        H.write_atomically(files)
    assert old_a.read_text() == "old a\n" and old_b.read_text() == "old b\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_publish_folder_modes_and_replace(H, tmp_path, umask):
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
    H.publish_folder(tmp, final)
    assert not tmp.exists() and not (final / "old.txt").exists() and (final / "config.json").read_text() == "{}"
    assert mode(final) == mode(final / "sub") == 0o755
    assert mode(final / "config.json") == mode(final / "sub" / "w.safetensors") == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]           # the old folder is gone too


def test_publish_folder_puts_the_old_folder_back_when_the_rename_fails(H, tmp_path, monkeypatch):
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
        H.publish_folder(tmp, final)
    assert (final / "old.txt").read_text() == "old"


# --- run_tool: the exit behaviour of every tool -----------------------------------------------
def test_run_tool_statuses(H, capsys):
    assert H.run_tool(lambda: None) == 0 and H.run_tool(lambda: 3) == 3

    def usage():
        raise H.UsageError("bad --x\nsecond line")
    assert H.run_tool(usage) == 1
    assert capsys.readouterr().err == "error: bad --x\n"

    class Other(Exception):
        pass

    def other():
        raise Other("nan loss")
    assert H.run_tool(other, errors=(Other,)) == 1 and capsys.readouterr().err == "error: nan loss\n"
    with pytest.raises(Other):                                  # not named: a bug, with its traceback
        H.run_tool(other)

    def full():
        raise OSError(errno.ENOSPC, "No space left on device", "/x/out.csv")
    assert H.run_tool(full) == 1 and capsys.readouterr().err == "error: cannot access /x/out.csv: No space left on device\n"

    def oom():
        raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")
    assert H.run_tool(oom, oom_hint="lower --batch-size") == 1
    assert capsys.readouterr().err == "error: out of device memory; lower --batch-size\n"

    def argparse_error():
        raise SystemExit(2)
    with pytest.raises(SystemExit) as info:
        H.run_tool(argparse_error)
    assert info.value.code == 2


def test_run_tool_ctrl_c_and_sigterm_clean_up_then_130_and_143(H, capsys):
    before = signal.getsignal(signal.SIGTERM)
    cleaned = []

    def work(kill):
        try:
            if kill:
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)          # a second one while cleaning up: ignored
                time.sleep(5)                                 # (the handler interrupts the sleep at once)
            raise KeyboardInterrupt
        finally:
            os.kill(os.getpid(), signal.SIGTERM) if kill else None
            cleaned.append(kill)

    assert H.run_tool(lambda: work(False), kept="the cache was removed") == 130
    assert capsys.readouterr().err == "interrupted (Ctrl-C): the cache was removed\n"
    assert H.run_tool(lambda: work(True), kept="nothing was written") == 143
    assert capsys.readouterr().err == "terminated (SIGTERM): nothing was written\n"
    assert cleaned == [False, True] and signal.getsignal(signal.SIGTERM) is before

    def swallowing():                                          # a tool that catches Ctrl-C itself
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except KeyboardInterrupt:
            return 130
    assert H.run_tool(swallowing) == 143
    assert issubclass(H.Terminated, KeyboardInterrupt)


# --- env_flag ------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, expected", [("1", True), ("true", True), ("TRUE", True), (" Yes ", True),
                                           ("0", False), ("false", False), ("No", False), ("", False)])
def test_env_flag_values(H, monkeypatch, raw, expected):
    monkeypatch.setenv("H21_FLAG", raw)
    assert H.env_flag("H21_FLAG") is expected and H.env_flag("H21_FLAG", default=True) is expected


def test_env_flag_unset_and_bad(H, monkeypatch):
    monkeypatch.delenv("H21_FLAG", raising=False)
    assert H.env_flag("H21_FLAG") is False and H.env_flag("H21_FLAG", True) is True
    for bad in ("on", "2", "y", "enabled"):
        monkeypatch.setenv("H21_FLAG", bad)
        with pytest.raises(H.UsageError, match="H21_FLAG"):
            H.env_flag("H21_FLAG")


def test_env_flag_agrees_with_the_shell_helper(H, monkeypatch):
    """common/env.sh's env_flag reads the same values the same way: status 0 on, 1 off, 2 neither."""
    values = ["1", "true", "TRUE", " Yes ", "0", "false", "No", "", "on", "2"]
    script = "; ".join(f"H21_FLAG={json.dumps(v)}; env_flag H21_FLAG; echo $?" for v in values)
    shell = subprocess.run(["bash", "-c", f"source {ROOT / 'common' / 'env.sh'}; {script}; unset H21_FLAG; "
                            "env_flag H21_FLAG; echo $?; env_flag H21_FLAG 1; echo $?"],
                           capture_output=True, text=True)
    want = []
    for v in values:
        monkeypatch.setenv("H21_FLAG", v)
        try:
            want.append("0" if H.env_flag("H21_FLAG") else "1")
        except H.UsageError:
            want.append("2")
    assert shell.stdout.split() == want + ["1", "0"]
    assert shell.stderr.count("error: H21_FLAG=") == 2


# --- model_name ----------------------------------------------------------------------------------
def test_model_name(H, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "m__npo" / "unlearned_model").mkdir(parents=True)
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "local").mkdir()
    assert H.model_name("EleutherAI/pythia-70m") == "EleutherAI_pythia-70m"          # hub ID
    assert H.model_name("org/local") == "local"                                       # a folder wins over a hub ID
    assert H.model_name(".") == tmp_path.name and H.model_name("./") == tmp_path.name
    assert H.model_name("org/local/..") == "org"
    assert H.model_name("runs/m__npo/unlearned_model/") == "m__npo"
    assert H.model_name(str(tmp_path / "runs" / "m__npo")) == "m__npo"
    assert H.model_name("./no/such") == "such" and H.model_name("/") == "root"


# --- read_mcq, sha256_file, mcq_task_yaml, pad_right, length_batches ---------------------------
def test_read_mcq(H, tmp_path):
    good = {"question": "Q?", "choices": ["a", "b"], "answer": 1}
    f = tmp_path / "m.jsonl"
    f.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "answer": 0}) + "\n", encoding="utf-8")
    assert H.read_mcq(f) == [good, {**good, "answer": 0}]
    for bad, words in [({**good, "question": "  "}, "line 1: 'question' must be a non-empty string"),
                       ({**good, "choices": ["a"]}, "'choices' must be a list"),
                       ({**good, "choices": ["a", ""]}, "'choices' must be a list"),
                       ({**good, "answer": 2}, "out of range"), ({**good, "answer": True}, "integer index")]:
        f.write_text(json.dumps(bad) + "\n", encoding="utf-8")
        with pytest.raises(H.UsageError, match=words):
            H.read_mcq(f)
    f.write_text("{oops\n", encoding="utf-8")
    with pytest.raises(H.UsageError, match="line 1: not valid JSON"):
        H.read_mcq(f)
    f.write_text("\n", encoding="utf-8")
    with pytest.raises(H.UsageError, match="is empty"):
        H.read_mcq(f)


def test_sha256_file_and_mcq_task_yaml(H, tmp_path):
    import yaml

    f = tmp_path / "x.bin"
    data = os.urandom(3 * (1 << 20) + 17)                       # more than one 1 MiB piece
    f.write_bytes(data)
    assert H.sha256_file(f) == hashlib.sha256(data).hexdigest()
    cfg = yaml.safe_load(H.mcq_task_yaml("t", tmp_path / "q.jsonl"))
    assert cfg["task"] == "t" and cfg["dataset_kwargs"]["data_files"]["test"] == str((tmp_path / "q.jsonl").resolve())
    assert cfg["doc_to_text"] == "{{question}}\nAnswer:" and cfg["output_type"] == "multiple_choice"
    assert [m["metric"] for m in cfg["metric_list"]] == ["acc", "acc_norm"]


def test_pad_right_and_length_batches(H):
    ids, mask = H.pad_right([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert H.length_batches([2, 5, 3, 5, 1], 2) == [[1, 3], [2, 0], [4]]
    H.release_memory()


# --- progress ------------------------------------------------------------------------------------
def test_progress_without_a_terminal_prints_lines_not_bars(H, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    bar = H.progress(range(3), desc="pass 1", unit="batch")
    assert isinstance(bar, H.LineProgress) and list(bar) == [0, 1, 2]
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "pass 1: started of 3 batch" and err[-1].startswith("pass 1: done, 3/3 batch in ")
    assert len(err) == 2 and "\r" not in "".join(err)
    with H.LineProgress(total=4, desc="attack", unit="step", every=0) as bar:      # periodic line each update
        for _ in range(4):
            bar.update()
        bar.set_postfix(loss="1.5")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 6 and err[2].startswith("attack: 2/4 step in ") and err[-1].endswith("loss=1.5")
    assert H.progress(range(2), desc="x", disable=True).disable and capsys.readouterr().err == ""


def test_progress_on_a_terminal_is_tqdm(H, monkeypatch):
    from tqdm.auto import tqdm
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = H.progress(range(2), desc="x", disable=True)
    assert isinstance(bar, tqdm)


# --- model_style ---------------------------------------------------------------------------------
def test_model_style(H):
    okabe_ito = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442"]
    ref = H.model_style("base", 0)
    assert ref == {"color": "#000000", "linestyle": "-", "marker": "o", "label": "base"}
    assert [H.model_style("m", i)["color"] for i in range(1, 8)] == okabe_ito
    assert H.model_style("m", 8)["color"] == okabe_ito[0]                          # cycles past the palette
    assert all(H.model_style("m", i)["linestyle"] != "-" for i in range(1, 12))   # only the reference is solid
    assert len({H.model_style("m", i)["color"] for i in range(8)}) == 8
    with pytest.raises(ValueError):
        H.model_style("m", -1)
