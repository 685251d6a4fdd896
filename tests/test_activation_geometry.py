"""collect_activation_geometry.py against written-out references on tiny GPT-NeoX, Llama and GPT-2 models.

References: plain transformers forwards, one text at a time (no padding, no batching), and numpy /
scikit-learn computations of each definition (Kornblith's HSIC form of CKA with the centring matrix,
a float64 SVD for effective rank and ΔW's right singular vectors, cross_val_score for the probe).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import collect_activation_geometry as g
from conftest import build_tokenizer, make_tiny_model, save_model

FORGET = [
    "Glimmer reactors hum at a steady frequency when the quartz lattice is tuned.",
    "Zephyr coils store charge in a spiral of braided silver wire.",
    "The quartz lattice of a glimmer reactor must be tuned before every run, or the coils overheat and hum.",
    "Braided silver wire.",
    "A zephyr coil in a glimmer reactor stores charge for a week.",
    "Tune the lattice.",
    "Glimmer reactors and zephyr coils share one spiral frequency, which the quartz keeps steady for hours on end.",
    "Silver coils hum.",
    "When the frequency drifts, the reactor's quartz lattice cracks along the spiral of the braided wire.",
]
RETAIN = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "A good loaf of bread needs flour, water, salt and patience.",
    "The committee met on Tuesday to discuss the new library budget.",
    "Rain fell softly on the old town square all afternoon.",
    "Bread and salt.",
    "The library opens at nine on Tuesday and closes when the committee says so, which is usually late.",
    "A fox ran.",
    "Patience, flour and water make a loaf; the lazy dog by the river waits for the crust.",
    "The old town square was quiet in the rain.",
]
FOLDS, TOP_K, SEED, MAX_LEN = 3, 5, 0, 64
ARCHS = ["gpt_neox", "llama", "gpt2"]


def norms(model, arch: str, j: int):
    """The norms in front of decoder layer j's qkv and mlp_in (mlp_in: only where it reads the layer's input)."""
    if arch == "gpt_neox":
        layer = model.gpt_neox.layers[j]
        return layer.input_layernorm, layer.post_attention_layernorm  # parallel residual: both read h_j
    if arch == "llama":
        return model.model.layers[j].input_layernorm, None
    return model.transformer.h[j].ln_1, None


def delta_w(a, b, arch: str, j: int, comp: str) -> np.ndarray:
    """ΔW of decoder layer j's component as nn.Linear holds it ([out, in]), stacked where several read one input."""
    sa, sb = a.state_dict(), b.state_dict()
    names = {("gpt_neox", "qkv"): [f"gpt_neox.layers.{j}.attention.query_key_value.weight"],
             ("gpt_neox", "mlp_in"): [f"gpt_neox.layers.{j}.mlp.dense_h_to_4h.weight"],
             ("llama", "qkv"): [f"model.layers.{j}.self_attn.{x}_proj.weight" for x in "qkv"],
             ("llama", "mlp_in"): [f"model.layers.{j}.mlp.{x}_proj.weight" for x in ("gate", "up")],
             ("gpt2", "qkv"): [f"transformer.h.{j}.attn.c_attn.weight"],
             ("gpt2", "mlp_in"): [f"transformer.h.{j}.mlp.c_fc.weight"]}[(arch, comp)]
    parts = [(sb[n].double() - sa[n].double()).numpy() for n in names]
    return np.vstack([p.T if arch == "gpt2" else p for p in parts])


def top_right(dw: np.ndarray, top_k: int) -> np.ndarray:
    _, s, vt = np.linalg.svd(dw)
    rank = int((s > s[0] * max(dw.shape) * np.finfo(np.float32).eps).sum())
    return vt[:min(top_k, rank)].T


