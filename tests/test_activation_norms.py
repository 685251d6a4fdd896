"""collect_activation_norms.py and plot_activation_norms.py against a direct reference.

The reference keeps both models in memory and runs them text by text without padding, through the
causal LM with ``output_hidden_states=True`` (logits and all): an independent route to the same
numbers as the tool's cached, batched, length-sorted, base-model-only two-pass computation.
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import collect_activation_norms as can
import plot_activation_norms as pan
from conftest import ROOT, TINY_TEXTS, build_tokenizer, make_tiny_model, save_model

MAX_LEN = 40
CHANGED_LAYER = 1  # model B = model A with only decoder layer 1 perturbed
REQUIRED = ["layer", "split", "model_a_norm_L1", "model_a_norm_L2", "model_b_norm_L1", "model_b_norm_L2",
            "mean_dh_L1", "mean_dh_L2"]

FORGET = TINY_TEXTS + [TINY_TEXTS[0] + " " + TINY_TEXTS[1], " ".join(TINY_TEXTS), "Zephyr coils."]
RETAIN = [TINY_TEXTS[3], "Bread.", TINY_TEXTS[5] + " " + TINY_TEXTS[2] + " " + TINY_TEXTS[4], TINY_TEXTS[1]]


def perturb_layer(model, layer: int, seed: int = 1):
    """Add noise to every weight of one decoder layer (and nothing else)."""
    layers = getattr(model.base_model, "layers", None) or model.base_model.h
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layers[layer].parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    d = tmp_path_factory.mktemp("texts")
    (d / "forget.txt").write_text("\n".join(FORGET) + "\n")
    (d / "retain.txt").write_text("\n\n".join(RETAIN) + "\n")  # blank lines are skipped
    (d / "empty.txt").write_text("\n  \n")
    return d


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Saved model pairs: {arch: (dir_a, dir_b)} plus odd ones for the error paths."""
    d = tmp_path_factory.mktemp("models")
    tok = build_tokenizer()
    out = {}
    for arch in ("gpt_neox", "llama", "gpt2"):
        a = save_model(make_tiny_model(arch, seed=0), d / f"{arch}_a", tok)
        b = save_model(perturb_layer(make_tiny_model(arch, seed=0), CHANGED_LAYER), d / f"{arch}_b", tok)
        out[arch] = (a, b)
    out["3_layers"] = save_model(make_tiny_model("gpt_neox", seed=0, layers=3), d / "l3", tok)
    out["hidden_48"] = save_model(make_tiny_model("gpt_neox", seed=0, hidden=48), d / "h48", tok)
    other_tok = build_tokenizer(texts=["completely different training text for another tokenizer"] * 3,
                                vocab_size=300)
    out["no_tok"] = save_model(make_tiny_model("gpt_neox", seed=0), d / "no_tok")  # weights of gpt_neox A
    out["other_tok"] = save_model(make_tiny_model("gpt_neox", seed=0), d / "other_tok", other_tok)
    return out


def run_tool(tmp_path, a, b, texts, *extra, name="out"):
    """main() in-process; returns (exit code, CSV as DataFrame or None, outdir)."""
    outdir = tmp_path / name
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    argv = ["--model-a", str(a), "--model-b", str(b), "--forget-text", str(texts / "forget.txt"),
            "--retain-text", str(texts / "retain.txt"), "--outdir", str(outdir), "--device", "cpu",
            "--dtype", "fp32", "--max-length", str(MAX_LEN), "--cache-dir", str(cache), *map(str, extra)]
    rc = can.main(argv)
    csv = outdir / "activation_stats.csv"
    assert list(cache.iterdir()) == [], "the activation cache must be removed"
    return rc, (pd.read_csv(csv) if csv.exists() else None), outdir


