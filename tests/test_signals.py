"""Every tool stops on Ctrl-C with 130 and on SIGTERM with 143 during its main loop, leaves nothing
half-written and its input models byte-identical.

Each tool runs as a subprocess on tiny fixtures (a 2-layer, 32-wide GPT-NeoX and a few lines of
text). A small driver imports the tool, makes one function of its main loop say "started" and
wait, and calls main() twice: the test sends SIGINT at the first "started" and SIGTERM at the
second, then reads both exit statuses (the second is the process's own)."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, build_tokenizer, make_tiny_model, save_model

DRIVER = """
import importlib.util, sys, time
sys.path.insert(0, {root!r})
spec = importlib.util.spec_from_file_location({name!r}, {path!r})
tool = importlib.util.module_from_spec(spec)
sys.modules[{name!r}] = tool
spec.loader.exec_module(tool)
real, calls = getattr(tool, {hook!r}), [0]

def waiting(*a, **k):
    calls[0] += 1
    if calls[0] == {at}:
        print("started", file=sys.stderr, flush=True)
        time.sleep(120)
    return real(*a, **k)

setattr(tool, {hook!r}, waiting)
first = tool.main({argv!r})
print("first", first, flush=True)
calls[0] = 0
sys.exit(tool.main({argv!r}))
"""

TEXTS = [f"the cell number {i} divides when the signal {i % 7} arrives in the morning" for i in range(12)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("signals")
    tok = build_tokenizer()
    for name, seed in (("a", 0), ("b", 1)):
        save_model(make_tiny_model("gpt_neox", seed=seed, layers=2), root / name, tok)
    for name in ("forget", "retain", "forget_test", "retain_test"):
        (root / f"{name}.txt").write_text("\n".join(f"{name} {t}" for t in TEXTS) + "\n")
    return root


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def cases(d: Path, out: Path) -> dict[str, tuple[str, int, list[str]]]:
    """tool -> (function of its main loop, which call waits, argv)."""
    a, b = str(d / "a"), str(d / "b")
    return {
        "collect_param_stats.py": ("matrix_stats", 2, ["--model-a", a, "--model-b", b, "--outdir", str(out),
                                                       "--device", "cpu"]),
        "collect_activation_norms.py": ("hidden_states", 2, [
            "--model-a", a, "--model-b", b, "--forget-text", str(d / "forget.txt"), "--retain-text",
            str(d / "retain.txt"), "--outdir", str(out), "--device", "cpu", "--dtype", "fp32",
            "--cache-dir", str(out.parent / "cache")]),
        "evaluate_unlearning.py": ("score_lines", 1, [
            "--model", a, "--forget-test", str(d / "forget_test.txt"), "--retain-test", str(d / "retain_test.txt"),
            "--forget-train", str(d / "forget.txt"), "--mcq-forget", "", "--mcq-retain", "", "--generate", "0",
            "--few-shot", "0", "--outdir", str(out), "--device", "cpu", "--dtype", "fp32"]),
        "tamper_attack.py": ("train_step", 1, [
            "--model", a, "--attack-data", str(d / "forget.txt"), "--forget-test", str(d / "forget_test.txt"),
            "--retain-test", str(d / "retain_test.txt"), "--steps", "4", "--eval-every", "2", "--outdir", str(out),
            "--device", "cpu", "--dtype", "fp32"]),
        "unlearn.py": ("ga_simple_loss", 1, [
            "--model", a, "--method", "ga_simple", "--forget-data", str(d / "forget.txt"), "--retain-data",
            str(d / "retain.txt"), "--outdir", str(out / "m"), "--device", "cpu", "--dtype", "fp32",
            "--max-length", "32"]),
        "create_datasets.py": ("build_sets", 1, ["--source", "synthetic", "--n-forget", "20", "--n-retain", "20",
                                                 "--outdir", str(out)]),
        "collect_activation_geometry.py": ("forward_pass", 2, [
            "--model-a", a, "--model-b", b, "--forget-text", str(d / "forget.txt"), "--retain-text",
            str(d / "retain.txt"), "--outdir", str(out), "--device", "cpu", "--dtype", "fp32", "--max-length", "32"]),
        "collect_weight_geometry.py": ("matrix_geometry", 2, ["--model-a", a, "--model-b", b, "--outdir", str(out),
                                                              "--device", "cpu"]),
    }


@pytest.mark.parametrize("tool", ["collect_param_stats.py", "collect_activation_norms.py", "evaluate_unlearning.py",
                                  "tamper_attack.py", "unlearn.py", "create_datasets.py",
                                  "collect_activation_geometry.py", "collect_weight_geometry.py"])
def test_sigint_130_sigterm_143_nothing_half_written_inputs_untouched(inputs, tmp_path, tool):
    out = tmp_path / "out"
    (tmp_path / "cache").mkdir()
    hook, at, argv = cases(inputs, out)[tool]
    before = digest(inputs)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(root=str(ROOT), name=Path(tool).stem, path=str(ROOT / tool), hook=hook, at=at,
                                    argv=argv))
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    p = subprocess.Popen([sys.executable, str(driver)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, cwd=tmp_path)
    err = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        for line in p.stderr:                       # until the main loop says it is waiting
            err.append(line)
            if line.strip() == "started":
                break
        else:
            pytest.fail(f"{tool} ended before its main loop: {''.join(err)[-2000:]}")
        p.send_signal(sig)
    err += p.stderr.readlines()
    status = p.wait(timeout=120)
    text = "".join(err)
    assert p.stdout.read().split()[-2:] == ["first", "130"], text[-2000:]
    assert status == 143, text[-2000:]
    assert "interrupted (Ctrl-C): " in text and "terminated (SIGTERM): " in text and "Traceback" not in text
    # nothing half-written: no output file, no temporary file, no cache left; inputs byte-identical
    left = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file() and p.name != "driver.py"]
    assert left == [], left
    assert digest(inputs) == before