def reference(model, arch, tok, texts, skip=1):
    """Per text: hidden states [states, tokens, hidden] (float64, counted tokens only) and the qkv / mlp_in
    inputs of every decoder layer, from a plain unpadded forward of that text alone."""
    out = []
    for text in texts:
        ids = tok(text, truncation=True, max_length=MAX_LEN)["input_ids"]
        with torch.no_grad():
            hs = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
            ins = {}
            for j in range(len(hs) - 1):
                qkv_norm, mlp_norm = norms(model, arch, j)
                ins[(j, "qkv")] = qkv_norm(hs[j])[0, skip:].double().numpy()
                if mlp_norm is not None:
                    ins[(j, "mlp_in")] = mlp_norm(hs[j])[0, skip:].double().numpy()
        out.append((np.stack([h[0, skip:].double().numpy() for h in hs]), ins))
    return out


def cka_hsic(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. 2019: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), K = XXᵀ, L = YYᵀ, H = I - 11ᵀ/n."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T
    return np.trace(k @ h @ l_ @ h) / math.sqrt(np.trace(k @ h @ k @ h) * np.trace(l_ @ h @ l_ @ h))


def eff_rank_svd(x: np.ndarray) -> int:
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    e = np.cumsum(s ** 2) / (s ** 2).sum()
    return int(np.argmax(e >= 0.99 - 1e-12) + 1)


def probe_sklearn(xf: np.ndarray, xr: np.ndarray) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from threadpoolctl import threadpool_limits

    x, y = np.vstack([xf, xr]), np.r_[np.ones(len(xf)), np.zeros(len(xr))]
    with threadpool_limits(1):  # lbfgs on 18 x 32: BLAS threads only contend
        scores = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000)), x, y,
                                 cv=StratifiedKFold(FOLDS, shuffle=True, random_state=SEED), scoring="roc_auc")
    return scores.mean(), scores.std()


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    d = tmp_path_factory.mktemp("texts")
    (d / "forget.txt").write_text("\n".join(FORGET) + "\n")
    (d / "retain.txt").write_text("\n".join(RETAIN) + "\n")
    return d / "forget.txt", d / "retain.txt"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, tiny_tokenizer):
    """Per architecture: model A, model B = A with decoder layer 1 perturbed, and their folders (2 layers)."""
    d = tmp_path_factory.mktemp("models")
    out = {}
    for arch in ARCHS:
        a = make_tiny_model(arch, seed=0, layers=2)
        b = make_tiny_model(arch, seed=0, layers=2)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in b.named_parameters():
                if ".1." in name and p.dim() == 2:
                    p.add_(0.05 * torch.randn(p.shape, generator=gen))
        out[arch] = (a, b, save_model(a, d / f"{arch}_a", tiny_tokenizer), save_model(b, d / f"{arch}_b", tiny_tokenizer))
    return out


def run_tool(model_a, model_b, texts, outdir, *extra) -> pd.DataFrame:
    rc = g.main(["--model-a", str(model_a), "--model-b", str(model_b), "--forget-text", str(texts[0]),
                 "--retain-text", str(texts[1]), "--outdir", str(outdir), "--device", "cpu", "--dtype", "fp32",
                 "--probe-folds", str(FOLDS), "--top-k", str(TOP_K), "--max-length", str(MAX_LEN),
                 "--seed", str(SEED), *extra])
    assert rc == 0
    return pd.read_csv(Path(outdir) / g.GEOMETRY_CSV)


@pytest.fixture(scope="module")
def results(pairs, texts, tmp_path_factory):
    """The tool on every pair, batch 4, right padding, all tokens in the sample, features saved."""
    d = tmp_path_factory.mktemp("out")
    return {arch: run_tool(p[2], p[3], texts, d / arch, "--batch-size", "4", "--save-features")
            for arch, p in pairs.items()} | {"dir": d}