def reference(a, b, texts_by_split, max_length=MAX_LEN, round_a=None):
    """Both models in memory, one text at a time, no padding: token-weighted means in float64."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a)
    ma = AutoModelForCausalLM.from_pretrained(a, dtype=torch.float32).eval()
    mb = AutoModelForCausalLM.from_pretrained(b, dtype=torch.float32).eval()
    rows = []
    for split, texts in texts_by_split.items():
        sums, n = None, 0
        for text in texts:
            ids = torch.tensor([tok(text, truncation=True, max_length=max_length)["input_ids"]])
            with torch.no_grad():
                ha = ma(input_ids=ids, output_hidden_states=True).hidden_states
                hb = mb(input_ids=ids, output_hidden_states=True).hidden_states
            if sums is None:
                sums = np.zeros((len(ha), 7))
            for layer, (x, y) in enumerate(zip(ha, hb)):
                x = x[0]
                if round_a is not None:
                    x = x.to(round_a).float()
                x, y = x.double(), y[0].double()
                dh = y - x
                cos = (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1))
                sums[layer] += [x.abs().sum(-1).sum(), x.norm(dim=-1).sum(), y.abs().sum(-1).sum(),
                                y.norm(dim=-1).sum(), dh.abs().sum(-1).sum(), dh.norm(dim=-1).sum(), cos.sum()]
            n += ids.shape[1]
        for layer in range(len(sums)):
            rows.append([layer, split, *(sums[layer] / n), n])
    cols = REQUIRED + ["mean_cos_sim", "n_tokens"]
    return pd.DataFrame(rows, columns=cols).sort_values(["layer", "split"]).reset_index(drop=True)


def by_key(df):
    return df.sort_values(["layer", "split"]).reset_index(drop=True)


# -----------------------------------------------------------------------------------------------------


def test_csv_matches_reference_and_batch_size_does_not_matter(tmp_path, models, texts):
    a, b = models["gpt_neox"]
    rc1, df1, _ = run_tool(tmp_path, a, b, texts, "--batch-size", 1, name="bs1")
    rc8, df8, out8 = run_tool(tmp_path, a, b, texts, "--batch-size", 8, name="bs8")
    rc, _, again = run_tool(tmp_path, a, b, texts, "--batch-size", 8, name="again")
    assert rc1 == rc8 == rc == 0
    csv = "activation_stats.csv"
    assert (out8 / csv).read_bytes() == (again / csv).read_bytes(), "same inputs, same machine: same bytes"
    assert list(df8.columns[:8]) == REQUIRED
    ref = reference(a, b, {"forget": FORGET, "retain": RETAIN})
    df1, df8 = by_key(df1), by_key(df8)
    assert len(df8) == 2 * 5 and (df8["n_tokens"] == ref["n_tokens"]).all()
    cols = REQUIRED[2:] + ["mean_cos_sim"]
    np.testing.assert_allclose(df8[cols].to_numpy(), ref[cols].to_numpy(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(df1[cols].to_numpy(), df8[cols].to_numpy(), rtol=1e-5, atol=1e-7)
    # hidden_states[k] is the input of decoder layer k: layers 0..k are untouched by a change in layer k.
    before = df8["layer"] <= CHANGED_LAYER
    assert (df8.loc[before, ["mean_dh_L1", "mean_dh_L2"]] == 0).all().all()
    assert (df8.loc[before, "model_a_norm_L2"] == df8.loc[before, "model_b_norm_L2"]).all()
    assert (df8.loc[~before, "mean_dh_L2"] > 1e-3).all()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_other_architectures_match_reference(tmp_path, models, texts, arch):
    a, b = models[arch]
    rc, df, _ = run_tool(tmp_path, a, b, texts, "--batch-size", 3)
    assert rc == 0
    ref = reference(a, b, {"forget": FORGET, "retain": RETAIN})
    cols = REQUIRED[2:] + ["mean_cos_sim"]
    np.testing.assert_allclose(by_key(df)[cols].to_numpy(), ref[cols].to_numpy(), rtol=1e-4, atol=1e-7)
    assert (df.loc[df["layer"] <= CHANGED_LAYER, "mean_dh_L1"] == 0).all()


def test_fp16_cache_within_fp16_rounding(tmp_path, models, texts, capsys):
    a, b = models["gpt_neox"]
    rc, df, _ = run_tool(tmp_path, a, b, texts, "--batch-size", 4, "--cache-fp16")
    assert rc == 0
    assert "fp16" in capsys.readouterr().err
    df = by_key(df)
    exact = reference(a, b, {"forget": FORGET, "retain": RETAIN})
    rounded = reference(a, b, {"forget": FORGET, "retain": RETAIN}, round_a=torch.float16)
    # Model A's own norms are taken before rounding; model B's are never rounded.
    norms = REQUIRED[2:6]
    np.testing.assert_allclose(df[norms].to_numpy(), exact[norms].to_numpy(), rtol=1e-4)
    # dh uses fp16-rounded h_A: equal to a reference that rounds the same way, and within fp16's
    # relative precision (2^-11 per element) of ||h_A|| from the exact values.
    for p in ("L1", "L2"):
        np.testing.assert_allclose(df[f"mean_dh_{p}"], rounded[f"mean_dh_{p}"], rtol=1e-4, atol=1e-7)
        err = (df[f"mean_dh_{p}"] - exact[f"mean_dh_{p}"]).abs()
        assert (err <= 2.0 ** -10 * exact[f"model_a_norm_{p}"]).all()


def test_fp16_overflow_falls_back_instead_of_inf(tmp_path, models, texts, capsys):
    h = torch.tensor([[1.0, -2.5e5], [3.0, 4.0]])
    cached, fell_back = can.to_cache_dtype(h, torch.float16)
    assert fell_back and cached.dtype == torch.float32 and torch.equal(cached, h)
    cached, fell_back = can.to_cache_dtype(h / 1e5, torch.float16)
    assert not fell_back and cached.dtype == torch.float16

    # A model with massive activations: embeddings scaled far beyond fp16's range.
    model = make_tiny_model("gpt_neox", seed=0)
    with torch.no_grad():
        model.gpt_neox.embed_in.weight.mul_(1e8)
    big = save_model(model, tmp_path / "big", build_tokenizer())
    rc, df, _ = run_tool(tmp_path, big, big, texts, "--cache-fp16")
    assert rc == 0
    assert "exceeds the fp16 range" in capsys.readouterr().err
    assert np.isfinite(df[REQUIRED[2:]].to_numpy()).all()
    assert df["model_a_norm_L2"].max() > 65504
    inner = df["layer"] < df["layer"].max()  # all but the last hidden state (after the final norm) overflow
    assert (df.loc[inner, "mean_dh_L2"] == 0).all()


@pytest.mark.parametrize("where", ["pass1_error", "pass2_ctrl_c", "sigterm"])
def test_cache_removed_after_interrupted_run(tmp_path, models, texts, monkeypatch, where):
    a, b = models["gpt_neox"]
    real, calls = can.hidden_states, []
    sigterm_before = signal.getsignal(signal.SIGTERM)

    def flaky(*args, **kwargs):
        calls.append(1)
        if where == "pass1_error" and len(calls) == 2:
            raise RuntimeError("boom")
        n_pass1 = 4  # 9 forget texts in 3 batches of <= 4, 4 retain texts in 1
        if where == "pass2_ctrl_c" and len(calls) == n_pass1 + 2:
            raise KeyboardInterrupt
        if where == "sigterm" and len(calls) == n_pass1 + 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(can, "hidden_states", flaky)
    if where == "pass1_error":
        with pytest.raises(RuntimeError, match="boom"):
            run_tool(tmp_path, a, b, texts, "--batch-size", 4)  # run_tool asserts the cache is gone
        assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
        assert not (tmp_path / "out").exists()
    else:
        rc, df, _ = run_tool(tmp_path, a, b, texts, "--batch-size", 4)
        assert rc == (143 if where == "sigterm" else 130) and df is None
    assert signal.getsignal(signal.SIGTERM) is sigterm_before


def test_model_b_without_tokenizer_gets_model_a_ids(tmp_path, models, texts, capsys):
    a, _ = models["gpt_neox"]
    rc, df, _ = run_tool(tmp_path, a, models["no_tok"], texts, "--batch-size", 8)
    assert rc == 0 and "no tokenizer of its own" in capsys.readouterr().err
    assert (df[["mean_dh_L1", "mean_dh_L2"]] == 0).all().all()  # same weights, same ids: identical states


def one_error_line(capsys, contains: str):
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and contains in err[0], err
    return err[0]


@pytest.mark.parametrize("case, contains", [
    ("missing_forget", "does not exist"),
    ("empty_retain", "is empty"),
    ("max_length_0", "--max-length must be positive"),
    ("layers", "different numbers of layers"),
    ("hidden", "different hidden sizes"),
    ("tokenizer", "encodes"),
    ("missing_dir", "does not exist"),
])
def test_bad_input_one_line_no_csv(tmp_path, models, texts, capsys, case, contains):
    a, b = models["gpt_neox"]
    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / "activation_stats.csv").write_text("previous results\n")  # must survive a failed run
    args = {"--model-a": a, "--model-b": b, "--forget-text": texts / "forget.txt",
            "--retain-text": texts / "retain.txt", "--max-length": MAX_LEN}
    if case == "missing_forget":
        args["--forget-text"] = texts / "nope.txt"
    elif case == "empty_retain":
        args["--retain-text"] = texts / "empty.txt"
    elif case == "max_length_0":
        args["--max-length"] = 0
    elif case == "layers":
        args["--model-b"] = models["3_layers"]
    elif case == "hidden":
        args["--model-b"] = models["hidden_48"]
    elif case == "tokenizer":
        args["--model-b"] = models["other_tok"]
    elif case == "missing_dir":
        args["--model-b"] = tmp_path / "no_such_model"
    argv = [str(x) for kv in args.items() for x in kv] + ["--outdir", str(outdir), "--device", "cpu",
                                                         "--cache-dir", str(tmp_path)]
    assert can.main(argv) == 1
    one_error_line(capsys, contains)
    assert (outdir / "activation_stats.csv").read_text() == "previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no cache dir left behind


def test_offline_hub_id_is_one_sentence(tmp_path, models, texts, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    a, _ = models["gpt_neox"]
    rc, df, _ = run_tool(tmp_path, a, "EleutherAI/not-a-cached-model-xyz", texts)
    assert rc == 1 and df is None
    line = one_error_line(capsys, "EleutherAI/not-a-cached-model-xyz")
    assert "Hugging Face hub" in line and "local cache" in line


def test_hub_id_without_offline_flag_fails_fast_in_one_line(tmp_path, texts):
    """The real CLI with HF_HUB_OFFLINE unset: no hub here (or, with network, no such repo), so one
    sentence and exit 1 -- not from_pretrained's "Retrying in 8s" warnings before it."""
    model = f"model-diffs-test/does-not-exist-{secrets.token_hex(6)}"
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"} | {"OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(ROOT / "collect_activation_norms.py"), "--model-a", model,
                        "--model-b", model, "--forget-text", str(texts / "forget.txt"),
                        "--retain-text", str(texts / "retain.txt"), "--outdir", str(tmp_path / "out")],
                       capture_output=True, text=True, env=env)
    err = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 1 and len(err) == 1 and err[0].startswith("error: ") and model in err[0], p.stderr
    assert "not in the local cache" in err[0] or "nor a model on the Hugging Face hub" in err[0]
    assert "Retry" not in p.stderr and not (tmp_path / "out").exists()


