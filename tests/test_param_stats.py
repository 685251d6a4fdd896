"""collect_param_stats.py and plot_param_stats.py against exact float64 SVD.

Planted changes (rank-1, Gaussian bulk, slowly decaying spectrum, unchanged matrices) in tiny
GPT-NeoX, Llama and GPT-2 models, saved in fp32 and bf16 with A and B sharded differently; the
reference is torch.linalg.svdvals in float64 on the tensors read back from disk.
"""
from __future__ import annotations

import functools
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from threadpoolctl import threadpool_limits
from safetensors.torch import load_file, save_file

from conftest import ROOT, make_tiny_model, save_model

import collect_param_stats as cps
import plot_param_stats as pps

HIDDEN, INTER, LAYERS = 64, 128, 2
# (arch, rank-1 target, Gaussian-bulk target, slow-spectrum target, outside-layer bulk target)
PLANTS = {
    "gpt_neox": ("gpt_neox.layers.0.attention.query_key_value.weight", "gpt_neox.layers.0.mlp.dense_h_to_4h.weight",
                 "gpt_neox.layers.1.mlp.dense_4h_to_h.weight", "embed_out.weight"),
    "llama": ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight",
              "model.layers.1.mlp.down_proj.weight", "lm_head.weight"),
    "gpt2": ("transformer.h.0.attn.c_attn.weight", "transformer.h.0.mlp.c_proj.weight",
             "transformer.h.1.attn.c_proj.weight", "transformer.wte.weight"),
}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def planted(shape, spectrum, gen):
    """U diag(spectrum) Vᵀ with Haar-random orthonormal U, V (float64)."""
    m, n = shape
    r = len(spectrum)
    U, _ = torch.linalg.qr(torch.randn(m, r, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, r, generator=gen, dtype=torch.float64))
    return (U * torch.as_tensor(spectrum, dtype=torch.float64)) @ V.T


def plant_changes(model, arch, seed=0):
    """B = A + rank-1 / Gaussian bulk / slowly decaying ΔW on four matrices; the rest unchanged."""
    gen = torch.Generator().manual_seed(seed)
    rank1, bulk, slow, outside = PLANTS[arch]
    params = dict(model.named_parameters())
    params["embed_out.weight"] = params.get("lm_head.weight")  # GPT-NeoX saves lm_head as embed_out
    with torch.no_grad():
        for name, kind in ((rank1, "rank1"), (bulk, "bulk"), (slow, "slow"), (outside, "bulk")):
            p = params[name]
            m, n = p.shape
            if kind == "rank1":
                dw = planted((m, n), [0.5], gen)
            elif kind == "bulk":
                dw = 2e-3 * torch.randn(m, n, generator=gen, dtype=torch.float64)
            else:
                dw = planted((m, n), [0.05 * (i + 1) ** -0.3 for i in range(min(m, n))], gen)
            p.add_(dw.to(p.dtype))
    return model


