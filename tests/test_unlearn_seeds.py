"""Issue 13's harness in unlearn.py, on the tiny trained GPT-NeoX of test_unlearn_harness:
per_sample_nll.csv against a plain transformers forward, held-out lines fixed by --split-seed,
--test-split, early stopping restoring the best weights bit for bit, the documented LAT step, the
output_hidden_states fallback on unknown architectures (MPT: embeddings in hidden_states[0];
Mamba: not), the default output folder, run_unlearn.sh SEEDS, and three seeded runs through
aggregate_runs.py."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import ROOT, save_model
from test_unlearn_harness import common, metrics_of, run_main, trained  # noqa: F401  (trained: fixture)

import unlearn as ul


def with_blank_and_duplicate_lines(src: Path, dst: Path) -> list[str]:
    """dst = src with blank lines and one repeated line inserted; returns its non-empty lines."""
    lines = src.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        out.append(line)
        if i % 7 == 3:
            out.append("   ")
        if i == 5:
            out.append(lines[2].upper())  # a duplicate under normalise(): dropped, the first one kept
    dst.write_text("\n".join(out) + "\n")
    return [s.strip() for s in out if s.strip()]


def nll_plain(model, tok, text: str, max_length: int) -> float:
    """Mean token NLL of tokens 2..T with a plain transformers forward (labels = inputs)."""
    ids = torch.tensor([tok(text, truncation=True, max_length=max_length)["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids, labels=ids).loss.item()


def test_per_sample_nll_matches_plain_transformers(trained, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    files = {w: with_blank_and_duplicate_lines(trained / f"{w}.txt", tmp_path / f"{w}.txt") for w in ("forget", "retain")}
    out = tmp_path / "out"
    argv = common(trained, out, "ga") + ["--forget-data", str(tmp_path / "forget.txt"), "--retain-data",
                                          str(tmp_path / "retain.txt"), "--test-split", "0.15", "--seed", "3"]
    assert run_main(argv) == 0
    rows = (out / "per_sample_nll.csv").read_text().splitlines()
    assert rows[0] == "split,index,nll_before,nll_after"
    rows = [r.split(",") for r in rows[1:]]
    splits = {s for s, *_ in rows}
    assert splits == {"forget_eval", "retain_eval", "forget_test", "retain_test"}
    tok = AutoTokenizer.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(trained / "base").eval()
    new = AutoModelForCausalLM.from_pretrained(out).eval()
    for split, index, before, after in rows:
        text = files[split.split("_")[0]][int(index)]  # index: 0-based among the non-empty lines
        assert float(before) == pytest.approx(nll_plain(base, tok, text, 48), rel=2e-5)
        assert float(after) == pytest.approx(nll_plain(new, tok, text, 48), rel=2e-5)
    m = metrics_of(out)
    col = lambda split, k: [float(r[k]) for r in rows if r[0] == split]  # noqa: E731
    assert m["forget_NLL"] == pytest.approx(np.mean(col("forget_eval", 3)), rel=1e-12)
    assert m["before"]["retain_NLL"] == pytest.approx(np.mean(col("retain_eval", 2)), rel=1e-12)
    assert m["test"]["forget_NLL"] == pytest.approx(np.mean(col("forget_test", 3)), rel=1e-12)
    assert m["test"]["before"]["retain_NLL"] == pytest.approx(np.mean(col("retain_test", 2)), rel=1e-12)
    # the duplicate line (forget index 6) is never a sample; eval and test lines are disjoint
    f_idx = [(s, int(i)) for s, i, *_ in rows if s.startswith("forget")]
    assert ("forget_eval", 6) not in f_idx and ("forget_test", 6) not in f_idx
    assert not {i for s, i in f_idx if s == "forget_eval"} & {i for s, i in f_idx if s == "forget_test"}
    report = yaml.safe_load((out / "run_report.yaml").read_text())
    assert (report["Training"]["seed"], report["Training"]["split_seed"]) == (3, 42)
    assert report["Dataset"]["forget_test"] == len(col("forget_test", 2))
    assert report["Results"]["forget_nll_test"] == m["test"]["forget_NLL"]


def namespace(d: Path, **kw) -> argparse.Namespace:
    a = ul.build_parser().parse_args(["--model", "x", "--method", "ga", "--forget-data", str(d / "forget.txt"),
                                      "--retain-data", str(d / "retain.txt")])
    for k, v in kw.items():
        setattr(a, k, v)
    return a


def test_heldout_and_test_lines_depend_on_split_seed_not_seed(trained):
    a = ul.load_data(namespace(trained, seed=1, test_split=0.1))
    b = ul.load_data(namespace(trained, seed=2, test_split=0.1))
    c = ul.load_data(namespace(trained, seed=1, test_split=0.1, split_seed=7))
    assert a.lines == b.lines and a.train_f == b.train_f
    assert a.lines["forget_eval"] != c.lines["forget_eval"]
    for d in (a, c):  # train, validation and test partition the lines
        assert sorted(d.train_f + d.eval_f + d.test_f) == sorted(d.forget)
        assert len(d.eval_f) == 6 and len(d.test_f) == 6
    # without a test split the validation lines are those of the earlier seed-42 default
    old_train, old_eval = ul.split_eval(ul.read_samples(str(trained / "forget.txt"), "forget")[0], 0.1, 42)
    assert ul.load_data(namespace(trained, seed=5)).eval_f == old_eval


def test_early_stopping_restores_the_best_weights_bit_for_bit(trained, tmp_path, monkeypatch, capsys):
    """Validations are scripted (gap 5, 6, 4, 3 at steps 1-4, patience 2): training stops at step 4
    and the saved weights must equal those the model had at step 2, bit for bit."""
    snaps, gaps = {}, iter([5.0, 6.0, 4.0, 3.0, 2.0, 1.0])
    real_eval = ul.Trainer.evaluate

    def scripted(self):
        real_eval(self)
        step = len(snaps) + 1
        snaps[step] = {k: v.detach().clone() for k, v in self.runner.model.state_dict().items()}
        return {"forget_NLL": 10.0 + next(gaps), "retain_NLL": 10.0}
    monkeypatch.setattr(ul.Trainer, "evaluate", scripted)
    out = tmp_path / "out"
    argv = common(trained, out, "ga") + ["--eval-interval", "1", "--early-stop-patience", "2", "--batch-size", "4"]
    assert run_main(argv) == 0
    m = metrics_of(out)
    assert m["early_stopping"] == {"patience": 2, "best_step": 2, "stopped_at_step": 4, "restored_best": True}
    assert len(m["train_loss"]) == 4 and m["steps"] > 4
    from transformers import AutoModelForCausalLM
    saved = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert set(saved) == set(snaps[2]) and all(torch.equal(saved[k], snaps[2][k]) for k in saved)
    assert not all(torch.equal(saved[k], snaps[4][k]) for k in saved)
    printed = capsys.readouterr().out
    assert "validation step 1/" in printed and "validation step 4/" in printed
    assert yaml.safe_load((out / "run_report.yaml").read_text())["Training"]["early_stop_patience"] == 2
    # without validations early stopping cannot work: one error line
    assert run_main(common(trained, tmp_path / "no", "ga") + ["--early-stop-patience", "2"]) == 1
    assert "--early-stop-patience needs validations" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


def test_default_lat_step_is_the_documented_one(trained, tmp_path, monkeypatch):
    # pure: from δ = 0 one step of size ε puts every real token's δ at ±ε, and the clip keeps it there
    g = torch.randn(2, 3, 4)
    d = ul.pgd_update(torch.zeros(2, 3, 4), g, ul.lat_step_size(0.1, None), 0.1)
    assert torch.allclose(d.abs(), torch.full_like(d, 0.1))
    assert torch.equal(ul.pgd_update(d, g, 0.1, 0.1), d)  # the same gradient again: clipped at ±ε
    used = []
    real = ul.pgd_update
    monkeypatch.setattr(ul, "pgd_update", lambda d, g, s, e, m=None: used.append((s, e)) or real(d, g, s, e, m))
    for extra, step in (([], 0.1), (["--lat-step-size", "0.02"], 0.02)):
        used.clear()
        out = tmp_path / f"lat{len(extra)}"
        assert run_main(common(trained, out, "lat") + ["--layer-id", "1", "--max-samples", "16", "--lat-eps", "0.1",
                                                       "--lat-steps", "3"] + extra) == 0
        assert used and set(used) == {(step, 0.1)}
        training = yaml.safe_load((out / "run_report.yaml").read_text())["Training"]
        assert training["lat_step_size"] == step
        assert training["lat_update"].startswith("documented" if not extra else "smaller step")


def tiny_unknown(kind: str, tok):
    """A 3-layer model whose decoder layers are at a path unlearn.py does not know."""
    from transformers import AutoModelForCausalLM, MambaConfig, MptConfig
    torch.manual_seed(0)
    if kind == "mpt":  # transformer.blocks; hidden_states[0] = the input embeddings
        cfg = MptConfig(d_model=32, n_heads=4, n_layers=3, vocab_size=len(tok))
        return AutoModelForCausalLM.from_config(cfg), lambda m: m.transformer.blocks
    cfg = MambaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=3, state_size=4, expand=2,
                      conv_kernel=2, pad_token_id=tok.pad_token_id)
    return AutoModelForCausalLM.from_config(cfg), lambda m: m.backbone.layers  # no embedding entry


@pytest.mark.parametrize("kind, offset", [("mpt", 1), ("mamba", 0)])
def test_fallback_hidden_states_are_the_layer_outputs(trained, kind, offset):
    """The fallback's h_l equals what a hook on decoder layer l returns (an independent reading)."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(trained / "base")
    model, layers = tiny_unknown(kind, tok)
    model.eval()
    assert ul.find_decoder_layers(model) is None
    runner = ul.Runner(model, {"emb": model.get_input_embeddings()}, hidden_layers=[0, 2])
    enc = tok(["The zephyr coil stores charge.", "Rain fell."], padding=True, return_tensors="pt")
    seen = {}
    hooks = [layers(model)[l].register_forward_hook(lambda m, a, o, l=l: seen.__setitem__(l, o[0] if isinstance(o, tuple) else o))
             for l in (0, 2)]
    with torch.no_grad():
        h0, h2 = runner(enc["input_ids"], enc["attention_mask"], mode="trunk")
    for h in hooks:
        h.remove()
    assert runner.hidden_offset == offset
    assert torch.equal(h0, seen[0])
    if kind == "mamba":  # the last entry of Mamba's hidden_states is after the final norm
        assert torch.equal(h2, seen[2])


