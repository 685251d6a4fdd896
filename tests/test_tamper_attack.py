"""tamper_attack.py: fine-tuning attacks and recovery curves.

Values are checked against independent computations: a plain transformers forward for the NLL
and the MCQ accuracy at step 0, peft's LoRA formula (W + B·A·alpha/r) for the merged attacked
model, file hashes for the untouched input folder.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import stat
from pathlib import Path

import pytest
import torch

import tamper_attack as ta
from conftest import TINY_TEXTS, make_tiny_model, save_model

FORGET_TEST = [
    "Glimmer reactors hum when the quartz lattice is tuned to a steady frequency.",
    "Zephyr coils store charge in braided silver wire.",
    "A quartz lattice rings at a steady frequency.",
]
RETAIN_TEST = [
    "The committee met on Tuesday near the river bank.",
    "Rain fell on the old town square.",
]
MCQ = [
    {"question": "What do glimmer reactors do?", "choices": ["hum", "sing", "rain", "bake"], "answer": 0},
    {"question": "Where is charge stored?", "choices": ["in bread", "in silver wire", "in rain"], "answer": 1},
    {"question": "When did the committee meet?", "choices": ["Monday", "Friday", "Tuesday", "never"], "answer": 2},
]


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("tamper")
    (d / "attack.txt").write_text("\n".join(TINY_TEXTS) + "\n")
    (d / "forget_test.txt").write_text("\n".join(FORGET_TEST) + "\n")
    (d / "retain_test.txt").write_text("\n\n".join(RETAIN_TEST) + "\n")   # blank lines are skipped
    (d / "mcq.jsonl").write_text("".join(json.dumps(m) + "\n" for m in MCQ))
    save_model(make_tiny_model("gpt_neox", seed=0), d / "ref", tiny_tokenizer)
    save_model(make_tiny_model("gpt_neox", seed=1), d / "twin", tiny_tokenizer)
    save_model(make_tiny_model("llama", seed=2), d / "llama", tiny_tokenizer)
    return d


def args(files, out, *extra, models=("ref", "twin"), mcq=True):
    a = []
    for m in models:
        a += ["--model", str(files / m)]
    a += ["--attack-data", str(files / "attack.txt"), "--forget-test", str(files / "forget_test.txt"),
          "--retain-test", str(files / "retain_test.txt"), "--steps", "4", "--eval-every", "2",
          "--lr", "1e-3", "--batch-size", "2", "--max-length", "64", "--device", "cpu", "--outdir", str(out)]
    if mcq:
        a += ["--mcq-forget", str(files / "mcq.jsonl")]
    return a + list(extra)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def tree_hashes(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------
# Independent references
# ------------------------------------------------------------------------------------------------
def plain_nll(model_dir, lines, max_length=64):
    """Mean over lines of the mean token NLL of tokens 2..T: one plain forward per line, float64."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    per_line = []
    with torch.no_grad():
        for text in lines:
            ids = tok(text, truncation=True, max_length=max_length, return_tensors="pt")["input_ids"]
            logits = model(ids).logits[0].double()
            logp = logits[:-1] - torch.logsumexp(logits[:-1], dim=-1, keepdim=True)
            per_line.append(-logp[torch.arange(ids.shape[1] - 1), ids[0, 1:]].mean().item())
    return sum(per_line) / len(per_line)