def load_dir(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def reference(a_dir: Path, b_dir: Path) -> dict[str, dict]:
    """Exact float64 statistics of every 2-D tensor the two directories share."""
    ta, tb = load_dir(a_dir), load_dir(b_dir)
    out = {}
    for name, wa in ta.items():
        if wa.ndim != 2 or name not in tb:
            continue
        wa, wb = wa.double(), tb[name].double()
        dw = wb - wa
        s_dw, s_w = torch.linalg.svdvals(dw), torch.linalg.svdvals(wa)
        fro_dw, fro_w = float(torch.linalg.norm(dw)), float(torch.linalg.norm(wa))
        out[name] = {"dW_fro": fro_dw, "dW_spec": float(s_dw[0]),
                     "dW_stable_rank": fro_dw**2 / float(s_dw[0]) ** 2 if fro_dw > 0 else math.nan,
                     "W_stable_rank": fro_w**2 / float(s_w[0]) ** 2}
    return out


def run_tool(a_dir, b_dir, outdir, *extra) -> int:
    return cps.main(["--model-a", str(a_dir), "--model-b", str(b_dir), "--outdir", str(outdir),
                     "--device", "cpu", *extra])


@pytest.fixture(scope="module")
def tool_output(pairs, tmp_path_factory):
    """Run the tool once per (arch, dtype, extra args) and share the output folder."""
    cache = {}

    def run(arch, dtype, *extra):
        key = (arch, dtype, *extra)
        if key not in cache:
            outdir = tmp_path_factory.mktemp("run")
            assert run_tool(*pairs[arch, dtype], outdir, *extra) == 0
            cache[key] = outdir
        return cache[key]
    return run


def extra_args(dtype):
    # block size 2 makes the solver iterate instead of filling the 64-dimensional space at once;
    # the bf16 runs stream every tensor in many slices (rows of tall, columns of wide matrices)
    return ["--block-size", "2"] + (["--chunk-mb", "0.01"] if dtype == "bf16" else [])


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """(arch, dtype) → (A dir, B dir); A and B sharded differently (which one is sharded flips
    with the dtype)."""
    root = tmp_path_factory.mktemp("pairs")
    out = {}
    for arch in PLANTS:
        for dtype in ("fp32", "bf16"):
            torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
            a = make_tiny_model(arch, seed=1, hidden=HIDDEN, layers=LAYERS, intermediate=INTER)
            a_dir = save_model(a, root / f"{arch}-{dtype}-a", dtype=torch_dtype,
                               max_shard_size="40KB" if dtype == "fp32" else "1GB")
            b = plant_changes(make_tiny_model(arch, seed=1, hidden=HIDDEN, layers=LAYERS, intermediate=INTER), arch)
            b_dir = save_model(b, root / f"{arch}-{dtype}-b", dtype=torch_dtype,
                               max_shard_size="1GB" if dtype == "fp32" else "40KB")
            out[arch, dtype] = (a_dir, b_dir)
    return out


# ---------------------------------------------------------------------------------------------
# the eigensolver on its own: hard spectra, exact float64 reference
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _spectrum_cases():
    g = torch.Generator().manual_seed(3)
    n = 384
    return {
        # flat noise bulk, σ2/σ1 = 0.999: power iteration stalls here
        "flat_bulk_0.999": planted((768, n), [1 - 0.001 * i for i in range(n)], g),
        # a Gaussian random matrix (Marchenko–Pastur bulk)
        "gaussian": torch.randn(1024, n, generator=g, dtype=torch.float64),
        "slow_decay": planted((n, 900), [(i + 1) ** -0.3 for i in range(n)], g),
        # rank 1: a block Krylov basis without re-orthogonalisation fills with noise
        "rank1": planted((n, 700), [2.5], g),
        "rank2_tied": planted((700, n), [1.0, 1.0], g),
    }


@pytest.mark.parametrize("case", list(_spectrum_cases()))
def test_top_eigenvalue_matches_exact_svd(case):
    M = _spectrum_cases()[case]
    G = (M.T @ M if M.shape[0] >= M.shape[1] else M @ M.T).numpy()
    exact = float(torch.linalg.svdvals(M)[0]) ** 2
    lam, products, converged = cps.top_eigenvalue(G, block_size=8, tol=1e-5, seed=42)
    assert converged
    assert abs(lam - exact) / exact < 1e-5
    assert products * 8 < G.shape[0]  # converged well before the Krylov space fills ℝⁿ
    fro_sq = float((M**2).sum())
    assert abs(cps.stable_rank(fro_sq, lam) - fro_sq / exact) / (fro_sq / exact) < 1e-5


@pytest.mark.parametrize("dense_max", [4096, 0], ids=["dense", "lanczos"])
@pytest.mark.parametrize("case", list(_spectrum_cases()))
def test_gram_top_eigenvalue_in_fp32_matches_exact_svd(case, dense_max):
    """The tool's solver: float64-accumulated Gram, eigenproblem in fp32 (dense or block Lanczos)."""
    M = _spectrum_cases()[case]
    G = (M.T @ M if M.shape[0] >= M.shape[1] else M @ M.T).numpy()
    exact = float(torch.linalg.svdvals(M)[0]) ** 2
    lam, products, converged = cps.gram_top_eigenvalue(G, dense_max=dense_max, tol=1e-5, seed=42)
    assert converged
    assert abs(lam - exact) / exact < 1e-5
    assert (products == 0) == (dense_max > 0)
    assert cps.gram_top_eigenvalue(G, dense_max=dense_max) == (lam, products, converged)  # deterministic
    zero = np.zeros((6, 6))
    assert cps.gram_top_eigenvalue(zero, dense_max=dense_max) == (0.0, 0, True)


@pytest.mark.parametrize("block_size", [1, 2, 16])
@pytest.mark.parametrize("case", ["flat_bulk_0.999", "gaussian", "rank2_tied"])
def test_lanczos_block_sizes_and_restarts_match_exact_svd(case, block_size):
    """Block sizes 1 and 2 fill the 48-block basis before converging on the flat spectra, so the
    thick restart (top-k Ritz vectors, T reset to their Ritz values) is exercised too."""
    M = _spectrum_cases()[case]
    G = (M.T @ M if M.shape[0] >= M.shape[1] else M @ M.T).numpy().astype(np.float32)
    exact = float(torch.linalg.svdvals(M)[0]) ** 2
    lam, products, converged = cps.top_eigenvalue(G, block_size=block_size, tol=1e-5, max_iter=2000, seed=1)
    assert converged
    assert abs(lam - exact) / exact < 1e-5
    assert lam <= exact * (1 + 1e-6)  # a Ritz value never exceeds λ_max (up to fp32 rounding)


def test_solver_choice_is_the_cost_crossover():
    """Dense up to DENSE_MAX, where the cost model's dense n³ term overtakes Lanczos' n² term."""
    def dense_cost(n):
        return cps.DENSE_S_PER_N3 * n**3

    def lanczos_cost(n):
        return cps.LANCZOS_S_PER_N2 * n**2
    n = cps.DENSE_MAX
    assert dense_cost(n) <= lanczos_cost(n) and dense_cost(n + 1) > lanczos_cost(n + 1)
    assert 1024 <= n < 2048  # the measured costs: dense wins at 1024, Lanczos at 2048
    G = np.eye(8, dtype=np.float32) * 3.0
    assert cps.gram_top_eigenvalue(G)[1] == 0  # small: dense, no Krylov products


def test_many_fp32_slices_match_exact_svd(pairs, tmp_path):
    """fp32 checkpoints streamed in many slices: ΔW is formed straight from the file's slices into a
    reused buffer (torch.sub(out=)), which must leave the values exact and the files untouched."""
    a_dir, b_dir = pairs["gpt_neox", "fp32"]
    before = {p.name: p.read_bytes() for d in (a_dir, b_dir) for p in d.glob("*.safetensors")}
    assert run_tool(a_dir, b_dir, tmp_path, "--chunk-mb", "0.01", "--block-size", "2") == 0
    got = pd.read_csv(tmp_path / "per_matrix.csv")
    ref = reference(a_dir, b_dir)
    for row in got.itertuples():
        want = ref[row.name]
        assert abs(row.dW_fro - want["dW_fro"]) <= 1e-6 * max(want["dW_fro"], 1e-30)
        assert abs(row.W_stable_rank - want["W_stable_rank"]) <= 1e-4 * want["W_stable_rank"]
        if want["dW_fro"] > 0:
            assert abs(row.dW_stable_rank - want["dW_stable_rank"]) <= 1e-4 * want["dW_stable_rank"]
    assert before == {p.name: p.read_bytes() for d in (a_dir, b_dir) for p in d.glob("*.safetensors")}


def test_top_eigenvalue_of_zero_and_stable_rank_nan():
    assert cps.top_eigenvalue(np.zeros((6, 6))) == (0.0, 0, True)
    assert math.isnan(cps.stable_rank(0.0, 0.0))


def test_top_eigenvalue_is_bit_reproducible():
    M = _spectrum_cases()["gaussian"]
    G = (M.T @ M).numpy()
    assert cps.top_eigenvalue(G, seed=7) == cps.top_eigenvalue(G, seed=7)


def test_gram_blocks_cover_the_matrix_and_sum_to_the_gram():
    g = torch.Generator().manual_seed(0)
    for shape in [(50, 7), (7, 50)]:
        M = torch.randn(*shape, generator=g, dtype=torch.float64)
        tall = shape[0] >= shape[1]
        blocks = cps.gram_blocks(shape, chunk_elems=40)
        assert len(blocks) > 1
        G = sum(cps.small_gram(M[r, c], tall) for r, c in blocks)
        torch.testing.assert_close(G, M.T @ M if tall else M @ M.T)


@pytest.mark.parametrize("blas", [True, False], ids=["ssyrk", "torch"])
@pytest.mark.parametrize("shape", [(300, 40), (40, 300)], ids=["tall", "wide"])
def test_gram_sum_matches_float64_gram(shape, blas):
    """GramSum: BLAS ssyrk (upper triangle, in place) or the accelerator route's torch matmul (run
    on the CPU here) per slice, fp32 groups of `flush_every` slices summed in float64, against
    the float64 Gram matrix of the whole matrix."""
    M = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    tall = shape[0] >= shape[1]
    M64 = M.astype(np.float64)
    exact = M64.T @ M64 if tall else M64 @ M64.T
    blocks = cps.gram_blocks(shape, chunk_elems=400)
    assert len(blocks) == 30
    for flush_every in (4, 64):  # several groups / one
        acc = cps.GramSum(40, "cpu", flush_every=flush_every, blas=blas)
        for r, c in blocks:
            acc.add(np.ascontiguousarray(M[r, c]), tall)
        G = acc.result()
        assert isinstance(G, np.ndarray) and G.dtype == np.float32  # the float64 total is rounded once
        assert bool((np.tril(G, -1) == 0).all()) == blas  # ssyrk fills one triangle
        got = np.triu(G) if blas else G
        want = np.triu(exact) if blas else exact
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * exact.diagonal().max())
        lam, _, _ = cps.gram_top_eigenvalue(G)
        assert abs(lam - np.linalg.eigvalsh(exact)[-1]) / lam < 1e-5


