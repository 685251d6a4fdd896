"""check_experiment.py: data verdicts, exit codes, JSON and the environment estimate.

Expected values are computed here independently (hand counts, the transformers tokenizer, the
cache formula written out), not read back from the script. CLI behaviour runs the script with
``sys.executable``; most runs use ``--data-only`` so that only two runs pay for importing torch.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, build_tokenizer, make_tiny_model, save_model, tiny_config

import check_experiment as ce

SCRIPT = ROOT / "check_experiment.py"

# A fictional technical domain (forget) versus general prose (retain), 50 distinct lines each.
FORGET = [f"Zephyr coil {i} stores {3 * i + 7} units of charge in braided silver wire tuned to "
          f"{i % 9} kelvin, and the glimmer reactor hums at {100 + i} hertz." for i in range(50)]
RETAIN = [f"On day {i} the committee met in the old town hall to discuss the library budget and "
          f"the {i % 7} new benches for the square near the river." for i in range(50)]


def write(path: Path, lines, end="\n") -> Path:
    path.write_text("\n".join(lines) + end, encoding="utf-8")
    return path


@pytest.fixture
def data(tmp_path):
    return write(tmp_path / "forget.txt", FORGET), write(tmp_path / "retain.txt", RETAIN)


def run_cli(*args, cwd, env=None):
    """The script as a user runs it, with the study's env overrides cleared and the hub offline."""
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("MODEL_A", "DATA_DIR", "GRAD_ACCUM", "CACHE_FP16", "HF_HUB_CACHE", "MAX_LENGTH",
                             "CACHE_DIR", "DEVICE", "DTYPE")}
    full_env.update({"HF_HUB_OFFLINE": "1", **(env or {})})
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=120)


def verdicts(stdout: str) -> dict[str, str]:
    """``{check name: status}`` from the text report."""
    out = {}
    for line in stdout.splitlines():
        status, _, rest = line.partition(" ")
        if status in ("PASS", "WARN", "FAIL", "INFO"):
            out[rest.strip().split(":", 1)[0]] = status
    return out


def line_of(stdout: str, name: str) -> str:
    return next(l for l in stdout.splitlines() if l[6:].startswith(name + ":"))


def data_args(forget, retain, *extra):
    return ["--forget-data", forget, "--retain-data", retain, "--data-only", *extra]


# ----------------------------------------------------------------------------- pure functions

def test_normalise_and_overlap():
    forget = [(1, "The Cell  cycle"), (2, "mitosis"), (3, "the cell cycle"), (4, "unique")]
    retain = [(10, "x"), (11, "THE\tcell cycle "), (12, "mitosis")]
    assert ce.normalise("  The\u00a0Cell\t\tCYCLE ") == "the cell cycle"   # NBSP folds to a space (NFKC)
    assert ce.find_overlap(forget, retain) == [(2, 12, "mitosis")]
    assert ce.find_overlap(forget, retain, key=ce.normalise) == [
        (1, 11, "The Cell  cycle"), (2, 12, "mitosis"), (3, 11, "the cell cycle")]


def test_duplicates_balance_and_approx_tokens():
    samples = [(1, "a b"), (2, "a b"), (3, "A  b"), (4, "c"), (5, "c"), (6, "d")]
    assert ce.count_duplicates(samples) == (2, 2)                 # "a b" once more, "c" once more
    assert ce.count_duplicates(samples, key=ce.normalise) == (3, 2)
    assert ce.balance_ratio(50, 20) == 2.5 and ce.balance_ratio(20, 50) == 2.5
    assert ce.balance_ratio(0, 3) == math.inf
    # 10 words of 5 letters: 13 tokens by words (10 x 1.3), 59 bytes / 4 = 14.75 -> 15
    assert ce.approx_token_count(" ".join(["alpha"] * 10)) == 15
    # 100 one-letter words: 130 by words, 199 bytes / 4 = 49.75 -> 130
    assert ce.approx_token_count(" ".join(["a"] * 100)) == 130
    st = ce.truncation_stats([10, 600, 512, 513], 512)
    assert st == {"samples": 4, "truncated": 2, "share": 0.5, "longest": 600, "kept_tokens": 10 + 512 * 3}