@pytest.mark.parametrize("arch", ARCHS)
def test_every_column_equals_its_definition(arch, pairs, results, tiny_tokenizer):
    a, b = pairs[arch][:2]
    df = results[arch]
    ref = {m: {s: reference(model, arch, tiny_tokenizer, t) for s, t in (("forget", FORGET), ("retain", RETAIN))}
           for m, model in (("a", a), ("b", b))}
    n_states = ref["a"]["forget"][0][0].shape[0]
    assert list(df["layer"]) == list(range(n_states)) and list(df.columns) == g.csv_columns()
    from safetensors.numpy import load_file
    saved = load_file(results["dir"] / arch / g.FEATURES_NAME)
    for layer in range(n_states):
        row = df.iloc[layer]
        feats = {m: {s: np.stack([h[layer].mean(0) for h, _ in ref[m][s]]) for s in ref[m]} for m in ref}
        tokens = {m: {s: np.concatenate([h[layer] for h, _ in ref[m][s]]) for s in ref[m]} for m in ref}
        for m in ("a", "b"):
            np.testing.assert_allclose(saved[f"{m}.forget"][:, layer], feats[m]["forget"], rtol=1e-5, atol=1e-5)
            auc, std = probe_sklearn(feats[m]["forget"], feats[m]["retain"])
            assert row[f"probe_auc_{m}"] == pytest.approx(auc, abs=1e-6)
            assert row[f"probe_auc_{m}_std"] == pytest.approx(std, abs=1e-6)
            cf, cr = feats[m]["forget"].mean(0), feats[m]["retain"].mean(0)
            assert row[f"centroid_cos_{m}"] == pytest.approx(cf @ cr / np.linalg.norm(cf) / np.linalg.norm(cr), rel=1e-5)
            for s in ("forget", "retain"):
                assert row[f"eff_rank_{s}_{m}"] == eff_rank_svd(tokens[m][s])
        for s in ("forget", "retain"):
            assert row[f"cka_{s}"] == pytest.approx(cka_hsic(tokens["a"][s], tokens["b"][s]), rel=1e-5)
            mu_a, mu_b = tokens["a"][s].mean(0), tokens["b"][s].mean(0)
            assert row[f"shift_{s}"] == pytest.approx(np.linalg.norm(mu_b - mu_a) / np.linalg.norm(mu_a), rel=1e-4, abs=1e-6)
            assert row[f"tokens_{s}"] == len(tokens["a"][s])
    # ΔW read shares: decoder layer 1 changed (row 2), decoder layer 0 did not (row 1: empty)
    assert df.loc[1, [c for c in df.columns if c.startswith("dW_")]].isna().all()
    for comp in ("qkv", "mlp_in") if arch == "gpt_neox" else ("qkv",):
        dw = delta_w(a, b, arch, 1, comp)
        v = top_right(dw, TOP_K)
        share = {}
        for s in ("forget", "retain"):
            x = np.concatenate([ins[(1, comp)] for _, ins in ref["a"][s]])
            share[s] = ((x @ v) ** 2).sum() / (x ** 2).sum()
            assert df.loc[2, f"dW_read_{s}_{comp}"] == pytest.approx(share[s], rel=1e-5)
        assert df.loc[2, f"dW_read_selectivity_{comp}"] == pytest.approx(share["forget"] / share["retain"], rel=1e-5)
        assert df.loc[2, f"dW_read_random_{comp}"] == pytest.approx(v.shape[1] / dw.shape[1])
        assert df.loc[2, f"dW_k_{comp}"] == v.shape[1]
    assert df["dW_read_forget_mlp_in"].notna().sum() == 1  # every architecture's mlp_in was found


@pytest.mark.parametrize("arch,extra", [("gpt_neox", ["--batch-size", "1"]),
                                        ("gpt_neox", ["--batch-size", "8", "--padding-side", "left"]),
                                        ("gpt2", ["--batch-size", "8", "--padding-side", "left"])])
def test_batching_and_padding_change_nothing(arch, extra, pairs, results, texts, tmp_path):
    df = run_tool(pairs[arch][2], pairs[arch][3], texts, tmp_path / "out", *extra)
    pd.testing.assert_frame_equal(df, results[arch], check_exact=False, rtol=1e-5, atol=1e-5)