@pytest.mark.parametrize("dense_max", [4096, 0], ids=["dense", "lanczos"])
def test_gram_top_eigenvalue_reads_only_the_upper_triangle(dense_max):
    M = _spectrum_cases()["flat_bulk_0.999"]
    G = (M.T @ M).numpy()
    exact = float(torch.linalg.svdvals(M)[0]) ** 2
    upper = np.triu(G) + np.tril(np.full_like(G, np.nan), -1)
    lam, _, converged = cps.gram_top_eigenvalue(upper, dense_max=dense_max)
    assert converged and abs(lam - exact) / exact < 1e-5


def test_accelerator_route_gram_and_eigensolver_on_a_torch_tensor():
    """What runs on CUDA, run here on the CPU: the torch route of GramSum and the dense torch
    eigensolver that a Gram matrix left on the device gets (upper triangle read only)."""
    M = _spectrum_cases()["flat_bulk_0.999"]
    exact = float(torch.linalg.svdvals(M)[0]) ** 2
    G = torch.triu(M.T @ M).float() + torch.tril(torch.full((M.shape[1],) * 2, float("nan")), diagonal=-1)
    lam, products, converged = cps.gram_top_eigenvalue(G)
    assert (products, converged) == (0, True) and abs(lam - exact) / exact < 1e-5
    assert cps.gram_top_eigenvalue(torch.zeros(5, 5)) == (0.0, 0, True)
    acc = cps.GramSum(M.shape[1], "cpu", flush_every=2, blas=False)
    X = M.numpy().astype(np.float32)
    for rows, cols in cps.gram_blocks(X.shape, chunk_elems=40_000):
        acc.add(np.ascontiguousarray(X[rows, cols]), True)
    got = acc.result()  # accumulated on the CPU: handed back as numpy, for the CPU eigensolver
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    np.testing.assert_allclose(got, (M.T @ M).numpy(), rtol=1e-5, atol=1e-5 * float((M.T @ M).diagonal().max()))