def test_cache_size_dims_and_disk_status():
    assert ce.activation_cache_bytes(1000, 32, 4096, 4) == 1000 * 33 * 4096 * 4
    assert ce.activation_cache_bytes(1000, 32, 4096, 2) == 1000 * 33 * 4096 * 2
    # the key names of transformers' GPTNeoXConfig, LlamaConfig and GPT2Config (written out: importing
    # transformers here would cost seconds; the full CLI test below reads a real saved config)
    for cfg in ({"model_type": "gpt_neox", "num_hidden_layers": 3, "hidden_size": 48, "max_position_embeddings": 64},
                {"model_type": "llama", "num_hidden_layers": 3, "hidden_size": 48, "max_position_embeddings": 64},
                {"model_type": "gpt2", "n_layer": 3, "n_embd": 48, "n_head": 4, "n_positions": 64}):
        assert ce.dims_from_config(cfg) == {"num_layers": 3, "hidden": 48, "max_positions": 64}, cfg
    assert ce.dims_from_config({"num_hidden_layers": 2, "hidden_size": 8}) == {"num_layers": 2, "hidden": 8, "max_positions": None}
    assert ce.dims_from_config({"foo": 1}) is None
    # the cache holds model A's dtype (auto: bf16 on CUDA, fp16 on MPS, fp32 on CPU); --cache-fp16 only shrinks fp32
    assert ce.cache_dtype("auto", "cpu", False) == ("fp32", 4) and ce.cache_dtype("auto", "cpu", True) == ("fp16", 2)
    assert ce.cache_dtype("auto", "cuda", False) == ("bf16", 2) and ce.cache_dtype("auto", "cuda", True) == ("bf16", 2)
    assert ce.cache_dtype("auto", "mps", False) == ("fp16", 2) and ce.cache_dtype("fp32", "cuda", False) == ("fp32", 4)
    assert ce.disk_status(80, 100) == "PASS" and ce.disk_status(81, 100) == "WARN"
    assert ce.disk_status(200, 100) == "WARN"


def test_model_dims_offline(tmp_path, monkeypatch):
    """Study models: HF cache first, the documented 6.9B assumption when uncached; others unknown."""
    import huggingface_hub.constants as hfc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    dims, source = ce.model_dims("EleutherAI/deep-ignorance-unfiltered")
    assert dims == {"num_layers": 32, "hidden": 4096, "max_positions": 2048} and "assumed" in source
    assert ce.model_dims("someone/unknown-model")[0] is None
    # the same hub ID resolved from a (fake) HF cache snapshot takes precedence over the assumption
    repo = tmp_path / "hub" / "models--EleutherAI--deep-ignorance-unfiltered"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text(json.dumps({"num_hidden_layers": 6, "hidden_size": 64}))
    assert ce.model_dims("EleutherAI/deep-ignorance-unfiltered") == (
        {"num_layers": 6, "hidden": 64, "max_positions": None}, "config.json of EleutherAI/deep-ignorance-unfiltered")


def test_repro_settings_from_env_and_flags():
    names = lambda cs: {c.name: c.status for c in cs}
    assert names(ce.repro_settings(None, False, {})) == {"grad accumulation": "PASS", "activation cache dtype": "PASS"}
    assert names(ce.repro_settings(None, False, {"GRAD_ACCUM": "1", "CACHE_FP16": "0"})) == {
        "grad accumulation": "PASS", "activation cache dtype": "PASS"}
    assert names(ce.repro_settings(None, False, {"GRAD_ACCUM": "4", "CACHE_FP16": "1"})) == {
        "grad accumulation": "WARN", "activation cache dtype": "WARN"}
    assert names(ce.repro_settings(2, True, {})) == {"grad accumulation": "WARN", "activation cache dtype": "WARN"}
    assert names(ce.repro_settings(1, False, {"GRAD_ACCUM": "8"})) == {   # the flag wins over the env
        "grad accumulation": "PASS", "activation cache dtype": "PASS"}
    assert ce.repro_settings(None, False, {"GRAD_ACCUM": "four"})[0].status == "WARN"


# ----------------------------------------------------------------------------- the CLI