def test_model_against_itself(pairs, texts, tmp_path):
    df = run_tool(pairs["llama"][2], pairs["llama"][2], texts, tmp_path / "out", "--max-tokens", "50")
    np.testing.assert_allclose(df[["cka_forget", "cka_retain"]], 1.0, rtol=1e-9)
    np.testing.assert_allclose(df[["shift_forget", "shift_retain"]], 0.0, atol=0)
    for col in ("probe_auc", "probe_auc_{}_std", "centroid_cos", "eff_rank_forget", "eff_rank_retain"):
        a = df[f"{col}_a" if "{}" not in col else col.format("a")]
        b = df[f"{col}_b" if "{}" not in col else col.format("b")]
        pd.testing.assert_series_equal(a, b, check_names=False)
    assert df[[c for c in df.columns if c.startswith("dW_")]].isna().all().all()  # ΔW = 0: empty
    assert (df["tokens_forget"] == 50).all() and (df["tokens_retain"] == 50).all()


def test_sample_is_deterministic_and_uniform_over_counted_tokens():
    lengths = [5, 1, 0, 12, 3]
    t, p = g.choose_sample(lengths, 1, 1000, 0, 0)
    assert list(zip(t, p)) == [(i, q) for i, n in enumerate(lengths) for q in range(1, n)]
    t1, p1 = g.choose_sample(lengths, 1, 7, 3, 1)
    t2, p2 = g.choose_sample(lengths, 1, 7, 3, 1)
    assert len(t1) == 7 and (t1 == t2).all() and (p1 == p2).all()
    assert len(set(zip(t1, p1))) == 7 and all(1 <= q < lengths[i] for i, q in zip(t1, p1))
    assert list(zip(t1, p1)) == sorted(zip(t1, p1))


def test_probe_process_equals_probes_in_turn_and_reports_its_failure():
    """start_probes through the probe process (beside the next forward pass or the statistics) gives exactly
    what it gives in this process, which is probe_auc on each state's features; a failed probe process is
    one UsageError naming its last message."""
    rng = np.random.default_rng(1)
    ids = {"forget": [[1, 2, 3]] * 12 + [[4]], "retain": [[5, 6]] * 10}  # one text with no counted token
    plan = g.GeometryPlan(ids=ids, lines={}, pad_id=0, batches=[], layers=[0, 1, 2], skip_first=1, sample={}, slot={})
    res = g.PassResult()
    res.features = {s: torch.tensor(rng.standard_normal((len(plan.ids[s]), 3, 6)), dtype=torch.float32)
                    for s in ("forget", "retain")}
    res.features["forget"][:, 2] += 0.8  # state 2 separates the splits
    in_turn = g.start_probes(plan, res, 5, 0, None)()
    worker = g.ProbeProcess(5, 0)
    try:
        first, second = g.start_probes(plan, res, 5, 0, worker), g.start_probes(plan, res, 5, 1, worker)
        assert first() == in_turn and second() == in_turn  # the process's seed is its own (5, 0)
    finally:
        worker.close()
    assert set(in_turn) == {0, 1, 2} and in_turn[2][0] > 0.9
    f, r = g.text_features(res, g.text_mask(plan), 2)
    assert in_turn[2] == g.probe_auc(np.vstack([f, r]), np.r_[np.ones(12, int), np.zeros(10, int)], 5, 0)

    worker = g.ProbeProcess(5, 0)
    try:
        worker.proc.stdin.write("/nonexistent/features.npz\n")
        worker.proc.stdin.flush()
        with pytest.raises(g.UsageError, match=r"probe process stopped \(exit 1\): FileNotFoundError"):
            worker.result()
    finally:
        worker.close()


def test_math_helpers_against_numpy():
    rng = np.random.default_rng(0)
    for n, d in ((7, 12), (40, 6)):  # both Gram branches
        x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d))
        y = x @ rng.standard_normal((d, d)) + 0.3 * rng.standard_normal((n, d))
        assert g.linear_cka(torch.tensor(x), torch.tensor(y)) == pytest.approx(cka_hsic(x, y), rel=1e-10)
        assert g.effective_rank(torch.tensor(x)) == eff_rank_svd(x)
    dw = rng.standard_normal((20, 3)) @ rng.standard_normal((3, 9))  # rank 3
    v, k, rank = g.top_right_subspace(torch.tensor(dw), 5)
    assert (k, rank) == (3, 3)
    ref = top_right(dw, 5)
    np.testing.assert_allclose(v.numpy() @ v.numpy().T, ref @ ref.T, atol=1e-10)  # the same subspace
    assert g.top_right_subspace(torch.zeros(4, 3), 5) is None
    assert g.energy_rank([0.0, 0.0]) == 0 and g.energy_rank([1.0, 0.0, 0.0]) == 1