def test_full_symmetric_mirrors_the_upper_triangle_panel_by_panel():
    G = np.random.default_rng(2).standard_normal((300, 300)).astype(np.float32)
    want = np.triu(G) + np.triu(G, 1).T
    for panel in (64, 300, 512):  # several panels with a ragged last one, one panel
        got = cps.full_symmetric(np.triu(G) + np.tril(np.full_like(G, np.nan), -1), panel=panel)
        assert got.dtype == np.float32 and np.array_equal(got, want)


def test_sum_of_squares_accumulates_in_float64():
    x = np.full(3_000_000, 0.1, dtype=np.float32)
    exact = 3_000_000 * float(np.float32(0.1)) ** 2
    assert abs(cps.sum_of_squares(x) - exact) / exact < 1e-10
    assert abs(float(np.sum(x * x, dtype=np.float32)) - exact) / exact > 1e-8  # what fp32 sums would give


# ---------------------------------------------------------------------------------------------
# names → (layer, group)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, expected", [
    ("gpt_neox.layers.0.attention.query_key_value.weight", (0, "attn")),
    ("gpt_neox.layers.11.attention.dense.weight", (11, "attn")),
    ("gpt_neox.layers.3.mlp.dense_h_to_4h.weight", (3, "mlp")),
    ("gpt_neox.embed_in.weight", (-1, "other")),
    ("embed_out.weight", (-1, "other")),
    ("model.layers.7.self_attn.q_proj.weight", (7, "attn")),
    ("model.layers.7.mlp.gate_proj.weight", (7, "mlp")),
    ("model.layers.2.input_layernorm.weight", (2, "other")),
    ("model.embed_tokens.weight", (-1, "other")),
    ("lm_head.weight", (-1, "other")),
    ("transformer.h.0.attn.c_attn.weight", (0, "attn")),
    ("transformer.h.0.attn.c_proj.weight", (0, "attn")),   # c_proj under attn ...
    ("transformer.h.5.mlp.c_proj.weight", (5, "mlp")),     # ... and under mlp: group from the parent
    ("transformer.h.5.mlp.c_fc.weight", (5, "mlp")),
    ("transformer.wte.weight", (-1, "other")),
    ("transformer.h.1.self_attention.query_key_value.weight", (1, "attn")),  # Falcon
    ("model.decoder.layers.4.fc1.weight", (4, "mlp")),                        # OPT
    ("model.layers.3.block_sparse_moe.gate.weight", (3, "mlp")),              # Mixtral router
])
def test_parse_layer_group(name, expected):
    assert cps.parse_layer_group(name) == expected