@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """config.json (GPT-NeoX, 4 layers, hidden 32, 128 positions), weights and tokenizer: all the checks read."""
    tok = build_tokenizer(FORGET[:20] + RETAIN[:20], vocab_size=400)
    model_dir = tmp_path_factory.mktemp("tiny-model")
    save_model(make_tiny_model("gpt_neox", vocab_size=400, hidden=32, layers=4, max_pos=128), model_dir)  # loadable
    tok.save_pretrained(model_dir)
    return model_dir, tok


def test_good_data_passes(data, tmp_path, tiny_model_dir):
    """Full run (environment included) on a tiny local model: exit 0, and the cache estimate is exact."""
    forget, retain = data
    model_dir, tok = tiny_model_dir
    r = run_cli("--forget-data", forget, "--retain-data", retain, "--model", model_dir, "--max-length", 24,
                "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    v = verdicts(r.stdout)
    assert "FAIL" not in v.values()
    for name in ("files", "overlap (exact)", "overlap (normalised)", "duplicates (forget)",
                 "duplicates (retain)", "balance", "grad accumulation", "activation cache dtype", "disk"):
        assert v[name] == "PASS", line_of(r.stdout, name)
    for name in ("packages", "torch", "device", "bf16", "tokenizer"):
        assert v[name] in ("INFO", "PASS"), line_of(r.stdout, name)
    assert "PASS  files: forget.txt 50 samples, retain.txt 50 samples" in r.stdout
    assert r.stdout.splitlines()[-1].startswith("summary: ") and r.stdout.splitlines()[-1].endswith("-> ready")

    # independent reference: the transformers tokenizer, truncation at 24, (4 + 1) hidden states x 32, fp32
    lengths = [len(ids) for ids in tok(FORGET + RETAIN)["input_ids"]]
    kept = sum(min(n, 24) for n in lengths)
    assert f"activation cache ~{ce.human_bytes(kept * 5 * 32 * 4)} ({kept} tokens x 5 hidden states x 32 x 4 B, " \
           f"fp32 on cpu; dims from config.json of {model_dir})" in line_of(r.stdout, "disk")
    truncated = [sum(n > 24 for n in lengths[:50]), sum(n > 24 for n in lengths[50:])]
    assert truncated[0] > 0
    assert line_of(r.stdout, "truncation").startswith(
        f"WARN  truncation: {truncated[0]} of 50 forget ({2 * truncated[0]:.1f}%), "
        f"{truncated[1]} of 50 retain ({2 * truncated[1]:.1f}%) samples exceed --max-length 24 tokens")


def test_json_matches_text(data, tmp_path):
    forget, retain = data
    write(forget, FORGET + [FORGET[1]])                                # a duplicate: WARN
    write(retain, RETAIN[:10] + [FORGET[2].upper()])                   # overlap: FAIL; 51:11 balance: WARN
    args = data_args(forget, retain, "--grad-accum-steps", 3)
    text, js = run_cli(*args, cwd=tmp_path), run_cli(*args, "--json", cwd=tmp_path)
    assert text.returncode == js.returncode == 1
    report = json.loads(js.stdout)
    assert {c["name"]: c["status"] for c in report["checks"]} == verdicts(text.stdout)
    assert [ce.format_line(c) for c in report["checks"]] == text.stdout.splitlines()[:-1]
    assert text.stdout.splitlines()[-1] == ce.summary_line(report["summary"])
    assert report["summary"] == {"pass": 5, "warn": 3, "fail": 1, "info": 1, "ok": False}
    assert report["inputs"]["exact_token_counts"] is False


def test_copied_forget_lines_fail(data, tmp_path):
    forget, retain = data
    write(retain, RETAIN + FORGET[:10])
    r = run_cli(*data_args(forget, retain), cwd=tmp_path)
    assert r.returncode == 1
    line = line_of(r.stdout, "overlap (exact)")
    assert line.startswith("FAIL  overlap (exact): 10 of 50 forget samples also appear verbatim in retain.txt")
    assert f'forget:1=retain:51 "{FORGET[0][:57]}..."' in line and line.count("forget:") == 3   # three examples
    assert line_of(r.stdout, "overlap (normalised)").startswith("FAIL  overlap (normalised): 10 of 50")
    assert "not ready" in r.stdout.splitlines()[-1]
    assert "Traceback" not in r.stderr


def test_normalised_overlap_only(data, tmp_path):
    forget, retain = data
    variants = [FORGET[3].upper(), "  " + FORGET[7].replace(" ", "   ") + " ", FORGET[9].replace(" ", "\t")]
    write(retain, RETAIN + variants)
    r = run_cli(*data_args(forget, retain, "--json"), cwd=tmp_path)
    assert r.returncode == 1
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["overlap (exact)"]["status"] == "PASS"
    norm = checks["overlap (normalised)"]
    assert norm["status"] == "FAIL" and norm["details"]["count"] == 3
    assert [e["forget_line"] for e in norm["details"]["examples"]] == [4, 8, 10]
    assert [e["retain_line"] for e in norm["details"]["examples"]] == [51, 52, 53]
    assert norm["message"].startswith("3 of 50 forget samples match a retain.txt sample")


def test_duplicates_and_balance_warn(tmp_path):
    forget = write(tmp_path / "forget.txt", FORGET + [FORGET[0], FORGET[0], FORGET[5].lower()])
    retain = write(tmp_path / "retain.txt", RETAIN[:20])
    r = run_cli(*data_args(forget, retain), cwd=tmp_path)
    assert r.returncode == 0, r.stdout                         # WARN lines do not fail
    assert line_of(r.stdout, "duplicates (forget)").startswith(
        "WARN  duplicates (forget): 3 of 53 samples in forget.txt repeat an earlier one (2 distinct texts; 2 exact copies)")
    assert line_of(r.stdout, "duplicates (retain)").startswith("PASS")
    assert line_of(r.stdout, "balance").startswith("WARN  balance: 53 forget vs 20 retain samples (2.65:1, beyond 2:1)")
    write(retain, RETAIN[:27])                                  # 53 : 27 = 1.96, within 2:1
    r = run_cli(*data_args(forget, retain), cwd=tmp_path)
    assert line_of(r.stdout, "balance").startswith("PASS  balance: 53 forget vs 27 retain samples (1.96:1)")


def test_truncation_with_local_tokenizer(data, tmp_path, tiny_model_dir):
    """conftest's byte-level BPE tokenizer saved to disk; the reference counts come from transformers."""
    forget, retain = data
    _, tok = tiny_model_dir
    tok.save_pretrained(tmp_path / "tok")
    # every 5th forget line made long
    long_forget = [t + " " + " ".join(RETAIN[:3]) if i % 5 == 0 else t for i, t in enumerate(FORGET)]
    write(forget, long_forget)
    max_len = 40
    f_len = [len(ids) for ids in tok(long_forget)["input_ids"]]
    r_len = [len(ids) for ids in tok(RETAIN)["input_ids"]]
    f_over, r_over = sum(n > max_len for n in f_len), sum(n > max_len for n in r_len)
    assert f_over > r_over                                       # the fixture does what it says
    r = run_cli(*data_args(forget, retain, "--tokenizer", tmp_path / "tok", "--max-length", max_len), cwd=tmp_path)
    assert r.returncode == 0
    line = line_of(r.stdout, "truncation")
    assert line.startswith(f"WARN  truncation: {f_over} of 50 forget ({100 * f_over / 50:.1f}%), "
                           f"{r_over} of 50 retain ({100 * r_over / 50:.1f}%) samples exceed --max-length {max_len}")
    assert f"(longest {max(f_len + r_len)} tokens)" in line and "approximate" not in line
    assert line_of(r.stdout, "tokenizer").startswith("INFO  tokenizer: exact token counts")


def test_truncation_at_model_positions(data, tmp_path, tiny_model_dir):
    """--max-length above the model's 128 positions: texts are cut at 128, as the activation tool does."""
    forget, retain = data
    model_dir, tok = tiny_model_dir
    long_retain = RETAIN[:45] + [" ".join(RETAIN[i:i + 8]) for i in range(5)]
    write(retain, long_retain)
    lengths = [len(ids) for ids in tok(long_retain)["input_ids"]]
    over = sum(n > 128 for n in lengths)
    assert 0 < over and all(n <= 1000 for n in lengths)
    r = run_cli(*data_args(forget, retain, "--model", model_dir, "--max-length", 1000), cwd=tmp_path)
    assert line_of(r.stdout, "truncation").startswith(
        f"WARN  truncation: 0 of 50 forget (0.0%), {over} of 50 retain ({2 * over:.1f}%) samples exceed the model's "
        f"128 positions (below --max-length 1000) and would be cut (longest {max(lengths)} tokens)")


def test_truncation_approximate_fallback(tmp_path):
    # 10 lines of 600 five-letter words: max(780, 3599/4) = 900 tokens > 512; 40 short lines fit
    forget = write(tmp_path / "forget.txt", [" ".join([f"w{i:04d}"] * 600) for i in range(10)] + FORGET[:40])
    retain = write(tmp_path / "retain.txt", RETAIN)
    r = run_cli(*data_args(forget, retain, "--tokenizer", tmp_path / "no-such-tokenizer"), cwd=tmp_path)
    assert r.returncode == 0
    line = line_of(r.stdout, "truncation")
    assert line.startswith("WARN  truncation: 10 of 50 forget (20.0%), 0 of 50 retain (0.0%) samples exceed "
                           "--max-length 512 tokens and would be cut (longest 900 tokens)")
    assert "approximate counts" in line
    assert line_of(r.stdout, "tokenizer").startswith("WARN  tokenizer: no tokenizer for")   # asked for, not found


@pytest.mark.parametrize("case", ["missing", "empty", "blank", "binary", "directory"])
def test_bad_files_fail_without_traceback(case, data, tmp_path):
    forget, retain = data
    if case == "missing":
        forget = tmp_path / "nope" / "forget.txt"
    elif case == "empty":
        forget.write_text("")
    elif case == "blank":
        forget.write_text("\n  \n\t\n")
    elif case == "binary":
        forget.write_bytes(b"\xff\xfe\x00bad")
    else:
        forget = tmp_path
    r = run_cli(*data_args(forget, retain), cwd=tmp_path)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and r.stderr == ""
    line = line_of(r.stdout, "files")
    assert line.startswith(f"FAIL  files: {forget} ") and "retain.txt 50 samples" in line
    assert {"missing": "does not exist", "empty": "is empty", "blank": "only blank lines", "binary": "not UTF-8",
            "directory": "is not a file"}[case] in line


def test_default_paths_missing_and_usage_error(tmp_path):
    r = run_cli("--data-only", cwd=tmp_path)            # no data/ folder in this cwd
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "data/forget.txt does not exist; data/retain.txt does not exist" in r.stdout
    r = run_cli("--data-only", "--max-length", "0", cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.strip() == "error: --max-length must be a positive number of tokens, got 0"
    r = run_cli("--data-only", cwd=tmp_path, env={"DEVICE": "xpu"})
    assert r.returncode == 1 and r.stderr.strip() == "error: --device (or $DEVICE) must be one of auto, cuda, mps, cpu, got 'xpu'"


def test_repro_flags_warn(data, tmp_path):
    forget, retain = data
    r = run_cli(*data_args(forget, retain), cwd=tmp_path, env={"GRAD_ACCUM": "4", "CACHE_FP16": "1"})
    assert r.returncode == 0
    assert line_of(r.stdout, "grad accumulation").startswith("WARN  grad accumulation: 4 steps (GRAD_ACCUM=4)")
    assert "not equivalent to one 4x larger batch" in r.stdout
    assert line_of(r.stdout, "activation cache dtype").startswith("WARN  activation cache dtype: fp16 (CACHE_FP16=1)")
    r = run_cli(*data_args(forget, retain, "--grad-accum-steps", 2, "--cache-fp16", "--json"), cwd=tmp_path)
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["grad accumulation"]["status"] == "WARN" and checks["grad accumulation"]["details"]["steps"] == 2
    assert checks["activation cache dtype"]["status"] == "WARN"
    assert json.loads(r.stdout)["summary"] == {"pass": 7, "warn": 2, "fail": 0, "info": 1, "ok": True}


def test_demo_data_passes_then_fails_when_copied(tmp_path):
    """The issue's acceptance check on the demo's own data (create_datasets.py --source synthetic)."""
    if not (ROOT / "create_datasets.py").exists():
        pytest.skip("create_datasets.py not in this checkout")
    made = subprocess.run([sys.executable, str(ROOT / "create_datasets.py"), "--source", "synthetic",
                           "--outdir", str(tmp_path / "data")], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    r = run_cli("--data-only", cwd=tmp_path)                           # the default data/forget.txt, data/retain.txt
    assert r.returncode == 0, r.stdout
    assert "FAIL" not in verdicts(r.stdout).values()
    forget = (tmp_path / "data" / "forget.txt").read_text(encoding="utf-8").splitlines()
    retain = tmp_path / "data" / "retain.txt"
    retain.write_text(retain.read_text(encoding="utf-8") + "\n".join(forget[100:117]) + "\n", encoding="utf-8")
    r = run_cli("--data-only", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert line_of(r.stdout, "overlap (exact)").startswith(
        f"FAIL  overlap (exact): 17 of {len(forget)} forget samples also appear verbatim in retain.txt")


# ----------------------------------------------------------------------------- the model check

def test_model_folder_problems(tmp_path, tiny_model_dir):
    """Only a folder transformers can load passes; each way of not being loadable is named."""
    import shutil
    model_dir, _ = tiny_model_dir
    assert ce.model_folder_problem(model_dir) is None
    cases = {}
    for case in ("no_config", "bad_config", "no_weights", "truncated", "sharded_missing", "bin_only"):
        d = tmp_path / case
        shutil.copytree(model_dir, d)
        cases[case] = d
    (cases["no_config"] / "config.json").unlink()
    (cases["bad_config"] / "config.json").write_text("{not json")
    (cases["no_weights"] / "model.safetensors").unlink()
    weights = cases["truncated"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    (cases["sharded_missing"] / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    (cases["bin_only"] / "model.safetensors").rename(cases["bin_only"] / "pytorch_model.bin")
    expected = {"no_config": "no config.json", "bad_config": "cannot be read", "no_weights": "no .safetensors",
                "truncated": "truncated", "sharded_missing": "is missing", "bin_only": "no .safetensors"}
    for case, words in expected.items():
        assert words in (ce.model_folder_problem(cases[case]) or ""), case


@pytest.mark.parametrize("case", ["missing", "file", "no_weights", "offline_hub_id"])
def test_unloadable_model_is_not_ready(data, tmp_path, tiny_model_dir, case, monkeypatch):
    """A --model that does not exist or cannot be loaded FAILs: the summary is never "ready"."""
    import shutil
    forget, retain = data
    model_dir, _ = tiny_model_dir
    model = {"missing": str(tmp_path / "no-such-model"), "file": str(forget),
             "offline_hub_id": "nobody-h12b/no-such-model"}.get(case)
    if case == "no_weights":
        shutil.copytree(model_dir, tmp_path / "m")
        (tmp_path / "m" / "model.safetensors").unlink()
        model = str(tmp_path / "m")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ce.hub_reachable.cache_clear()
    try:
        report = ce.run_checks(ce.parse_args(["--forget-data", str(forget), "--retain-data", str(retain),
                                              "--model", model, "--tokenizer", str(model_dir), "--device", "cpu"]))
    finally:
        ce.hub_reachable.cache_clear()
    check = next(c for c in report["checks"] if c["name"] == "model")
    if case == "offline_hub_id":                      # cannot be looked up offline: said, not failed
        assert check["status"] == "WARN" and "not in the local Hugging Face cache" in check["message"]
        return
    assert check["status"] == "FAIL" and not report["summary"]["ok"]
    assert {"missing": "does not exist", "file": "is a file", "no_weights": "no .safetensors"}[case] in check["message"]
    if case == "missing":                             # and the CLI says so: exit 1, "not ready"
        r = run_cli("--forget-data", forget, "--retain-data", retain, "--model", model, "--device", "cpu", cwd=tmp_path)
        assert r.returncode == 1 and line_of(r.stdout, "model").startswith("FAIL  model: ")
        assert r.stdout.splitlines()[-1].endswith("not ready: fix the FAIL lines first")