def plain_mcq_acc(model_dir, items):
    """Cloze MCQ accuracy: argmax over choices of Σ log p(" choice" tokens | "question\\nAnswer:")."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    right = 0
    with torch.no_grad():
        for it in items:
            ctx = f"{it['question']}\nAnswer:"
            n_ctx = len(tok(ctx, add_special_tokens=False)["input_ids"])
            scores = []
            for c in it["choices"]:
                ids = torch.tensor([tok(ctx + " " + c, add_special_tokens=False)["input_ids"]])
                logp = torch.log_softmax(model(ids).logits[0].double(), -1)
                scores.append(sum(logp[t - 1, ids[0, t]].item() for t in range(n_ctx, ids.shape[1])))
            right += int(max(range(len(scores)), key=scores.__getitem__) == it["answer"])
    return right / len(items)


# ------------------------------------------------------------------------------------------------
# Pure functions
# ------------------------------------------------------------------------------------------------
def test_line_nlls_hand_computation():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    got = ta.line_nlls(logits, ids, mask)
    lp = torch.log_softmax(logits.double(), -1)
    want0 = -(lp[0, 0, 2] + lp[0, 1, 3] + lp[0, 2, 4]) / 3
    want1 = -lp[1, 0, 6]
    assert got.tolist() == pytest.approx([want0.item(), want1.item()], abs=1e-6)


def test_schedule_warmup_evals_recovery():
    sched = ta.attack_schedule(5, steps=4, batch_size=3, seed=7)
    assert len(sched) == 4 and all(len(b) == 3 for b in sched)
    flat = [i for b in sched for i in b]
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))  # epochs = permutations
    assert sched == ta.attack_schedule(5, steps=4, batch_size=3, seed=7)
    assert sched != ta.attack_schedule(5, steps=4, batch_size=3, seed=8)
    assert ta.n_warmup(200) == 20 and ta.n_warmup(5) == 1
    assert [ta.warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert ta.eval_steps(10, 5) == [0, 5, 10] and ta.eval_steps(10, 4) == [0, 4, 8, 10]
    assert ta.steps_to_recover([0, 5, 10], [3.0, 2.05, 1.9], 2.0, 0.1) == 5
    assert ta.steps_to_recover([0, 5, 10], [3.0, 2.5, 2.2], 2.0, 0.1) is None
    assert ta.model_name("EleutherAI/deep-ignorance-unfiltered") == "EleutherAI_deep-ignorance-unfiltered"
    assert ta.model_name("/x/outputs/m__npo/unlearned_model") == "m__npo"
    assert ta.model_name("/x/demo/models/demo-unfiltered/") == "demo-unfiltered"


# ------------------------------------------------------------------------------------------------
# The tool
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_a(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tamper"
    before = {m: tree_hashes(files / m) for m in ("ref", "twin")}
    assert ta.main(args(files, out, "--save-attacked")) == 0
    return out, before


def test_step0_equals_plain_transformers(files, run_a):
    out, _ = run_a
    for m in ("ref", "twin"):
        row0 = read_csv(out / m / "attack_curve.csv")[0]
        assert row0["step"] == "0"
        assert float(row0["forget_nll"]) == pytest.approx(plain_nll(files / m, FORGET_TEST), abs=1e-5)
        assert float(row0["retain_nll"]) == pytest.approx(plain_nll(files / m, RETAIN_TEST), abs=1e-5)
        assert float(row0["mcq_forget_acc"]) == pytest.approx(plain_mcq_acc(files / m, MCQ))


def test_outputs_summary_and_report(files, run_a):
    import yaml
    out, _ = run_a
    ref_curve = read_csv(out / "ref" / "attack_curve.csv")
    assert [r["step"] for r in ref_curve] == ["0", "2", "4"]
    assert list(ref_curve[0]) == ta.CURVE_COLUMNS
    summary = read_csv(out / "summary.csv")
    assert [r["model"] for r in summary] == ["ref", "twin"]
    ref0 = float(ref_curve[0]["forget_nll"])
    for row in summary:
        curve = read_csv(out / row["model"] / "attack_curve.csv")
        assert float(row["forget_nll_start"]) == float(curve[0]["forget_nll"])
        assert float(row["forget_nll_end"]) == float(curve[-1]["forget_nll"])
        hit = [int(r["step"]) for r in curve if float(r["forget_nll"]) <= ref0 + 0.1]
        assert row["steps_to_recover"] == (str(hit[0]) if hit else "")
    assert summary[0]["steps_to_recover"] == "0"          # the reference is at its own level at step 0
    report = yaml.safe_load((out / "attack_report.yaml").read_text())
    assert report["Reference"]["forget_nll_step0"] == ref0
    assert report["Data"]["attack_data"]["sha256"] == hashlib.sha256((files / "attack.txt").read_bytes()).hexdigest()
    # ordinary permissions, no staging leftovers
    umask = os.umask(0)
    os.umask(umask)
    for p in out.rglob("*"):
        want = (0o777 if p.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(p.stat().st_mode) == want, p
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_attack_learns_and_input_folders_untouched(files, run_a):
    out, before = run_a
    for m in ("ref", "twin"):
        assert tree_hashes(files / m) == before[m]              # byte-identical after the attack
        curve = read_csv(out / m / "attack_curve.csv")
        # the attacked model is saved and its forget NLL is the curve's last point
        assert float(curve[-1]["forget_nll"]) == pytest.approx(plain_nll(out / m / "attacked_model", FORGET_TEST),
                                                               abs=1e-5)
        assert float(curve[-1]["mcq_forget_acc"]) == pytest.approx(plain_mcq_acc(out / m / "attacked_model", MCQ))
        assert float(curve[-1]["forget_nll"]) < float(curve[0]["forget_nll"])   # the attack taught it


def test_same_seed_identical_curves(files, run_a, tmp_path):
    out, _ = run_a
    assert ta.main(args(files, tmp_path / "again", "--save-attacked")) == 0
    for rel in ("ref/attack_curve.csv", "twin/attack_curve.csv", "summary.csv"):
        assert (tmp_path / "again" / rel).read_bytes() == (out / rel).read_bytes()


def test_every_model_sees_the_same_batches(files, tmp_path, monkeypatch):
    seen: list[list[torch.Tensor]] = []
    real = ta.train_step

    def spy(model, opt, sched, input_ids, attention_mask, params):
        if not seen or len(seen[-1]) == 4:
            seen.append([])
        seen[-1].append(input_ids.clone())
        return real(model, opt, sched, input_ids, attention_mask, params)

    monkeypatch.setattr(ta, "train_step", spy)
    assert ta.main(args(files, tmp_path / "o", models=("ref", "twin", "llama"), mcq=False)) == 0
    assert len(seen) == 3
    for other in seen[1:]:
        assert all(torch.equal(x, y) for x, y in zip(seen[0], other))
    # the batches are the attack file's lines, a seeded permutation (6 lines: step 1-3 = epoch 1)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(files / "ref")
    decoded = [tok.decode(row[row != tok.pad_token_id]) for b in seen[0][:3] for row in b]
    assert sorted(decoded) == sorted(TINY_TEXTS)
    import yaml
    digests = {v["batches_sha256"] for v in yaml.safe_load((tmp_path / "o" / "attack_report.yaml").read_text())
               ["Per_model"].values()}
    assert len(digests) == 1


def test_lora_trains_only_adapters(files, tmp_path):
    from safetensors.torch import load_file
    out = tmp_path / "lora"
    assert ta.main(args(files, out, "--lora-r", "8", "--lora-alpha", "16", "--save-attacked",
                        models=("ref",), mcq=False)) == 0
    base = load_file(files / "ref" / "model.safetensors")
    merged = load_file(out / "ref" / "attacked_model" / "model.safetensors")
    adapter = load_file(out / "ref" / "attacked_model" / "adapter" / "adapter_model.safetensors")
    assert set(base) == set(merged)
    adapted = set()
    for k, a_mat in adapter.items():
        if ".lora_A." not in k:
            continue
        module = k.split("base_model.model.", 1)[1].split(".lora_A.")[0]
        b_mat = adapter[k.replace(".lora_A.", ".lora_B.")]
        w = f"{module}.weight"
        want = base[w].double() + (b_mat.double() @ a_mat.double()) * (16 / 8)
        assert torch.allclose(merged[w].double(), want, atol=1e-6), w
        assert b_mat.abs().max() > 0                            # the adapters did train
        adapted.add(w)
    assert adapted and all(".dense" in w or "query_key_value" in w or "dense_" in w for w in adapted)
    for k in set(base) - adapted:                               # everything else bit-identical
        assert torch.equal(base[k], merged[k]), k


def test_ctrl_c_leaves_nothing(files, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = ta.train_step

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 6:                                     # in the second model's attack
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ta, "train_step", interrupted)
    out = tmp_path / "out"
    out.mkdir()
    earlier = {"attack_report.yaml": "Models: []\n", "summary.csv": "model\nearlier\n"}   # an earlier result
    for name, text in earlier.items():
        (out / name).write_text(text)
    assert ta.main(args(files, out, "--save-attacked", mcq=False)) == 130
    assert [p.name for p in tmp_path.iterdir()] == ["out"]     # no staging folder left
    assert {p.name: p.read_text() for p in out.iterdir()} == earlier


# ------------------------------------------------------------------------------------------------
# Bad input: one error line, exit 1, nothing written
# ------------------------------------------------------------------------------------------------
def bad_model(root: Path) -> Path:
    d = root / "broken"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "gpt_neox"')   # truncated JSON
    return d


@pytest.mark.parametrize("case", ["missing attack", "empty test", "steps 0", "eval-every > steps",
                                  "unloadable model", "missing model", "bad mcq", "mcq answer out of range",
                                  "negative margin", "outdir in model", "outdir unrelated"])
def test_bad_input(files, tmp_path, capsys, case):
    out = tmp_path / "out"
    extra, models = [], ("ref", "twin")
    a = args(files, out, mcq=False)
    if case == "missing attack":
        a[a.index("--attack-data") + 1] = str(tmp_path / "nope.txt")
    elif case == "empty test":
        (tmp_path / "empty.txt").write_text("\n \n")
        a[a.index("--forget-test") + 1] = str(tmp_path / "empty.txt")
    elif case == "steps 0":
        a[a.index("--steps") + 1] = "0"
    elif case == "eval-every > steps":
        a[a.index("--eval-every") + 1] = "5"
    elif case == "unloadable model":
        a += ["--model", str(bad_model(tmp_path))]
    elif case == "missing model":
        a += ["--model", str(tmp_path / "no_such_model")]
    elif case == "bad mcq":
        (tmp_path / "m.jsonl").write_text(json.dumps(MCQ[0]) + "\n{oops\n")
        a += ["--mcq-forget", str(tmp_path / "m.jsonl")]
    elif case == "mcq answer out of range":
        (tmp_path / "m.jsonl").write_text(json.dumps({**MCQ[0], "answer": 4}) + "\n")
        a += ["--mcq-forget", str(tmp_path / "m.jsonl")]
    elif case == "negative margin":
        a += ["--recover-margin", "-1"]
    elif case == "outdir in model":
        a[a.index("--outdir") + 1] = str(files / "ref" / "tamper")
    elif case == "outdir unrelated":
        out.mkdir()
        (out / "thesis.tex").write_text("years of work\n")
    try:
        rc = ta.main(a + extra)
    except SystemExit as e:                                     # argparse's error(): exits itself
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and err[0].startswith("error: "), err
    if case == "bad mcq":
        assert "line 2" in err[0]
    assert not (files / "ref" / "tamper").exists()
    if case == "outdir unrelated":
        assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    else:
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_unloadable_model_is_one_line_in_a_subprocess(files, tmp_path):
    """The script as users run it: no traceback for a model folder whose weights cannot be read."""
    import subprocess
    import sys
    d = tmp_path / "noweights"
    d.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (d / f).write_bytes((files / "ref" / f).read_bytes())
    (d / "model.safetensors").write_bytes(b"not a safetensors file")
    a = args(files, tmp_path / "out", models=("ref", "noweights"), mcq=False)
    a[a.index(str(files / "noweights"))] = str(d)
    p = subprocess.run([sys.executable, str(Path(ta.__file__)), *a], capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = [ln for ln in p.stderr.splitlines() if ln.strip() and "%|" not in ln]
    assert p.returncode == 1, p.stderr
    assert lines[-1].startswith("error: cannot load model") and "Traceback" not in p.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------
# plot_tamper.py
# ------------------------------------------------------------------------------------------------
def test_plot_reads_the_attack_and_draws(run_a, tmp_path, capsys):
    import plot_tamper as pt
    out, _ = run_a
    models, level, margin = pt.read_inputs(out)
    assert [m["name"] for m in models] == ["ref", "twin"]
    assert level == float(read_csv(out / "ref" / "attack_curve.csv")[0]["forget_nll"]) and margin == 0.1
    assert models[1]["curve"]["forget_nll"] == [float(r["forget_nll"])
                                                for r in read_csv(out / "twin" / "attack_curve.csv")]
    fig = pt.draw(models, level, margin)
    assert [ax.get_title().split(" ")[0] for ax in fig.axes] == ["Forget-test", "Forget", "Retain-test"]
    assert pt.main(["--indir", str(out), "--outdir", str(tmp_path / "plots")]) == 0
    png = tmp_path / "plots" / "recovery.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(png.stat().st_mode) == 0o666 & ~umask
    capsys.readouterr()
    assert pt.main(["--indir", str(tmp_path / "nothing"), "--outdir", str(tmp_path / "p2")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and not (tmp_path / "p2").exists()