# ---------------------------------------------------------------------------------------------
# the whole tool on planted changes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", list(PLANTS))
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_per_matrix_matches_exact_svd(pairs, tool_output, arch, dtype):
    a_dir, b_dir = pairs[arch, dtype]
    got = pd.read_csv(tool_output(arch, dtype, *extra_args(dtype)) / "per_matrix.csv")
    assert list(got.columns[:8]) == ["name", "layer", "group", "shape0", "shape1", "dW_fro",
                                     "dW_stable_rank", "W_stable_rank"]
    ref = reference(a_dir, b_dir)
    assert set(got["name"]) == set(ref)
    for row in got.itertuples():
        want = ref[row.name]
        assert (row.layer, row.group) == cps.parse_layer_group(row.name)
        assert abs(row.dW_fro - want["dW_fro"]) <= 1e-6 * want["dW_fro"]
        assert abs(row.W_stable_rank - want["W_stable_rank"]) <= 1e-4 * want["W_stable_rank"]
        if want["dW_fro"] == 0:
            assert row.dW_fro == 0 and math.isnan(row.dW_stable_rank)
        else:
            assert abs(row.dW_stable_rank - want["dW_stable_rank"]) <= 1e-4 * want["dW_stable_rank"]
            assert abs(row.dW_spec - want["dW_spec"]) <= 1e-4 * want["dW_spec"]
    changed = set(got.loc[got["dW_fro"] > 0, "name"])
    assert changed == set(PLANTS[arch])
    rank1 = got.set_index("name").loc[PLANTS[arch][0]]
    assert rank1["dW_stable_rank"] < (1.01 if dtype == "fp32" else 1.5)
    bulk = got.set_index("name").loc[PLANTS[arch][1]]
    assert bulk["dW_stable_rank"] > 10
    # rows are output features: transformers' Conv1D (GPT-2) stores [in, out]
    c_attn = got[got["name"].str.endswith("attn.c_attn.weight")]
    if arch == "gpt2":
        assert (c_attn["shape0"] == 3 * HIDDEN).all() and (c_attn["shape1"] == HIDDEN).all()


@pytest.mark.parametrize("arch", list(PLANTS))
def test_per_layer_aggregates_the_exact_values(pairs, tool_output, arch):
    a_dir, b_dir = pairs[arch, "fp32"]
    per_layer = pd.read_csv(tool_output(arch, "fp32", *extra_args("fp32")) / "per_layer.csv")
    assert list(per_layer.columns[:5]) == ["layer", "group", "dW_fro_layer", "mean_dW_stable_rank", "count_mats"]
    assert (per_layer["layer"] >= 0).all()  # embeddings / LM head stay out
    ref = reference(a_dir, b_dir)
    for row in per_layer.itertuples():
        members = {n: v for n, v in ref.items() if cps.parse_layer_group(n) == (row.layer, row.group)}
        assert row.count_mats == len(members)
        fro = math.sqrt(sum(v["dW_fro"] ** 2 for v in members.values()))
        assert abs(row.dW_fro_layer - fro) <= 1e-6 * max(fro, 1e-30)
        ranks = [v["dW_stable_rank"] for v in members.values() if v["dW_fro"] > 0]
        if ranks:
            assert abs(row.mean_dW_stable_rank - sum(ranks) / len(ranks)) <= 1e-4 * row.mean_dW_stable_rank
        else:
            assert row.dW_fro_layer == 0 and math.isnan(row.mean_dW_stable_rank)
    assert set(per_layer["group"]) == {"attn", "mlp"}


def test_aggregate_per_layer_by_hand():
    per_matrix = [
        {"name": "e", "layer": -1, "group": "other", "dW_fro": 9.0, "dW_stable_rank": 5.0},
        {"name": "a", "layer": 0, "group": "attn", "dW_fro": 3.0, "dW_stable_rank": 2.0},
        {"name": "b", "layer": 0, "group": "attn", "dW_fro": 4.0, "dW_stable_rank": 6.0},
        {"name": "c", "layer": 0, "group": "attn", "dW_fro": 0.0, "dW_stable_rank": math.nan},
        {"name": "d", "layer": 1, "group": "mlp", "dW_fro": 0.0, "dW_stable_rank": math.nan},
    ]
    got = pd.DataFrame(cps.aggregate_per_layer(per_matrix)).set_index(["layer", "group"])
    assert list(got.index) == [(0, "attn"), (1, "mlp")]
    assert got.loc[(0, "attn"), "dW_fro_layer"] == 5.0
    assert got.loc[(0, "attn"), "mean_dW_stable_rank"] == 4.0  # the unchanged matrix is left out
    assert got.loc[(0, "attn"), "count_mats"] == 3
    assert got.loc[(1, "mlp"), "dW_fro_layer"] == 0.0
    assert math.isnan(got.loc[(1, "mlp"), "mean_dW_stable_rank"])


def test_identical_models_give_zero_change(pairs, tmp_path):
    a_dir, _ = pairs["llama", "fp32"]
    assert run_tool(a_dir, a_dir, tmp_path) == 0
    got = pd.read_csv(tmp_path / "per_matrix.csv")
    assert (got["dW_fro"] == 0).all() and got["dW_stable_rank"].isna().all()
    assert got["W_stable_rank"].notna().all()
    per_layer = pd.read_csv(tmp_path / "per_layer.csv")
    assert (per_layer["dW_fro_layer"] == 0).all() and per_layer["mean_dW_stable_rank"].isna().all()


