"""collect_weight_geometry.py (and plot_weight_geometry.py) against a float64 numpy SVD.

Planted changes on matrices of GPT-NeoX, Llama and GPT-2 shapes (GPT-2's Conv1D stored (in, out)):
rank-1 outside W_a's column space and larger than σ₁ (one intruder), rank-1 inside it (none),
Gaussian noise (near full rank, shares near their random baselines), a slowly decaying spectrum,
an ill-conditioned W_a, identical matrices, bf16 storage; then the whole tool on tiny models.
The reference (`reference` below) is numpy.linalg.svd in float64 with every column written out.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings

import ml_dtypes
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.numpy import load_file as load_np
from safetensors.torch import load_file, save_file

from conftest import ROOT, make_tiny_model, save_model

import collect_weight_geometry as cwg

EPS32, EPS64 = float(np.finfo(np.float32).eps), float(np.finfo(np.float64).eps)
RTOL = 1e-3


# ---------------------------------------------------------------------------------------------
# the independent reference: a float64 full SVD, every column written out
# ---------------------------------------------------------------------------------------------
def ref_elbow(sigma):
    """Count of singular values before the point farthest below the chord of the log spectrum."""
    s = [x for x in sigma if x > 0]
    r = len(s)
    if r <= 2:
        return r
    y = [math.log10(x) for x in s]
    if y[0] == y[-1]:
        return r
    best, where = 0.0, r
    for i in range(r):
        # signed distance of (i/(r-1), (y_i - y_r)/(y_1 - y_r)) below the line x + y = 1
        d = (1 - i / (r - 1) - (y[i] - y[-1]) / (y[0] - y[-1])) / math.sqrt(2)
        if d > best + 1e-15:
            best, where = d, i
    return where if best * math.sqrt(2) > 1e-12 else r


def reference(Wa, Wb, top_k=20, intruder_k=10, eps=0.5):
    """Columns of one matrix from float64 SVDs of W_a, W_b and ΔW ((out, in) orientation)."""
    Wa, Wb = np.asarray(Wa, np.float64), np.asarray(Wb, np.float64)
    D = Wb - Wa
    m, n = Wa.shape
    k = min(top_k, m, n)
    Ua, sa, Vat = np.linalg.svd(Wa, full_matrices=False)
    Ub, sb, Vbt = np.linalg.svd(Wb, full_matrices=False)
    sd = np.linalg.svd(D, compute_uv=False)
    out = {"rows": m, "cols": n, "k": k, "dW_fro": np.linalg.norm(D), "rel_dW_fro": np.linalg.norm(D) / np.linalg.norm(Wa),
           "left_overlap_k_random": k / m, "right_overlap_k_random": k / n,
           "dW_in_colspace_k_random": k / m, "dW_in_rowspace_k_random": k / n}
    total = float((sd ** 2).sum())
    floor = math.sqrt(min(m, n) * EPS64) * sd[0] if total > 0 else 0
    sd = np.where(sd > floor, sd, 0.0)
    if total == 0:
        out.update(dW_rank=0, dW_eff_rank_99=0, dW_top10_energy=None, dW_erank=0.0, dW_elbow=0,
                   dW_in_colspace_k=None, dW_in_rowspace_k=None)
    else:
        e = sd ** 2
        out["dW_rank"] = int((sd > 0).sum())
        out["dW_eff_rank_99"] = next(i + 1 for i in range(len(e)) if e[:i + 1].sum() >= 0.99 * e.sum())
        out["dW_top10_energy"] = e[:10].sum() / e.sum()
        p = sd[sd > 0] / sd.sum()
        out["dW_erank"] = math.exp(-sum(pi * math.log(pi) for pi in p))
        out["dW_elbow"] = ref_elbow(sd)
        out["dW_in_colspace_k"] = np.linalg.norm(Ua[:, :k].T @ D) ** 2 / total
        out["dW_in_rowspace_k"] = np.linalg.norm(D @ Vat[:k].T) ** 2 / total
    out["left_overlap_k"] = np.linalg.norm(Ua[:, :k].T @ Ub[:, :k]) ** 2 / k
    out["right_overlap_k"] = np.linalg.norm(Vat[:k] @ Vbt[:k].T) ** 2 / k
    nonzero = sa > max(m, n) * EPS32 * sa[0]
    ki = min(intruder_k, int((sb > max(m, n) * EPS32 * sb[0]).sum()))
    best = np.abs(Ua[:, nonzero].T @ Ub[:, :ki]).max(axis=0)
    out.update(intruder_k=ki, intruders=int((best < eps).sum()), intruder_max_cos_min=float(best.min()))
    return out, sd


def assert_matches(got: dict, want: dict, names=None):
    for col, w in want.items():
        if names is not None and col not in names:
            continue
        g = got[col]
        if w is None:
            assert g is None or (isinstance(g, float) and math.isnan(g)), (col, g)
        elif isinstance(w, (int, np.integer)) and col not in ("rows", "cols"):
            assert int(g) == int(w), (col, g, w)
        else:
            assert abs(float(g) - float(w)) <= RTOL * abs(float(w)) + 1e-9, (col, g, w)


def haar(m, r, rng):
    return np.linalg.qr(rng.standard_normal((m, r)))[0]


def planted(m, n, spectrum, rng):
    r = len(spectrum)
    return (haar(m, r, rng) * np.asarray(spectrum)) @ haar(n, r, rng).T


# ---------------------------------------------------------------------------------------------
# one matrix: planted changes
# ---------------------------------------------------------------------------------------------
SHAPES = {"neox_qkv": (96, 32), "llama_down": (32, 64), "gpt2_c_fc": (128, 32)}


def stored(W, conv1d):
    """How a checkpoint stores the (out, in) matrix W: GPT-2's Conv1D keeps Wᵀ, (in, out)."""
    return np.ascontiguousarray(W.T if conv1d else W, dtype=np.float32)