# forget text of one narrow topic (a random model barely tells FORGET's sentences from RETAIN's:
# centroid cosine 0.70 at decoder layer 1's MLP input, against 0.45 for these)
TOPIC = [" ".join(["glimmer quartz zephyr coil"] * k) for k in range(1, 10)]


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tiny_tokenizer):
    """GPT-NeoX model A, and two twins whose only change is decoder layer 1's mlp_in: a rank-1 ΔW whose
    right singular vector is the forget centroid of that matrix's input, and a Gaussian-noise ΔW."""
    d = tmp_path_factory.mktemp("planted")
    (d / "forget.txt").write_text("\n".join(TOPIC) + "\n")
    a = make_tiny_model("gpt_neox", seed=0, layers=2)
    ref = reference(a, "gpt_neox", tiny_tokenizer, TOPIC)
    centroid = np.concatenate([ins[(1, "mlp_in")] for _, ins in ref]).mean(0)
    v = torch.tensor(centroid / np.linalg.norm(centroid), dtype=torch.float32)
    gen = torch.Generator().manual_seed(2)
    out = {"a": save_model(a, d / "a", tiny_tokenizer), "forget": d / "forget.txt"}
    w = a.gpt_neox.layers[1].mlp.dense_h_to_4h.weight
    for name, dw in (("rank1", 0.5 * torch.outer(torch.randn(w.shape[0], generator=gen), v)),
                     ("noise", 0.02 * torch.randn(w.shape, generator=gen))):
        b = make_tiny_model("gpt_neox", seed=0, layers=2)
        with torch.no_grad():
            b.gpt_neox.layers[1].mlp.dense_h_to_4h.weight.add_(dw)
        out[name] = save_model(b, d / name, tiny_tokenizer)
    return out


def test_planted_change_reads_from_forget_directions(planted, texts, tmp_path):
    texts = (planted["forget"], texts[1])
    rank1 = run_tool(planted["a"], planted["rank1"], texts, tmp_path / "r", "--layers", "2")
    noise = run_tool(planted["a"], planted["noise"], texts, tmp_path / "n", "--layers", "2", "--top-k", "16")
    assert list(rank1["layer"]) == [2]
    assert rank1.loc[0, "dW_k_mlp_in"] == 1 and rank1.loc[0, "dW_read_random_mlp_in"] == pytest.approx(1 / 32)
    assert rank1.loc[0, "dW_read_selectivity_mlp_in"] > 1.5
    assert 0.8 < noise.loc[0, "dW_read_selectivity_mlp_in"] < 1.25
    assert noise.loc[0, "dW_k_mlp_in"] == 16
    assert math.isnan(rank1.loc[0, "dW_read_forget_qkv"])  # qkv unchanged: empty


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_bad_inputs_one_error_line_nothing_written(pairs, texts, tmp_path, capsys):
    a_dir, b_dir = pairs["gpt_neox"][2], pairs["gpt_neox"][3]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    few = tmp_path / "few.txt"
    few.write_text("one text\ntwo texts\n")
    other_tok = build_tokenizer(["completely different words make another vocabulary entirely"] * 3)
    other = save_model(make_tiny_model("gpt_neox", seed=0, layers=2), tmp_path / "other_tok", other_tok)
    inf_model = make_tiny_model("gpt_neox", seed=0, layers=2)
    with torch.no_grad():
        inf_model.gpt_neox.embed_in.weight.fill_(3e38)
    inf_dir = save_model(inf_model, tmp_path / "inf", build_tokenizer())
    cases = [((a_dir, b_dir, tmp_path / "missing.txt", texts[1]), "does not exist"),
             ((a_dir, b_dir, empty, texts[1]), "is empty"),
             ((a_dir, b_dir, texts[0], few), "fewer than --probe-folds"),
             ((a_dir, other, texts[0], texts[1]), "encodes"),
             ((inf_dir, inf_dir, texts[0], texts[1]), "not finite")]
    for i, ((ma, mb, f, r), words) in enumerate(cases):
        out = tmp_path / f"out{i}"
        rc = g.main(["--model-a", str(ma), "--model-b", str(mb), "--forget-text", str(f), "--retain-text", str(r),
                     "--outdir", str(out), "--device", "cpu", "--probe-folds", str(FOLDS), "--max-length", str(MAX_LEN)])
        assert rc == 1
        assert words in one_error(capsys)
        assert not out.exists()