def test_one_and_two_blas_threads_agree(pairs, tmp_path):
    """The CPU route's BLAS thread count changes the summation order, not the numbers."""
    arch, dtype = "gpt_neox", "bf16"
    runs = {}
    for threads in (1, 2):
        with threadpool_limits(limits=threads, user_api="blas"):
            assert run_tool(*pairs[arch, dtype], tmp_path / str(threads), *extra_args(dtype)) == 0
        runs[threads] = pd.read_csv(tmp_path / str(threads) / "per_matrix.csv")
    one, two = runs[1], runs[2]
    assert two["dW_stable_rank"].isna().tolist() == one["dW_stable_rank"].isna().tolist()  # ΔW = 0
    for column in ("dW_fro", "dW_stable_rank", "W_stable_rank"):
        close = (two[column] - one[column]).abs() <= 1e-5 * one[column].abs()
        assert (close | one[column].isna()).all(), column


def test_cpu_run_imports_neither_torch_nor_pandas(pairs, tmp_path):
    """Start-up: on the CPU (--device cpu, and auto without GPU device files) the tool is numpy and
    SciPy only; torch's import alone is ~3.5 s of CPU."""
    a_dir, b_dir = pairs["gpt_neox", "bf16"]
    probe = (
        "import os, runpy, sys\n"
        "os.path.exists = lambda p, _e=os.path.exists: False if p in {gpu} else _e(p)\n"
        "sys.argv = ['collect_param_stats.py', '--model-a', {a!r}, '--model-b', {b!r}, '--outdir', {out!r}, "
        "'--device', {device!r}]\n"
        "try:\n    runpy.run_path({tool!r}, run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "print(sorted(m for m in ('torch', 'pandas', 'transformers') if m in sys.modules))\n")
    for device in ("cpu", "auto"):
        code = probe.format(gpu=repr(set(cps.GPU_DEVICE_FILES)), a=str(a_dir), b=str(b_dir),
                            out=str(tmp_path / device), device=device, tool=str(ROOT / "collect_param_stats.py"))
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout
        assert (tmp_path / device / "per_matrix.csv").is_file()


def test_choose_device_asks_torch_only_where_a_gpu_may_be(monkeypatch):
    monkeypatch.setattr(cps, "pick_device", lambda name: pytest.fail("torch was asked"))
    assert cps.choose_device("cpu") == "cpu"
    monkeypatch.setattr(cps.sys, "platform", "linux")
    monkeypatch.setattr(cps.os.path, "exists", lambda p: False)
    assert cps.choose_device("auto") == "cpu"
    asked = []
    monkeypatch.setattr(cps, "pick_device", lambda name: asked.append(name) or "cpu")
    monkeypatch.setattr(cps.os.path, "exists", lambda p: p == "/dev/nvidiactl")
    assert cps.choose_device("auto") == "cpu" and asked == ["auto"]
    assert cps.choose_device("cuda") == "cpu" and asked == ["auto", "cuda"]
    monkeypatch.undo()
    if not torch.cuda.is_available():  # the real question to torch, answered in one line
        with pytest.raises(cps.UsageError, match="CUDA is not available"):
            cps.choose_device("cuda")


def test_same_seed_gives_byte_identical_csvs(pairs, tool_output, tmp_path):
    a_dir, b_dir = pairs["gpt_neox", "fp32"]
    assert run_tool(a_dir, b_dir, tmp_path, *extra_args("fp32")) == 0
    for csv in ("per_matrix.csv", "per_layer.csv"):
        first = tool_output("gpt_neox", "fp32", *extra_args("fp32")) / csv
        assert (tmp_path / csv).read_bytes() == first.read_bytes()


def test_names_in_one_model_only_are_warned_and_skipped(pairs, tmp_path, capsys):
    a_dir, b_dir = pairs["gpt_neox", "fp32"]  # B is a single file: every *.safetensors is read
    b_extra = tmp_path / "b"
    shutil.copytree(b_dir, b_extra)
    save_file({"extra.adapter.weight": torch.zeros(4, 4)}, b_extra / "extra.safetensors")
    assert run_tool(a_dir, b_extra, tmp_path / "out") == 0
    err = capsys.readouterr().err
    assert "1 weight matrices are only in model B" in err and "extra.adapter.weight" in err
    assert "extra.adapter.weight" not in set(pd.read_csv(tmp_path / "out" / "per_matrix.csv")["name"])


def test_truncated_shard_is_one_line_error(pairs, tmp_path, capsys):
    a_dir, b_dir = pairs["gpt_neox", "fp32"]
    a_bad = tmp_path / "a"
    shutil.copytree(a_dir, a_bad)
    shard = sorted(a_bad.glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    assert run_tool(a_bad, b_dir, tmp_path / "out") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot read") and shard.name in err[0]
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# bad input from the command line: one line on stderr, exit 1, nothing written or lost
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_runs(pairs, tmp_path_factory):
    """Launch every bad-input command at once (each pays the interpreter start-up)."""
    root = tmp_path_factory.mktemp("bad")
    a_dir, b_dir = pairs["gpt_neox", "fp32"]
    no_st = root / "no_safetensors"
    no_st.mkdir()
    (no_st / "pytorch_model.bin").write_bytes(b"\x80\x02not really a pickle")
    (no_st / "config.json").write_text("{}")
    other = save_model(make_tiny_model("gpt_neox", hidden=48, layers=LAYERS, intermediate=INTER), root / "wider")
    corrupt = root / "corrupt"
    shutil.copytree(a_dir, corrupt)
    for shard in sorted(corrupt.glob("*.safetensors"))[1:2]:
        shard.write_bytes(b"this is not a safetensors file" * 10)
    cases = {
        "missing_dir": ([str(root / "does-not-exist"), str(b_dir)], "does not exist"),
        "no_safetensors": ([str(no_st), str(b_dir)], "no .safetensors weights"),
        "shape_mismatch": ([str(a_dir), str(other)], "different shapes"),
        "corrupt_shard": ([str(corrupt), str(b_dir)], "cannot read"),
        "offline_hub_id": (["EleutherAI/deep-ignorance-unfiltered", str(b_dir)], "offline"),
    }
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(root / "empty_hf_home"))
    procs = {}
    for case, (models, _) in cases.items():
        outdir = root / case / "param_stats"
        outdir.mkdir(parents=True)
        (outdir / "per_matrix.csv").write_text("an earlier result\n")
        cmd = [sys.executable, str(ROOT / "collect_param_stats.py"), "--model-a", models[0],
               "--model-b", models[1], "--outdir", str(outdir), "--device", "cpu"]
        procs[case] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env),
                       outdir)
    results = {}
    for case, (proc, outdir) in procs.items():
        out, err = proc.communicate(timeout=240)
        results[case] = (proc.returncode, out, err, outdir, cases[case][1])
    return results