def case(kind, shape, rng):
    m, n = shape
    Wa = rng.standard_normal((m, n)) / math.sqrt(n)
    if kind == "ill_conditioned":
        Wa = planted(m, n, np.logspace(0, -5, min(m, n)), rng)
    Ua, sa, Vat = np.linalg.svd(Wa, full_matrices=False)
    if kind == "rank1_outside":  # needs m > n: a direction orthogonal to W_a's column space
        u = rng.standard_normal(m)
        u -= Ua @ (Ua.T @ u)
        u /= np.linalg.norm(u)
        D = 4 * sa[0] * np.outer(u, Vat[-1])
    elif kind == "rank1_inside":
        D = 0.5 * sa[0] * np.outer(Ua[:, 0], haar(n, 1, rng)[:, 0])
    elif kind == "noise":
        D = 0.05 * rng.standard_normal((m, n)) / math.sqrt(n)
    elif kind in ("slow", "ill_conditioned"):
        D = planted(m, n, [0.05 * (i + 1) ** -0.3 for i in range(min(m, n))], rng)
    elif kind == "identical":
        D = np.zeros((m, n))
    Wb = Wa + D
    # the stored values are fp32: the reference sees exactly what the tool reads
    return Wa.astype(np.float32).astype(np.float64), Wb.astype(np.float32).astype(np.float64)


def run_case(kind, shape_name, conv1d=False, dtype=np.float32, **kw):
    rng = np.random.default_rng(abs(hash((kind, shape_name))) % 2**32)
    Wa, Wb = case(kind, SHAPES[shape_name], rng)
    if dtype != np.float32:
        Wa, Wb = (W.astype(dtype).astype(np.float64) for W in (Wa, Wb))
    raw_a, raw_b = (np.ascontiguousarray((W.T if conv1d else W).astype(dtype)) for W in (Wa, Wb))
    got, sigma = cwg.matrix_geometry(raw_a, raw_b, conv1d, chunk_elems=700, **kw)  # many slices
    want, sd = reference(Wa, Wb, kw.get("top_k", 20), kw.get("intruder_k", 10), kw.get("intruder_eps", 0.5))
    return got, sigma, want, sd