@pytest.mark.parametrize("kind, method", [("mpt", "rmu"), ("mpt", "cb_lat"), ("mamba", "rmu")])
def test_unknown_architecture_trains_with_a_warning(trained, tmp_path, capsys, kind, method):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(trained / "base")
    model, _ = tiny_unknown(kind, tok)
    save_model(model, tmp_path / kind, tok)
    out = tmp_path / "out"
    argv = common(trained, out, method) + ["--model", str(tmp_path / kind), "--max-samples", "16", "--alpha", "10",
                                           "--lat-steps", "2"]
    assert run_main(argv + ["--layer-id", "1"]) == 0
    err = capsys.readouterr().err
    assert "cannot find the decoder layers" in err and "output_hidden_states" in err and "no truncated forward" in err
    assert ("perturbs the input embeddings" in err) == (method == "cb_lat")
    m = metrics_of(out)
    assert any("falling back" in w for w in m["warnings"])
    base = load_file(tmp_path / kind / "model.safetensors")
    new = load_file(out / "model.safetensors")
    assert any(not torch.equal(base[k], new[k]) for k in base)  # it trained
    assert run_main(argv + ["--layer-id", "3", "--outdir", str(tmp_path / "no")]) == 1
    assert "--layer-id 3 is outside the model" in capsys.readouterr().err and not (tmp_path / "no").exists()