def test_refuses_when_disk_too_small(tmp_path, models, texts, capsys, monkeypatch):
    a, b = models["gpt_neox"]
    monkeypatch.setattr(can.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    rc, df, _ = run_tool(tmp_path, a, b, texts)
    assert rc == 1 and df is None
    one_error_line(capsys, "the activation cache needs")


def test_cache_size_prediction_and_batching():
    assert can.cache_bytes(n_tokens=100, n_states=33, hidden=4096, itemsize=2) == 100 * 33 * 4096 * 2
    lengths = [3, 9, 1, 9, 5, 2, 7]
    batches = can.length_sorted_batches(lengths, 3)
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert [[lengths[i] for i in b] for b in batches] == [[9, 9, 7], [5, 3, 2], [1]]
    ids, mask = can.pad_right([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_plots_written(tmp_path, capsys):
    rows = [{"layer": l, "split": s, "model_a_norm_L1": 10.0 + l, "model_a_norm_L2": 1.0 + l,
             "model_b_norm_L1": 10.0 + l - (s == "forget") * l, "model_b_norm_L2": 1.0 + l,
             "mean_dh_L1": (s == "forget") * l * 2.0, "mean_dh_L2": (s == "forget") * l * 0.2}
            for l in range(5) for s in ("forget", "retain")]
    csv = tmp_path / "activation_stats.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    outdir = tmp_path / "plots" / "a_vs_b" / "activation_plots"
    assert pan.main(["--csv", str(csv), "--outdir", str(outdir), "--name", "a_vs_b",
                     "--model-a-label", "A", "--model-b-label", "B"]) == 0
    for name in ("activation_norms_forget.png", "activation_norms_retain.png",
                 "activation_diffs_forget_vs_retain.png"):
        assert (outdir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert pan.main(["--csv", str(tmp_path / "missing.csv"), "--outdir", str(tmp_path / "p2")]) == 1
    one_error_line(capsys, "does not exist")
    (tmp_path / "empty.csv").write_text("")
    assert pan.main(["--csv", str(tmp_path / "empty.csv"), "--outdir", str(tmp_path / "p2")]) == 1
    one_error_line(capsys, "empty")
    assert not (tmp_path / "p2").exists()


# -----------------------------------------------------------------------------------------------------
# Output faults, damaged weights, non-finite activations, leftovers of killed runs


@pytest.fixture
def no_loading(monkeypatch):
    """Fails the test if a model is loaded: these refusals must come before pass 1."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded although the problem could be found before")
    monkeypatch.setattr(can, "load_compared_model", refuse)


def test_outdir_faults_are_one_line_before_any_model_runs(tmp_path, models, texts, capsys, monkeypatch, no_loading):
    """(An existing folder with other files is fine: the tool only adds activation_stats.csv.)"""
    a, b = models["gpt_neox"]
    (tmp_path / "a_file").write_text("keep me\n")
    cases = {
        "an existing file": (tmp_path / "a_file", "exists and is not a folder"),
        "under a file": (tmp_path / "a_file" / "x", "a_file is not a folder"),
        "inside model A": (a / "stats", "is inside the input"),
        "cannot be created": (Path("/proc/model-diffs-test/out"), "cannot write --outdir"),
    }
    for name, (outdir, expect) in cases.items():
        argv = ["--model-a", str(a), "--model-b", str(b), "--forget-text", str(texts / "forget.txt"),
                "--retain-text", str(texts / "retain.txt"), "--outdir", str(outdir), "--device", "cpu",
                "--cache-dir", str(tmp_path / "cache")]
        assert can.main(argv) == 1, name
        one_error_line(capsys, expect)
    assert (tmp_path / "a_file").read_text() == "keep me\n"

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "ro"))
    monkeypatch.setattr(can.tempfile, "TemporaryFile", read_only)  # root ignores chmod 0555, so simulate it
    rc, df, _ = run_tool(tmp_path, a, b, texts, name="ro" + os.sep + "deeper")
    assert rc == 1 and df is None
    assert "Permission denied" in one_error_line(capsys, "cannot write --outdir")
    assert not (tmp_path / "ro").exists()


@pytest.mark.parametrize("failure", ["csv_disk_full", "csv_ctrl_c", "cache_disk_full"])
def test_full_disk_or_ctrl_c_keeps_the_previous_csv(tmp_path, models, texts, capsys, monkeypatch, failure):
    import errno

    import safetensors.torch
    from safetensors import SafetensorError
    a, b = models["gpt_neox"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "activation_stats.csv").write_text("previous results\n")
    (out / "notes.txt").write_text("mine\n")

    def partial_then(exc):
        def to_csv(self, path, **kwargs):
            Path(path).write_text("layer,split\n0,")
            raise exc
        return to_csv
    if failure == "csv_disk_full":
        monkeypatch.setattr(pd.DataFrame, "to_csv", partial_then(OSError(errno.ENOSPC, "No space left on device")))
    elif failure == "csv_ctrl_c":
        monkeypatch.setattr(pd.DataFrame, "to_csv", partial_then(KeyboardInterrupt()))
    else:  # what safetensors really raises on a full disk
        def save_file(tensors, filename, metadata=None):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    rc, df, _ = run_tool(tmp_path, a, b, texts)  # run_tool asserts the cache is gone
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith(("error", "Traceback", "interrupted"))]
    assert rc == (130 if failure == "csv_ctrl_c" else 1) and len(err) == 1, err
    expect = {"csv_disk_full": "No space left on device", "csv_ctrl_c": "interrupted (Ctrl-C): the activation cache",
              "cache_disk_full": "cannot write the activation cache"}[failure]
    assert expect in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["activation_stats.csv", "notes.txt"]  # no temp file
    assert (out / "activation_stats.csv").read_text() == "previous results\n"


@pytest.mark.parametrize("damage", ["truncated", "garbage_header"])
def test_damaged_weight_file_is_named_before_pass_one(tmp_path, models, texts, capsys, damage, no_loading):
    import shutil
    a, b = models["gpt_neox"]
    broken = tmp_path / "broken"
    shutil.copytree(b, broken)
    f = broken / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:len(data) // 2] if damage == "truncated" else b"\xff" * 8 + data[8:])
    rc, df, _ = run_tool(tmp_path, a, broken, texts)
    assert rc == 1 and df is None
    line = one_error_line(capsys, "model.safetensors is damaged or truncated")
    assert str(broken) in line


def test_non_finite_activations_are_an_error_not_blank_cells(tmp_path, models, texts, capsys):
    a, _ = models["gpt_neox"]
    model = make_tiny_model("gpt_neox", seed=0)
    with torch.no_grad():
        model.gpt_neox.layers[2].mlp.dense_4h_to_h.bias.fill_(float("nan"))
    nan_b = save_model(model, tmp_path / "nan_b", build_tokenizer())
    rc, df, outdir = run_tool(tmp_path, a, nan_b, texts)
    assert rc == 1 and df is None and not outdir.exists()
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    assert len(err) == 1 and "model B's hidden state 3 is not finite" in err[0], err  # output of layer 2


def test_leftover_caches_removed_or_named_and_csv_mode(tmp_path, models, texts, capsys):
    import socket
    a, b = models["gpt_neox"]
    cache = tmp_path / "cache"
    cache.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = cache / "activation_cache_killed"  # its run (this host, pid no longer alive) is gone
    killed.mkdir()
    (killed / "owner.txt").write_text(f"{socket.gethostname()} {int(gone.stdout)}\n")
    (killed / "batch_000000.safetensors").write_bytes(b"\0" * 1000)
    unknown = cache / "activation_cache_unknown"  # no owner recorded: named, kept
    unknown.mkdir()
    old_umask = os.umask(0o022)
    try:
        argv = ["--model-a", str(a), "--model-b", str(b), "--forget-data", str(texts / "forget.txt"),
                "--retain-data", str(texts / "retain.txt"), "--outdir", str(tmp_path / "out"), "--device", "cpu",
                "--max-length", str(MAX_LEN), "--cache-dir", str(cache)]
        assert can.main(argv) == 0
    finally:
        os.umask(old_umask)
    err = capsys.readouterr().err
    assert f"removed {killed}" in err and f"{unknown} (0.0 B) is the activation cache of an earlier run" in err
    assert sorted(p.name for p in cache.iterdir()) == ["activation_cache_unknown"]
    csv = tmp_path / "out" / "activation_stats.csv"
    assert csv.stat().st_mode & 0o777 == 0o644 and (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    unknown.rmdir()
    ref, _, _ = run_tool(tmp_path, a, b, texts, name="ref")  # --forget-text: the same file under its own name
    assert csv.read_bytes() == (tmp_path / "ref" / "activation_stats.csv").read_bytes()