@pytest.mark.parametrize("shape_name, conv1d", [("neox_qkv", False), ("llama_down", False), ("gpt2_c_fc", True)])
@pytest.mark.parametrize("kind", ["rank1_inside", "noise", "slow", "ill_conditioned"])
def test_columns_match_float64_svd(kind, shape_name, conv1d):
    got, sigma, want, sd = run_case(kind, shape_name, conv1d, top_k=5, intruder_k=4)
    assert_matches(got, want)
    assert np.allclose(sigma, sd, rtol=1e-6, atol=1e-9 * sd[0])
    m, n = SHAPES[shape_name]
    if kind == "rank1_inside":
        assert got["dW_eff_rank_99"] == 1 and abs(got["dW_erank"] - 1) < 1e-6 and got["dW_elbow"] == 1
        assert got["intruders"] == 0 and got["dW_in_colspace_k"] > 0.999
    if kind == "noise":
        assert got["dW_eff_rank_99"] >= 0.8 * min(m, n) and got["dW_erank"] >= 0.8 * min(m, n)
        for side in ("colspace", "rowspace"):  # no preferred direction: near the random baseline
            ratio = got[f"dW_in_{side}_k"] / got[f"dW_in_{side}_k_random"]
            assert 0.6 < ratio < 1.5, (side, ratio)
    if kind == "slow":
        assert got["dW_eff_rank_99"] > 0.8 * min(m, n) and got["dW_top10_energy"] < 0.6


@pytest.mark.parametrize("shape_name, conv1d", [("neox_qkv", False), ("gpt2_c_fc", True)])
def test_rank1_outside_the_column_space_is_one_intruder(shape_name, conv1d):
    got, sigma, want, _ = run_case("rank1_outside", shape_name, conv1d)
    assert_matches(got, want)
    assert got["dW_eff_rank_99"] == got["dW_rank"] == 1 and got["dW_elbow"] == 1 and abs(got["dW_erank"] - 1) < 1e-6
    assert got["intruders"] == 1 and got["intruder_max_cos_min"] < 0.1
    assert got["dW_in_colspace_k"] < 1e-12  # orthogonal to everything W_a's columns span
    assert np.count_nonzero(sigma) == 1


@pytest.mark.parametrize("kind, shape_name", [("slow", "neox_qkv"), ("ill_conditioned", "llama_down"),
                                              ("rank1_outside", "gpt2_c_fc")])
def test_torch_route_matches_float64_svd(kind, shape_name):
    """The accelerator route (torch float64: Gram by matmul, torch.linalg.eigh), run on the CPU."""
    got, sigma, want, sd = run_case(kind, shape_name, shape_name == "gpt2_c_fc", top_k=5, intruder_k=4,
                                    ops=cwg.Ops("cpu", use_torch=True))
    assert_matches(got, want)
    assert np.allclose(sigma, sd, rtol=1e-6, atol=1e-9 * sd[0])


def test_bf16_storage():
    got, sigma, want, sd = run_case("slow", "neox_qkv", dtype=ml_dtypes.bfloat16, top_k=5, intruder_k=4)
    assert_matches(got, want)
    assert np.allclose(sigma, sd, rtol=1e-6, atol=1e-9 * sd[0])


def test_identical_matrices_give_zeros_and_empty_cells_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got, sigma, want, _ = run_case("identical", "llama_down", top_k=5)
    assert_matches(got, want)
    assert got["dW_fro"] == 0 and got["dW_eff_rank_99"] == 0 and got["dW_erank"] == 0 and got["dW_elbow"] == 0
    assert got["dW_top10_energy"] is None and got["dW_in_colspace_k"] is None and got["dW_in_rowspace_k"] is None
    assert got["intruders"] == 0 and abs(got["left_overlap_k"] - 1) < 1e-9 and not sigma.any()


def test_non_finite_weights_are_a_usage_error():
    a = np.ones((8, 4), np.float32)
    b = a.copy()
    b[3, 1] = np.nan
    with pytest.raises(cwg.UsageError, match="NaN or infinite"):
        cwg.matrix_geometry(a, b, name="x.weight")


@pytest.mark.parametrize("sigma, elbow", [([], 0), ([3.0], 1), ([2.0, 1.0], 2), ([1.0] * 5, 5),
                                          ([10, 9, 8, 0.1, 0.09, 0.08], 3), ([8, 4, 2, 1, 0.5], 5),
                                          ([5, 0.01, 0.009, 0.008, 0.0], 1), ([5, 4.9, 4.8, 0.01], 4),
                                          ([9, 8, 1e-3, 9e-4, 8e-4, 7e-4, 6e-4], 2)])
def test_elbow_definition(sigma, elbow):
    assert cwg.elbow_index(np.array(sigma, dtype=float)) == elbow == ref_elbow(sigma)