@pytest.mark.parametrize("case", ["missing_dir", "no_safetensors", "shape_mismatch", "corrupt_shard",
                                  "offline_hub_id"])
def test_bad_input_is_one_line_error(bad_runs, case):
    returncode, _, err, outdir, expected = bad_runs[case]
    lines = err.strip().splitlines()
    assert returncode == 1, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert "Traceback" not in err
    assert sorted(p.name for p in outdir.iterdir()) == ["per_matrix.csv"]  # no new or temp files
    assert (outdir / "per_matrix.csv").read_text() == "an earlier result\n"
    if case == "offline_hub_id":
        assert "EleutherAI/deep-ignorance-unfiltered" in lines[0] and "--demo" in lines[0]


# ---------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------
def test_plots_are_written(tool_output, tmp_path):
    stats = tool_output("gpt2", "fp32", *extra_args("fp32"))
    assert pps.main(["--stats-dir", str(stats), "--outdir", str(tmp_path / "plots"),
                     "--name", "a_vs_b", "--model-a-label", "tiny-a", "--model-b-label", "tiny-b"]) == 0
    for png in ("layer_locality_a_vs_b.png", "stable_rank_a_vs_b.png"):
        data = (tmp_path / "plots" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, png
    assert not [p for p in (tmp_path / "plots").iterdir() if p.name.startswith(".")]  # no temp files


@pytest.mark.parametrize("content", [None, "", "layer,group,dW_fro_layer,mean_dW_stable_rank,count_mats\n"])
def test_plot_without_data_is_one_line_error(tmp_path, capsys, content):
    if content is not None:
        (tmp_path / "per_layer.csv").write_text(content)
    assert pps.main(["--stats-dir", str(tmp_path), "--outdir", str(tmp_path / "plots"), "--name", "x"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "per_layer.csv" in err[0]
    assert not (tmp_path / "plots").exists()


# ---------------------------------------------------------------------------------------------
# component, rel_dW_fro, cos_sim and per_component.csv (issue 22), against float64 numpy
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, expected", [
    ("gpt_neox.layers.3.attention.query_key_value.weight", "qkv"),
    ("gpt_neox.layers.3.attention.dense.weight", "attn_out"),
    ("gpt_neox.layers.3.mlp.dense_h_to_4h.weight", "mlp_in"),
    ("gpt_neox.layers.3.mlp.dense_4h_to_h.weight", "mlp_out"),
    ("gpt_neox.embed_in.weight", "embed"), ("embed_out.weight", "unembed"),
    ("gpt_neox.layers.0.post_attention_layernorm.weight", "norm"), ("gpt_neox.final_layer_norm.bias", "norm"),
    ("model.layers.0.self_attn.q_proj.weight", "q"), ("model.layers.0.self_attn.k_proj.weight", "k"),
    ("model.layers.0.self_attn.v_proj.weight", "v"), ("model.layers.0.self_attn.o_proj.weight", "attn_out"),
    ("model.layers.0.mlp.gate_proj.weight", "mlp_in"), ("model.layers.0.mlp.up_proj.weight", "mlp_in"),
    ("model.layers.0.mlp.down_proj.weight", "mlp_out"), ("model.embed_tokens.weight", "embed"),
    ("lm_head.weight", "unembed"), ("model.norm.weight", "norm"),
    ("transformer.h.0.attn.c_attn.weight", "qkv"), ("transformer.h.0.attn.c_proj.weight", "attn_out"),
    ("transformer.h.0.mlp.c_fc.weight", "mlp_in"), ("transformer.h.0.mlp.c_proj.weight", "mlp_out"),
    ("transformer.wte.weight", "embed"), ("transformer.wpe.weight", "embed"), ("transformer.ln_f.weight", "norm"),
    ("transformer.h.2.ln_1.weight", "norm"), ("gpt_neox.layers.0.attention.rotary_emb.inv_freq", "other"),
])
def test_weight_component(name, expected):
    assert cps.weight_component(name) == expected


def _numpy_reference(a_dir, b_dir):
    ta, tb = load_dir(a_dir), load_dir(b_dir)
    out = {}
    for name, wa in ta.items():
        if wa.ndim == 2 and name in tb:
            a = wa.double().numpy()
            b = tb[name].double().numpy()
            out[name] = (a, b)
    return out


@pytest.mark.parametrize("arch", list(PLANTS))
def test_component_rel_norm_and_cosine_match_float64_numpy(pairs, tool_output, arch):
    a_dir, b_dir = pairs[arch, "fp32"]
    out = tool_output(arch, "fp32", *extra_args("fp32"))
    got = pd.read_csv(out / "per_matrix.csv").set_index("name")
    ref = _numpy_reference(a_dir, b_dir)
    for name, (a, b) in ref.items():
        row = got.loc[name]
        assert row["component"] == cps.weight_component(name)
        want_rel = np.linalg.norm(b - a) / np.linalg.norm(a)
        want_cos = float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))
        assert abs(row["rel_dW_fro"] - want_rel) <= 1e-6 * max(want_rel, 1e-30)
        assert abs(row["cos_sim"] - want_cos) <= 1e-9
    # per_component.csv: Σ‖ΔW‖², √(Σ‖ΔW‖² / Σ‖W_a‖²) and the mean stable rank per (layer, component)
    per_comp = pd.read_csv(out / "per_component.csv")
    assert list(per_comp.columns) == cps.PER_COMPONENT_COLUMNS
    refs = reference(a_dir, b_dir)
    for row in per_comp.itertuples():
        members = [n for n in ref if (cps.parse_layer_group(n)[0], cps.weight_component(n)) == (row.layer, row.component)]
        assert row.count_mats == len(members) > 0
        dw_sq = sum(float(((ref[n][1] - ref[n][0]) ** 2).sum()) for n in members)
        w_sq = sum(float((ref[n][0] ** 2).sum()) for n in members)
        assert abs(row.dW_fro_sq - dw_sq) <= 1e-6 * max(dw_sq, 1e-30)
        assert abs(row.rel_dW_fro - math.sqrt(dw_sq / w_sq)) <= 1e-6 * max(math.sqrt(dw_sq / w_sq), 1e-30)
        ranks = [refs[n]["dW_stable_rank"] for n in members if refs[n]["dW_fro"] > 0]
        if ranks:
            assert abs(row.mean_dW_stable_rank - sum(ranks) / len(ranks)) <= 1e-4 * row.mean_dW_stable_rank
        else:
            assert math.isnan(row.mean_dW_stable_rank)
    comps = set(per_comp["component"])
    assert {"attn_out", "mlp_in", "mlp_out", "embed"} <= comps
    assert ("unembed" in comps) == (arch != "gpt2")  # GPT-2 ties its LM head to wte
    assert ({"q", "k", "v"} <= comps) if arch == "llama" else ("qkv" in comps)


def test_progress_line_per_matrix_in_a_log(pairs, tmp_path, capsys, monkeypatch):
    """Non-TTY stderr (a log): a started line with the number of matrices, a line per matrix
    naming it (the 60 s period set to 0 here), and a done line."""
    a_dir, b_dir = pairs["gpt_neox", "fp32"]
    monkeypatch.setattr(cps, "progress", lambda *a, **k: cps.LineProgress(*a, every=0, **k))
    assert run_tool(a_dir, b_dir, tmp_path / "out") == 0
    names = list(pd.read_csv(tmp_path / "out" / "per_matrix.csv")["name"])
    err = capsys.readouterr().err.splitlines()
    n = len(names)
    assert f"ΔW spectra: started of {n} matrix" in err
    lines = [line for line in err if line.startswith("ΔW spectra: ") and " s, " in line]
    assert [line.split(" s, ")[-1] for line in lines] == names + [names[-1]]  # per matrix, then done
    assert lines[-1].startswith(f"ΔW spectra: done, {n}/{n} matrix")