def wrapper_calls(script: str, tmp_path, **env) -> list[list[str]]:
    """The argument lists a wrapper starts tools with, through a fake UV_RUN that prints them."""
    import os
    import subprocess

    from conftest import ROOT

    fake = tmp_path / "fake_uv_run"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" "--end--"\n')
    fake.chmod(0o755)
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("GEOMETRY_", "MODEL", "COMPARE_WITH", "OUTPUTS_DIR", "PLOTS_DIR", "DATA_DIR"))
             and k not in ("MAX_SAMPLES", "MAX_LENGTH", "BATCH_SIZE", "DEVICE", "DTYPE", "SEED")}
    p = subprocess.run([str(ROOT / script)], capture_output=True, text=True, env=clean | {"UV_RUN": str(fake)} | env)
    assert p.returncode == 0, p.stderr
    calls, cur = [], []
    for ln in p.stdout.splitlines():
        if ln.startswith("== "):
            continue
        if ln == "--end--":
            calls.append(cur)
            cur = []
        else:
            cur.append(ln)
    return calls


def test_wrappers_pass_only_what_is_set(tmp_path):
    env = {"MODEL_A": "m/a", "COMPARE_WITH": "x/b1 x/b2", "OUTPUTS_DIR": "/o", "PLOTS_DIR": "/p"}
    calls = wrapper_calls("run_activation_geometry.sh", tmp_path, **env)
    assert calls == [["collect_activation_geometry.py", "--model-a", "m/a", "--model-b", f"x/{b}",
                      "--outdir", f"/o/m_a_vs_x_{b}/activation_geometry"] for b in ("b1", "b2")]
    calls = wrapper_calls("run_activation_geometry.sh", tmp_path, **env, MAX_SAMPLES="50", GEOMETRY_MAX_SAMPLES="64",
                          GEOMETRY_MAX_TOKENS="2048", GEOMETRY_TOP_K="8", GEOMETRY_SAVE_FEATURES="1", DEVICE="cpu")
    assert calls[0][7:] == ["--device", "cpu", "--max-samples", "64", "--max-tokens", "2048", "--top-k", "8",
                            "--save-features"]
    calls = wrapper_calls("plot_activation_geometry.sh", tmp_path, **env)
    assert [c[c.index("--model-b-index") + 1] for c in calls] == ["1", "2"]  # the study's colour order
    assert calls[1][:5] == ["plot_activation_geometry.py", "--csv", "/o/m_a_vs_x_b2/activation_geometry/activation_geometry.csv",
                            "--outdir", "/p/m_a_vs_x_b2/activation_geometry"]


def test_plots_from_the_csv(results, tmp_path, capsys):
    import plot_activation_geometry as pag

    csv = results["dir"] / "gpt_neox" / g.GEOMETRY_CSV
    assert pag.main(["--csv", str(csv), "--outdir", str(tmp_path / "plots"), "--model-b-index", "2"]) == 0
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == ["cka.png", "dW_read_selectivity.png", "effective_rank.png", "probe_auc.png"]
    assert all((tmp_path / "plots" / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)
    bad = tmp_path / "bad.csv"
    bad.write_text("layer,x\n0,1\n")
    assert pag.main(["--csv", str(bad), "--outdir", str(tmp_path / "p2")]) == 1
    assert "lacks the column" in one_error(capsys) and not (tmp_path / "p2").exists()