def test_blas_products_in_either_memory_order():
    """_gemm and gram_add hand C-ordered operands to BLAS as their Fortran-ordered transposes (no copies):
    every combination equals numpy's float64 product; f64 copies a transposed view in Fortran order."""
    rng = np.random.default_rng(0)
    a, b, c = rng.standard_normal((7, 5)), rng.standard_normal((5, 3)), rng.standard_normal((7, 2))
    for x in (a, np.asfortranarray(a)):
        for y in (b, np.asfortranarray(b)):
            np.testing.assert_allclose(cwg._gemm(x, y), a @ b, rtol=1e-13)
        for z in (c, np.asfortranarray(c)):
            np.testing.assert_allclose(cwg._gemm(x, z, trans_a=True), a.T @ c, rtol=1e-13)
    ops = cwg.Ops("cpu")
    w = rng.standard_normal((6, 9)).astype(np.float32)
    for block in (w.T[2:6], w[1:4]):  # a row slice of a transposed view (Fortran) and of a stored matrix (C)
        x = ops.f64(block)
        assert x.dtype == np.float64 and (x == block).all()
        g = ops.zeros(block.shape[1], block.shape[1])
        ops.gram_add(g, x)
        ref = block.astype(np.float64).T @ block.astype(np.float64)
        np.testing.assert_allclose(np.triu(g), np.triu(ref), rtol=1e-13)
    assert ops.f64(w.T[2:6]).flags.f_contiguous and ops.f64(w[1:4]).flags.c_contiguous


def test_parse_layers_and_components():
    assert cwg.parse_layer_spec("0-2,5") == {0, 1, 2, 5} and cwg.parse_layer_spec(None) is None
    assert cwg.parse_components("qkv") == {"qkv", "q", "k", "v"}
    for bad in ("3-1", "a", "-1"):
        with pytest.raises(cwg.UsageError):
            cwg.parse_layer_spec(bad)
    with pytest.raises(cwg.UsageError):
        cwg.parse_components("attention")


# ---------------------------------------------------------------------------------------------
# the whole tool on tiny models of the three naming schemes
# ---------------------------------------------------------------------------------------------
PLANTS = {  # (rank-1 target, Gaussian-noise target)
    "gpt_neox": ("gpt_neox.layers.0.attention.query_key_value.weight", "gpt_neox.layers.1.mlp.dense_h_to_4h.weight"),
    "llama": ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"),
    "gpt2": ("transformer.h.0.attn.c_attn.weight", "transformer.h.1.mlp.c_proj.weight"),
}
CONV1D = (".c_attn.weight", ".c_fc.weight", ".c_proj.weight")


def load_oriented(path, arch):
    """Every 2-D tensor of a checkpoint in float64, as (out, in): GPT-2's Conv1D transposed."""
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        for name, t in load_file(f).items():
            if t.ndim == 2:
                w = t.double().numpy()
                out[name] = w.T if arch == "gpt2" and name.endswith(CONV1D) else w
    return out


@pytest.fixture(scope="module")
def model_pairs(tmp_path_factory):
    """arch -> (A dir, B dir): B is A's tensors with a rank-1 and a noise change planted (written
    with safetensors directly, no second model built); Llama stored in bf16, A sharded."""
    root = tmp_path_factory.mktemp("models")
    pairs = {}
    gen = torch.Generator().manual_seed(0)
    for arch, (rank1, noise) in PLANTS.items():
        dtype = torch.bfloat16 if arch == "llama" else torch.float32
        a_dir = save_model(make_tiny_model(arch, seed=1, hidden=32, layers=2), root / f"{arch}-a", dtype=dtype,
                           max_shard_size="30KB")
        tensors = {}
        for f in sorted(a_dir.glob("*.safetensors")):
            tensors.update(load_file(f))
        p = tensors[rank1].double()
        p += 0.5 * torch.outer(torch.randn(p.shape[0], generator=gen, dtype=torch.float64),
                               torch.randn(p.shape[1], generator=gen, dtype=torch.float64))
        tensors[rank1] = p.to(dtype)
        tensors[noise] = (tensors[noise].double() + 0.01 * torch.randn(tensors[noise].shape, generator=gen,
                                                                       dtype=torch.float64)).to(dtype)
        b_dir = root / f"{arch}-b"
        b_dir.mkdir()
        (b_dir / "config.json").write_bytes((a_dir / "config.json").read_bytes())
        save_file({n: t.contiguous() for n, t in tensors.items()}, b_dir / "model.safetensors", metadata={"format": "pt"})
        pairs[arch] = (a_dir, b_dir)
    return pairs


