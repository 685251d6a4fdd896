"""ablation_attack.py: directional ablation, ΔW rank ablation and RTN quantisation.

Every number is checked against an independent computation written here: the evaluation tool's
own functions for the unattacked numbers, the reference model's numbers for delta_rank at full
rank, a numpy round-to-nearest for the quantised weights, plain transformers forwards with
projection hooks written here, mean hidden states from ``output_hidden_states`` line by line.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import ablation_attack as aa
from conftest import TINY_TEXTS, build_tokenizer, make_tiny_model, save_model

FORGET = [t for t in TINY_TEXTS if "Glimmer" in t or "Zephyr" in t]
RETAIN = [t for t in TINY_TEXTS if t not in FORGET]
MCQ = [
    {"question": "What do glimmer reactors do?", "choices": ["hum", "sing", "rain", "bake"], "answer": 0},
    {"question": "Where is charge stored?", "choices": ["in bread", "in silver wire", "in rain"], "answer": 1},
    {"question": "When did the committee meet?", "choices": ["Monday", "Friday", "Tuesday", "never"], "answer": 2},
]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def tree_hashes(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def plant_rank2(model, seed: int = 7):
    """Add a rank-2 change U Vᵀ to every 2-D weight of the decoder layers (nothing else changes)."""
    g = torch.Generator().manual_seed(seed)
    changed = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and ".layers." in name:
                U = torch.randn(p.shape[0], 2, generator=g) * 0.6
                V = torch.randn(p.shape[1], 2, generator=g) * 0.6
                p += U @ V.T
                changed[name] = 2
    return changed


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("ablation")
    (d / "forget.txt").write_text("\n".join(FORGET * 2) + "\n")
    (d / "retain.txt").write_text("\n".join(RETAIN) + "\n")
    (d / "forget_test.txt").write_text("\n".join(FORGET) + "\n")
    (d / "retain_test.txt").write_text("\n\n".join(RETAIN) + "\n")
    (d / "forget_mcq.jsonl").write_text("".join(json.dumps(m) + "\n" for m in MCQ[:2]))
    (d / "retain_mcq.jsonl").write_text("".join(json.dumps(m) + "\n" for m in MCQ[2:]))
    ref = make_tiny_model("gpt_neox", seed=0, layers=2)
    save_model(ref, d / "ref", tiny_tokenizer)
    plant_rank2(ref)
    save_model(ref, d / "planted", tiny_tokenizer)
    return d


def args(files, out, *extra, ref="ref", models=("planted",)):
    a = ["--reference", str(files / ref)]
    for m in models:
        a += ["--model", str(files / m)]
    a += ["--direction-data-forget", str(files / "forget.txt"), "--direction-data-retain", str(files / "retain.txt"),
          "--forget-test", str(files / "forget_test.txt"), "--retain-test", str(files / "retain_test.txt"),
          "--mcq-forget", str(files / "forget_mcq.jsonl"), "--mcq-retain", str(files / "retain_mcq.jsonl"),
          "--device", "cpu", "--max-length", "64", "--batch-size", "4", "--outdir", str(out)]
    return a + list(extra)


@pytest.fixture(scope="module")
def run_a(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "ablation"
    before = {m: tree_hashes(files / m) for m in ("ref", "planted")}
    rc = aa.main(args(files, out, "--ranks", "0,2,4", "--bits", "8,4", "--group-size", "16", "--mcq-every-layer"))
    assert rc == 0
    rows = read_csv(out / "ablation.csv")
    return {"out": out, "rows": rows, "before": before}


def row(rows, attack, setting="", role="attacked"):
    (r,) = [r for r in rows if r["attack"] == attack and r["setting"] == setting and r["role"] == role]
    return r


NUMS = ["forget_nll", "retain_nll", "mcq_forget_acc", "mcq_retain_acc"]


# ------------------------------------------------------------------------------------------------
# Pure functions
# ------------------------------------------------------------------------------------------------
def numpy_rtn(W: np.ndarray, bits: int, group: int) -> np.ndarray:
    """Round-to-nearest, symmetric absmax per group of input columns, written out with loops (fp32)."""
    W = W.astype(np.float32)
    qmax = np.float32(2 ** (bits - 1) - 1)
    out = np.empty_like(W)
    g = W.shape[1] if group <= 0 else group
    for i in range(W.shape[0]):
        for start in range(0, W.shape[1], g):
            w = W[i, start:start + g]
            s = np.float32(np.max(np.abs(w))) / qmax
            if s == 0:
                out[i, start:start + g] = 0
            else:
                out[i, start:start + g] = np.clip(np.round(w / s), -qmax, qmax).astype(np.float32) * s
    return out


@pytest.mark.parametrize("bits,group", [(8, 16), (4, 16), (4, 10), (2, 0), (3, 7)])
def test_rtn_is_bit_exact(bits, group):
    g = torch.Generator().manual_seed(bits * 100 + group)
    W = torch.randn(12, 40, generator=g) * 0.3
    W[3, :20] = 0                                                   # an all-zero group
    got = aa.rtn_quantize(W, bits, group).numpy()
    want = numpy_rtn(W.numpy(), bits, group)
    assert got.dtype == np.float32
    assert np.array_equal(got, want)
    assert len(np.unique(got[5, :group or None])) <= 2 ** bits - 1       # levels of one group


def test_recovered_share_and_gap_threshold():
    assert aa.recovered_share(3.0, 2.0, 1.0, 0.01) == pytest.approx(0.5)
    assert aa.recovered_share(3.0, 1.0, 1.0, 0.01) == pytest.approx(1.0)
    assert aa.recovered_share(3.0, 3.5, 1.0, 0.01) == pytest.approx(-0.25)
    assert aa.recovered_share(1.005, 0.9, 1.0, 0.01) is None         # no gap to close
    assert aa.recovered_share(3.0, math.nan, 1.0, 0.01) is None


def test_remove_top_rank_undoes_a_planted_rank2_change():
    g = torch.Generator().manual_seed(1)
    W_ref = torch.randn(20, 30, generator=g, dtype=torch.float64)
    P = torch.randn(20, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 30, generator=g, dtype=torch.float64)
    W = W_ref + P
    US, Vh, S = aa.delta_factors(W - W_ref, 4)
    assert aa.numerical_rank(S, W.shape) == 2
    assert torch.equal(aa.remove_top_rank(W, US, Vh, 0), W)
    assert torch.allclose(aa.remove_top_rank(W, US, Vh, 2), W_ref, atol=1e-12)
    assert torch.allclose(aa.remove_top_rank(W, US, Vh, 4), W_ref, atol=1e-12)
    one = aa.remove_top_rank(W, US, Vh, 1)
    assert float(torch.linalg.matrix_norm(one - W_ref, 2)) == pytest.approx(float(S[1]), rel=1e-9)


# ------------------------------------------------------------------------------------------------
# Hooks: the ablated forward against plain transformers forwards with hooks written here
# ------------------------------------------------------------------------------------------------
def blocks_of(model, arch):
    return {"gpt_neox": lambda: model.gpt_neox.layers, "llama": lambda: model.model.layers,
            "gpt2": lambda: model.transformer.h}[arch]()


@pytest.mark.parametrize("arch", ["gpt_neox", "llama", "gpt2"])
def test_ablated_forward_equals_hand_written_hooks(arch, tiny_tokenizer):
    model = make_tiny_model(arch, seed=3, layers=2)
    g = torch.Generator().manual_seed(5)
    r = torch.randn(32, generator=g)
    r_hat = r / r.norm()
    ids = torch.tensor([tiny_tokenizer("Zephyr coils store charge in a spiral.")["input_ids"]])

    def proj(h):
        return h - (h @ r_hat).unsqueeze(-1) * r_hat

    blocks = blocks_of(model, arch)
    handles = [blocks[0].register_forward_pre_hook(lambda m, args: (proj(args[0]),) + tuple(args[1:]))]
    for b in blocks:
        handles.append(b.register_forward_hook(
            lambda m, i, o: (proj(o[0]),) + tuple(o[1:]) if isinstance(o, tuple) else proj(o)))
    with torch.no_grad():
        want = model(ids)
    for h in handles:
        h.remove()
    seen = []
    with torch.no_grad():
        plain = model(ids).logits
        with aa.ablate(model, r_hat):
            # hooks registered after the tool's run after them and see what the next block gets
            extra = [b.register_forward_hook(lambda m, i, o: seen.append(o[0] if isinstance(o, tuple) else o))
                     for b in blocks]
            got = model(ids)
            for h in extra:
                h.remove()
        again = model(ids).logits
    assert torch.allclose(got.logits, want.logits, atol=1e-6)
    assert not torch.allclose(got.logits, plain, atol=1e-3)           # the ablation does something
    assert torch.equal(again, plain)                                  # and the hooks are gone after
    assert len(seen) == len(blocks)
    for h in seen:                                                    # no component along r̂ left
        assert float((h @ r_hat).abs().max()) < 1e-5


def test_saved_directions_are_mean_differences(files, run_a, tiny_tokenizer):
    """r_l = mean over counted tokens (positions ≥ 1) of forget lines − of retain lines, per position,
    computed line by line (no padding) from output_hidden_states and a hook on the last block."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(files / "planted", dtype=torch.float32).eval()
    last = {}
    model.gpt_neox.layers[-1].register_forward_hook(lambda m, i, o: last.__setitem__("h", o[0] if isinstance(o, tuple) else o))

    def means(lines):
        sums, n = None, 0
        for text in lines:
            ids = torch.tensor([tiny_tokenizer(text)["input_ids"]])
            with torch.no_grad():
                hs = model(ids, output_hidden_states=True).hidden_states
            states = list(hs[:-1]) + [last["h"]]
            s = torch.stack([h[0, 1:].double().sum(0) for h in states])
            sums = s if sums is None else sums + s
            n += ids.shape[1] - 1
        return sums / n

    want = means((FORGET * 2)) - means(RETAIN)
    with safe_open(run_a["out"] / "directions.safetensors", "pt") as f:
        got = f.get_tensor("planted")
    assert got.shape == (3, 32)
    assert torch.allclose(got.double(), want, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# The whole tool on a planted rank-2 change
# ------------------------------------------------------------------------------------------------
def test_unattacked_numbers_equal_the_evaluation_tool(files, run_a, tmp_path):
    import evaluate_unlearning as ev
    out = tmp_path / "eval"
    rc = ev.main(["--model", str(files / "planted"), "--model", str(files / "ref"),
                  "--forget-test", str(files / "forget_test.txt"), "--retain-test", str(files / "retain_test.txt"),
                  "--forget-train", str(files / "forget.txt"), "--mcq-forget", str(files / "forget_mcq.jsonl"),
                  "--mcq-retain", str(files / "retain_mcq.jsonl"), "--few-shot", "0", "--generate", "0",
                  "--gen-tokens", "1", "--device", "cpu", "--max-length", "64", "--batch-size", "4",
                  "--outdir", str(out)])
    assert rc == 0
    for name, r in (("planted", row(run_a["rows"], "none")), ("ref", row(run_a["rows"], "none", role="reference"))):
        s = json.loads((out / name / "summary.json").read_text())
        assert float(r["forget_nll"]) == pytest.approx(s["forget_nll"], abs=1e-5)
        assert float(r["retain_nll"]) == pytest.approx(s["retain_nll"], abs=1e-5)
        assert float(r["mcq_forget_acc"]) == s["mcq"]["forget"]["acc"]
        assert float(r["mcq_retain_acc"]) == s["mcq"]["retain"]["acc"]


def test_delta_rank_zero_is_the_model_and_full_rank_is_the_reference(run_a):
    rows = run_a["rows"]
    model, ref = row(rows, "none"), row(rows, "none", role="reference")
    assert float(model["forget_nll"]) - float(ref["forget_nll"]) != pytest.approx(0, abs=1e-3)
    for k in NUMS:
        assert float(row(rows, "delta_rank", "r=0")[k]) == pytest.approx(float(model[k]), abs=1e-4)
        assert float(row(rows, "delta_rank", "r=2")[k]) == pytest.approx(float(ref[k]), abs=1e-4)   # planted rank 2
        assert float(row(rows, "delta_rank", "r=4")[k]) == pytest.approx(float(ref[k]), abs=1e-4)
    assert float(row(rows, "delta_rank", "r=2")["recovered"]) == pytest.approx(1.0, abs=1e-3)
    assert float(row(rows, "delta_rank", "r=0")["recovered"]) == pytest.approx(0.0, abs=1e-3)


def test_outputs_report_and_inputs_untouched(files, run_a):
    import yaml
    rows, out = run_a["rows"], run_a["out"]
    assert list(rows[0]) == aa.ABLATION_COLUMNS
    assert [r["attack"] for r in rows].count("direction") == 2            # positions 1..N, N = 2 layers
    assert sum(r["selected"] == "1" for r in rows) == 1
    assert row(rows, "none", role="reference")["recovered"] == ""
    rep = yaml.safe_load((out / "ablation_report.yaml").read_text())
    assert rep["Per_model"]["planted"]["delta_rank"]["max_rank"] == 2
    assert rep["Per_model"]["planted"]["delta_rank"]["changed_matrices"] == 8
    assert rep["Data"]["forget_test"]["sha256"] == hashlib.sha256((files / "forget_test.txt").read_bytes()).hexdigest()
    for m in ("ref", "planted"):
        assert tree_hashes(files / m) == run_a["before"][m]
    for p in out.iterdir():
        assert oct(p.stat().st_mode & 0o777) == oct(0o666 & ~aa._umask())
    assert sorted(p.name for p in out.iterdir()) == ["ablation.csv", "ablation_report.yaml", "directions.safetensors"]


def test_quantize_sets_rtn_weights_and_restores(files, tiny_tokenizer, tmp_path):
    """GPT-2 (Conv1D, weight [in, out]) and Llama (nn.Linear): the weights under the attack are the
    numpy RTN of each weight's rows of input columns; the head is left; all is restored after."""
    from types import SimpleNamespace
    from transformers import AutoModelForCausalLM
    for arch in ("gpt2", "llama"):
        save_model(make_tiny_model(arch, seed=4, layers=2), tmp_path / arch, tiny_tokenizer)
        model = AutoModelForCausalLM.from_pretrained(tmp_path / arch, dtype=torch.float32).eval()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        info = {"spec": arch, "index": aa.ablation_weight_index(tmp_path / arch)}
        seen = {}

        def measure(m, tok):
            seen[len(seen)] = {k: v.clone() for k, v in m.state_dict().items()}
            return {k: 0.0 for k in NUMS}

        a = SimpleNamespace(bits=[4], group_size=8)
        rows, rep = aa.quantize_attack(model, tiny_tokenizer, a, info, aa.key_map(model, info["index"]), measure)
        q = seen[0]
        name = "transformer.h.0.attn.c_attn.weight" if arch == "gpt2" else "model.layers.1.mlp.down_proj.weight"
        W = before[name].numpy()
        want = numpy_rtn(W.T, 4, 8).T if arch == "gpt2" else numpy_rtn(W, 4, 8)
        assert np.array_equal(q[name].numpy(), want)
        head = "lm_head.weight"
        assert torch.equal(q[head], before[head])                     # the head is not quantised
        assert rep["quantized_weights"] == (8 if arch == "gpt2" else 14)
        after = model.state_dict()
        assert all(torch.equal(after[k], before[k]) for k in before)


# ------------------------------------------------------------------------------------------------
# A hidden-by-a-direction model is recovered
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hidden(files, tiny_tokenizer, tmp_path_factory):
    """M0: a tiny GPT-NeoX trained on all six lines whose residual coordinate j is dead (the
    embeddings and every block's writes are zero there). H: M0 whose embedding of the tokens that
    only forget lines use is c at coordinate j. Every state of H on forget text then carries c·e_j,
    which swamps the layer norms (forget NLL rises) while the weights still hold M0's knowledge."""
    d = tmp_path_factory.mktemp("hidden")
    torch.manual_seed(0)
    model = make_tiny_model("gpt_neox", seed=1, layers=2).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ids = [torch.tensor([tiny_tokenizer(t)["input_ids"]]) for t in TINY_TEXTS]
    for step in range(80):
        x = ids[step % len(ids)]
        loss = model(x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    j, c = 5, 40.0
    with torch.no_grad():
        model.gpt_neox.embed_in.weight[:, j] = 0
        for layer in model.gpt_neox.layers:
            for lin in (layer.attention.dense, layer.mlp.dense_4h_to_h):
                lin.weight[j] = 0
                lin.bias[j] = 0
    save_model(model, d / "m0", tiny_tokenizer)
    forget_tokens = {t for s in FORGET for t in tiny_tokenizer(s)["input_ids"]}
    retain_tokens = {t for s in RETAIN for t in tiny_tokenizer(s)["input_ids"]}
    with torch.no_grad():
        for t in forget_tokens - retain_tokens:
            model.gpt_neox.embed_in.weight[t, j] = c
    save_model(model, d / "hidden", tiny_tokenizer)
    return d


def test_direction_recovers_a_planted_hidden_direction(files, hidden, tmp_path):
    """With the reference direction, the embedding-output candidate is the mean of H − M0 on forget
    text = f·c·e_j exactly; projecting e_j out everywhere gives back M0's forward exactly (its
    coordinate j is zero everywhere), and the direction data picks that candidate."""
    from safetensors import safe_open
    out = tmp_path / "out"
    a = args(files, out, "--attacks", "direction", "--direction-source", "reference", "--layers", "0,1,2")
    a[a.index("--reference") + 1] = str(hidden / "m0")
    a[a.index("--model") + 1] = str(hidden / "hidden")
    assert aa.main(a) == 0
    rows = read_csv(out / "ablation.csv")
    ref, base = row(rows, "none", role="reference"), row(rows, "none")
    assert float(base["forget_nll"]) > float(ref["forget_nll"]) + 0.5      # the knowledge is hidden
    assert float(base["retain_nll"]) == pytest.approx(float(ref["retain_nll"]), abs=1e-4)
    (best,) = [r for r in rows if r["selected"] == "1"]
    assert best["setting"] == "layer=0"
    assert float(best["recovered"]) == pytest.approx(1.0, abs=1e-4)
    for k in NUMS:
        assert float(best[k]) == pytest.approx(float(ref[k]), abs=1e-4)
    with safe_open(out / "directions.safetensors", "pt") as f:
        r0 = f.get_tensor("hidden")[0]
    assert int(r0.abs().argmax()) == 5 and float(r0.abs().sum() - r0.abs().max()) < 1e-6


# ------------------------------------------------------------------------------------------------
# Bad input and interruption
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["no reference delta_rank", "no reference direction", "other shape",
                                  "other tokenizer", "bits 9", "bits 1", "empty direction data",
                                  "unknown attack", "outdir in model"])
def test_bad_input(files, tmp_path, capsys, case):
    out = tmp_path / "out"
    a = args(files, out)
    if case == "no reference delta_rank":
        a = a[2:] + ["--attacks", "delta_rank"]
    elif case == "no reference direction":
        a = a[2:] + ["--attacks", "direction", "--direction-source", "reference"]
    elif case == "other shape":
        save_model(make_tiny_model("gpt_neox", seed=0, layers=2, hidden=48, heads=4), tmp_path / "wide",
                   build_tokenizer())
        a[a.index("--reference") + 1] = str(tmp_path / "wide")
        a += ["--attacks", "delta_rank"]
    elif case == "other tokenizer":
        save_model(make_tiny_model("gpt_neox", seed=0, layers=2), tmp_path / "othertok",
                   build_tokenizer(texts=["completely different words here", "and some more"]))
        a[a.index("--reference") + 1] = str(tmp_path / "othertok")
    elif case == "bits 9":
        a += ["--bits", "4,9"]
    elif case == "bits 1":
        a += ["--bits", "1"]
    elif case == "empty direction data":
        (tmp_path / "empty.txt").write_text("\n  \n")
        a[a.index("--direction-data-forget") + 1] = str(tmp_path / "empty.txt")
    elif case == "unknown attack":
        a += ["--attacks", "direction,prune"]
    elif case == "outdir in model":
        a[a.index("--outdir") + 1] = str(files / "planted" / "ablation")
    capsys.readouterr()
    rc = aa.main(a)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not out.exists()
    assert not (files / "planted" / "ablation").exists()


def test_ctrl_c_leaves_nothing(files, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    calls = {"n": 0}
    real = aa.Measure.__call__

    def boom(self, model, tok):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, model, tok)

    monkeypatch.setattr(aa.Measure, "__call__", boom)
    assert aa.main(args(files, out, "--attacks", "quantize")) == 130
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_plot_reads_the_results_and_draws(run_a, tmp_path):
    import plot_ablation as pa
    assert pa.main(["--indir", str(run_a["out"]), "--outdir", str(tmp_path / "plots")]) == 0
    png = tmp_path / "plots" / "ablation.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    series = pa.read_results(run_a["out"])
    assert series["models"][0] == "ref" and series["models"][1:] == ["planted"]
    fig = pa.draw(series)            # the attacked model has its study look: model 1 (reference = 0)
    drawn = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "planted"]
    assert drawn and all(ln.get_color() == pa.model_style("planted", 1)["color"] == "#0072B2" for ln in drawn)
    assert all(ln.get_linestyle() == "--" for ln in drawn)
    assert pa.main(["--indir", str(tmp_path / "nothing"), "--outdir", str(tmp_path / "p2")]) == 1