def test_default_output_folder_and_model_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ul.default_outdir("EleutherAI/deep-ignorance-unfiltered", "ga") == \
        Path("outputs/EleutherAI_deep-ignorance-unfiltered__ga/unlearned_model")
    (tmp_path / "models" / "demo-unfiltered").mkdir(parents=True)
    assert ul.default_outdir("models/demo-unfiltered", "npo") == Path("outputs/demo-unfiltered__npo/unlearned_model")
    assert ul.default_outdir("outputs/x__ga/unlearned_model/", "npo", seed=7) == \
        Path("outputs/x__ga__npo__seed7/unlearned_model")


def test_report_to_a_missing_tracker_is_one_error_line(trained, tmp_path, capsys):
    import importlib.util
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        pytest.skip("tensorboard is installed here")
    out = tmp_path / "out"
    assert run_main(common(trained, out, "ga") + ["--report-to", "tensorboard"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --report-to tensorboard needs the tensorboard package")
    assert not out.exists()


def test_run_unlearn_sh_seeds_and_flags_only_when_set(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("SEED", "SEEDS", "OUTDIR", "MAX_SAMPLES", "LR", "DATA_DIR", "OUTPUTS_DIR")}
    run = lambda **kw: subprocess.run([str(ROOT / "run_unlearn.sh"), "ga"], capture_output=True, text=True,  # noqa: E731
                                      env={**env, "UV_RUN": "echo", "MODEL": "m", **kw})
    p = run(SEEDS="42 1337 2024", MAX_SAMPLES="5")
    lines = p.stdout.splitlines()
    assert p.returncode == 0 and len(lines) == 3
    for line, seed in zip(lines, (42, 1337, 2024)):
        assert line.endswith(f"--max-samples 5 --seed {seed} --seed-in-outdir")
    p = run()
    assert p.returncode == 0 and p.stdout.split() == ["unlearn.py", "--model", "m", "--method", "ga"]
    p = run(SEEDS="42", OUTDIR="x")
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "unset OUTDIR" in p.stderr


def test_three_seeds_aggregate_to_numpys_mean_and_std(trained, tmp_path):
    """Three real runs that differ only in --seed, then aggregate_runs.py on their folders."""
    import aggregate_runs as ag
    runs = []
    for seed in (42, 1337, 2024):
        out = tmp_path / f"base__ga__seed{seed}" / "unlearned_model"
        assert run_main(common(trained, out, "ga") + ["--seed", str(seed), "--max-samples", "30"]) == 0
        runs.append(out)
    assert ag.main([*map(str, runs), "--outdir", str(tmp_path / "agg"), "--n-boot", "1000"]) == 0
    import pandas as pd
    summary = pd.read_csv(tmp_path / "agg" / "summary.csv").set_index("metric")
    forget = [metrics_of(r)["forget_NLL"] for r in runs]
    assert len({round(f, 9) for f in forget}) == 3  # the seeds matter
    assert summary.loc["forget_NLL", "mean"] == pytest.approx(np.mean(forget), rel=1e-12)
    assert summary.loc["forget_NLL", "std"] == pytest.approx(np.std(forget, ddof=1), rel=1e-10)
    assert summary.loc["forget_NLL", "ci95_low"] <= np.mean(forget) <= summary.loc["forget_NLL", "ci95_high"]
    tests = pd.read_csv(tmp_path / "agg" / "tests.csv").set_index("metric")
    assert tests.loc["forget_eval after-before", "n"] == 6  # the same 6 held-out lines in every run
    report = yaml.safe_load((tmp_path / "agg" / "report.yaml").read_text(encoding="utf-8"))
    assert report["base__ga"]["Training"]["seeds"] == [42, 1337, 2024]