@pytest.fixture(scope="module")
def tool_runs(model_pairs, tmp_path_factory):
    out = {}
    for arch, (a_dir, b_dir) in model_pairs.items():
        outdir = tmp_path_factory.mktemp(arch) / "wg"
        assert cwg.main(["--model-a", str(a_dir), "--model-b", str(b_dir), "--outdir", str(outdir),
                         "--device", "cpu", "--top-k", "6", "--intruder-k", "4", "--chunk-mb", "0.01"]) == 0
        out[arch] = outdir
    return out


@pytest.mark.parametrize("arch", list(PLANTS))
def test_tool_matches_float64_svd_on_every_matrix(model_pairs, tool_runs, arch):
    a_dir, b_dir = model_pairs[arch]
    got = pd.read_csv(tool_runs[arch] / "weight_geometry.csv")
    assert list(got.columns) == cwg.GEOMETRY_COLUMNS
    wa, wb = load_oriented(a_dir, arch), load_oriented(b_dir, arch)
    want_names = {n for n in wa if cwg.weight_component(n) in {"qkv", "q", "k", "v", "attn_out", "mlp_in", "mlp_out"}}
    assert set(got["name"]) == want_names
    spectra = load_np(str(tool_runs[arch] / "dW_spectra.safetensors"))
    assert set(spectra) == want_names
    for row in got.to_dict("records"):
        want, sd = reference(wa[row["name"]], wb[row["name"]], 6, 4)
        assert row["component"] == cwg.weight_component(row["name"])
        assert row["layer"] == int(row["name"].split(".")[2 if arch != "gpt2" else 2])
        assert_matches({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}, want)
        assert np.allclose(spectra[row["name"]], sd, rtol=1e-5, atol=1e-7 * max(sd[0], 1e-30))
    rows = got.set_index("name")
    rank1, noise = PLANTS[arch]
    assert rows.loc[rank1, "dW_eff_rank_99"] == 1 and rows.loc[rank1, "dW_elbow"] == 1
    assert rows.loc[noise, "dW_eff_rank_99"] > 0.8 * min(rows.loc[noise, "rows"], rows.loc[noise, "cols"])
    assert (rows.drop([rank1, noise])["dW_fro"] == 0).all()
    if arch == "gpt2":  # (out, in): c_attn maps 32 -> 96
        assert (rows.loc[rank1, "rows"], rows.loc[rank1, "cols"]) == (96, 32)
    report = (tool_runs[arch] / "geometry_report.yaml").read_text()
    assert "Input_sha256" in report and "top_k: 6" in report


def test_identical_models_write_no_nan(model_pairs, tmp_path):
    a_dir, _ = model_pairs["gpt_neox"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cwg.main(["--model-a", str(a_dir), "--model-b", str(a_dir), "--outdir", str(tmp_path / "o"),
                         "--device", "cpu", "--components", "all"]) == 0
    text = (tmp_path / "o" / "weight_geometry.csv").read_text()
    assert "nan" not in text.lower()
    got = pd.read_csv(tmp_path / "o" / "weight_geometry.csv")
    assert (got["dW_fro"] == 0).all() and (got["dW_eff_rank_99"] == 0).all() and (got["intruders"] == 0).all()
    assert got["dW_in_colspace_k"].isna().all()  # undefined for ΔW = 0: an empty cell
    assert {"embed", "unembed", "qkv"} <= set(got["component"])


def test_same_inputs_give_byte_identical_outputs(model_pairs, tool_runs, tmp_path):
    a_dir, b_dir = model_pairs["gpt2"]
    assert cwg.main(["--model-a", str(a_dir), "--model-b", str(b_dir), "--outdir", str(tmp_path / "again"),
                     "--device", "cpu", "--top-k", "6", "--intruder-k", "4", "--chunk-mb", "0.01"]) == 0
    for f in ("weight_geometry.csv", "dW_spectra.safetensors", "geometry_report.yaml"):
        assert (tmp_path / "again" / f).read_bytes() == (tool_runs["gpt2"] / f).read_bytes(), f
    assert oct((tmp_path / "again" / "weight_geometry.csv").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _one_error_line(capsys, argv):
    code = cwg.main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    # progress lines of the stages that ran may come first; then exactly one error line, last, no traceback
    errors = [line for line in err if line.startswith("error")]
    assert code == 1 and len(errors) == 1 and err[-1] == errors[0] and errors[0].startswith("error: "), err
    assert not any("Traceback" in line for line in err), err
    return errors[0]


def test_bad_input_is_one_error_line(model_pairs, tmp_path, capsys):
    a_dir, b_dir = model_pairs["gpt_neox"]
    # a non-finite weight in B
    bad = tmp_path / "nan"
    bad.mkdir()
    for f in b_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    shard = next(bad.glob("*.safetensors"))
    tensors = load_file(shard)
    name = next(n for n in tensors if n.endswith("attention.dense.weight"))
    tensors[name][0, 0] = float("inf")
    save_file(tensors, shard, metadata={"format": "pt"})
    line = _one_error_line(capsys, ["--model-a", str(a_dir), "--model-b", str(bad), "--outdir", str(tmp_path / "o1")])
    assert "NaN or infinite" in line and name in line
    assert not (tmp_path / "o1").exists()
    # mismatched shapes: a wider model
    wide = tmp_path / "wide"  # B with one matrix of another shape
    wide.mkdir()
    (wide / "config.json").write_bytes((b_dir / "config.json").read_bytes())
    tensors = load_file(b_dir / "model.safetensors")
    tensors[name] = torch.zeros(tensors[name].shape[0], tensors[name].shape[1] + 1)
    save_file(tensors, wide / "model.safetensors")
    line = _one_error_line(capsys, ["--model-a", str(a_dir), "--model-b", str(wide), "--outdir", str(tmp_path / "o2")])
    assert "different shapes" in line
    # settings out of range
    _one_error_line(capsys, ["--model-a", str(a_dir), "--model-b", str(b_dir), "--top-k", "0"])
    _one_error_line(capsys, ["--model-a", str(a_dir), "--model-b", str(b_dir), "--layers", "7-2"])
    _one_error_line(capsys, ["--model-a", str(a_dir), "--model-b", str(tmp_path / "missing")])


def test_help_runs_without_the_project_imports():
    out = subprocess.run([sys.executable, str(ROOT / "collect_weight_geometry.py"), "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--intruder-eps" in out.stdout


# ---------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------
def test_plots_are_written(tool_runs, tmp_path, capsys):
    import plot_weight_geometry as pwg

    stats = tmp_path / "param_stats"
    stats.mkdir()
    (stats / "per_component.csv").write_text("layer,component,dW_fro_sq,rel_dW_fro,mean_dW_stable_rank,count_mats,"
                                             "count_changed\n0,qkv,0.25,0.5,1.0,1,1\n1,qkv,0,0,,1,0\n"
                                             "0,mlp_in,0,0,,1,0\n1,mlp_in,0.01,0.02,30,1,1\n")
    out = tmp_path / "plots"
    assert pwg.main(["--geometry-dir", str(tool_runs["llama"]), "--param-stats-dir", str(stats),
                     "--outdir", str(out), "--name", "pair", "--model-b-index", "2"]) == 0
    pngs = sorted(p.name for p in out.iterdir())
    assert pngs == sorted(f"{k}_pair.png" for k in ("dW_spectra", "eff_rank", "intruders", "colspace", "rel_norm"))
    assert all((out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    # a table from another tool: one error line
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "weight_geometry.csv").write_text("a,b\n1,2\n")
    capsys.readouterr()
    assert pwg.main(["--geometry-dir", str(tmp_path / "bad"), "--outdir", str(tmp_path / "p2"), "--name", "x"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "lacks the columns" in err[0]


def test_outdir_of_the_activation_geometry_tool_is_refused(model_pairs, tmp_path, capsys):
    """Both geometry tools write a geometry_report.yaml: one must not take the other's folder for its
    own and replace that report."""
    import collect_weight_geometry as cwg

    out = tmp_path / "out"
    out.mkdir()
    (out / "activation_geometry.csv").write_text("layer\n0\n")
    (out / "geometry_report.yaml").write_text("tool: collect_activation_geometry.py\n")
    a, b = model_pairs["gpt_neox"]
    assert cwg.main(["--model-a", str(a), "--model-b", str(b), "--outdir", str(out), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --outdir {out} holds files that no earlier run"), err
    assert (out / "geometry_report.yaml").read_text() == "tool: collect_activation_geometry.py\n"
