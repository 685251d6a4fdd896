"""unlearn.py's weight-space methods (tar, wt_dist, wt_dist_reg), the activation-norm anchor
(--norm-reg-lambda), Muon (--optimizer muon) and --precision.

References written out here: each loss from its formula (float64), the norm anchor's gradient from
its derivative by hand, task negation from the weights of the same fine-tuning run with α = −1
(θ₀ + τ = θ_ft), the noise's std from the weights, Muon's first update from its definition
(orthogonalised gradient: singular values near 1 × the scaled lr), and the precision modes against an
fp32 run and against plain bf16 AdamW run here."""
from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import make_tiny_model
from test_unlearn_method_rows import args_for, run_main, tiny_run  # noqa: F401

import unlearn as ul


def report_of(out):
    return yaml.safe_load((out / "run_report.yaml").read_text())


def metrics_of(out):
    return json.loads((out / "metrics.json").read_text())


# --------------------------------------------------------------------------------------------- losses
def test_wt_dist_reg_loss_is_its_formula():
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(4, 5, generator=g) * 0.02, torch.randn(7, generator=g)]
    anchors = [p + torch.randn(p.shape, generator=g) * 0.01 for p in params]
    nll, lam, b = torch.tensor(2.5), 0.3, 0.02
    sq = sum(float(x) ** 2 for p, p0 in zip(params, anchors) for x in (p.double() - p0.double()).flatten())
    rms = math.sqrt(sq / 27)
    rms_got = ul.weight_rms(params, anchors)
    assert rms_got.item() == pytest.approx(rms, rel=1e-6)
    assert ul.wt_dist_reg_loss(nll, rms_got, lam, b).item() == pytest.approx(2.5 - lam * b * math.tanh(rms / b), rel=1e-6)
    assert ul.wt_dist_reg_loss(nll, rms_got, lam, 0.0).item() == pytest.approx(2.5 - lam * rms, rel=1e-6)


def test_wt_dist_reg_levels_off_far_from_the_start():
    p0 = torch.zeros(100)
    direction = torch.linspace(-1, 1, 100)
    lam, b = 1.0, 0.02
    values, grads = [], []
    for scale in (0.01, 0.05, 1.0):  # RMS ≈ 0.006, 0.03, 0.6
        p = (direction * scale).requires_grad_()
        loss = ul.wt_dist_reg_loss(torch.tensor(0.0), ul.weight_rms([p], [p0]), lam, b)
        loss.backward()
        values.append(loss.item())
        grads.append(p.grad.norm().item())
    assert values[0] > values[1] > values[2] >= -lam * b  # decreasing, bounded below by −λ·b
    assert values[2] == pytest.approx(-lam * b, rel=1e-6) and -lam * b < values[1] < -0.8 * lam * b
    assert grads[2] < 1e-6 * grads[0]  # the push has stopped
    p = (direction * 100.0)
    assert ul.wt_dist_reg_loss(torch.tensor(0.0), ul.weight_rms([p], [p0]), lam, 0.0).item() < -50  # unbounded


def test_norm_reg_loss_and_its_gradient_by_hand():
    g = torch.Generator().manual_seed(1)
    h = [torch.randn(2, 3, 4, generator=g, dtype=torch.float64).requires_grad_() for _ in range(2)]
    ref = torch.rand(2, 2, 3, generator=g, dtype=torch.float64) * 3
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    tokens = [(b, t) for b in range(2) for t in range(3) if mask[b, t]]
    want = sum(sum((h[l][b, t].norm().item() - ref[l, b, t].item()) ** 2 for b, t in tokens) / len(tokens)
               for l in range(2)) / 2
    loss = ul.norm_reg_loss(tuple(h), ref, mask)
    assert loss.item() == pytest.approx(want, rel=1e-6)
    loss.backward()
    for l in range(2):  # d/dh (‖h‖ − n)² / (L·count) = 2(‖h‖ − n)·h/‖h‖ / (L·count); padding gets none
        for b in range(2):
            for t in range(3):
                x = h[l][b, t].detach()
                expect = 2 * (x.norm() - ref[l, b, t]) * x / x.norm() / (2 * len(tokens)) if mask[b, t] else 0 * x
                assert torch.allclose(h[l].grad[b, t], expect, atol=1e-9)


def test_weight_noise_has_the_asked_std_and_is_seeded():
    def noisy(seed):
        ps = [("a", torch.zeros(300, 200)), ("b", torch.zeros(5000))]
        ul.add_weight_noise(ps, 0.02, seed)
        return torch.cat([p.flatten() for _, p in ps])
    x = noisy(3).double()
    assert x.std().item() == pytest.approx(0.02, rel=0.02) and abs(x.mean().item()) < 0.02 * 0.02
    assert torch.equal(noisy(3), noisy(3)) and not torch.equal(noisy(3), noisy(4))


# --------------------------------------------------------------------------------------------- tar
def test_tar_alpha_0_is_the_original_and_alpha_1_negates_the_task_vector(tiny_run, tmp_path):  # noqa: F811
    base = load_file(tiny_run / "base" / "model.safetensors")
    out = {}
    for alpha in ("0", "1", "-1"):  # α = −1: θ₀ + τ, the fine-tuned weights θ_ft themselves
        out[alpha] = tmp_path / f"a{alpha}"
        argv = args_for(tiny_run, out[alpha], "tar") + ["--tar-alpha", alpha, "--tar-steps", "3", "--tar-lr", "1e-3"]
        assert run_main(argv) == 0
    w0, w1, ft = (load_file(out[k] / "model.safetensors") for k in ("0", "1", "-1"))
    assert all(torch.equal(w0[k], base[k]) for k in base)  # exactly the original
    moved = 0
    for k in base:
        want = base[k].double() - (ft[k].double() - base[k].double())  # θ − (θ_ft − θ)
        assert torch.allclose(w1[k].double(), want, atol=1e-6), k
        moved += not torch.equal(ft[k], base[k])
    assert moved > len(base) // 2
    m, rep = metrics_of(out["1"]), report_of(out["1"])
    assert m["steps"] == 3 and rep["Training"]["tar_steps"] == 3 and rep["Training"]["learning_rate"] == 1e-3
    assert any(w.startswith("--lr 0.001 is ignored by tar") for w in m["warnings"])  # args_for passes --lr
    dist = math.sqrt(sum(float(((w1[k].double() - base[k].double()) ** 2).sum()) for k in base))
    assert m["dist_from_start"] == pytest.approx(dist, rel=1e-4)
    assert rep["Results"]["dist_from_start"] == m["dist_from_start"]


def test_tar_with_lora_negates_the_merged_adapter(tiny_run, tmp_path):  # noqa: F811
    base = load_file(tiny_run / "base" / "model.safetensors")
    outs = {}
    for alpha in ("1", "-1"):
        outs[alpha] = tmp_path / f"l{alpha}"
        argv = args_for(tiny_run, outs[alpha], "tar") + ["--tar-alpha", alpha, "--tar-steps", "3", "--tar-lr", "1e-2",
                                                          "--lora-r", "4"]
        assert run_main(argv) == 0
    neg, ft = load_file(outs["1"] / "model.safetensors"), load_file(outs["-1"] / "model.safetensors")
    changed = [k for k in base if not torch.equal(ft[k], base[k])]
    assert changed and all("query_key_value" in k for k in changed)  # only the adapted matrices
    for k in base:  # W − ΔW = 2W − (W + ΔW)
        assert torch.allclose(neg[k].double(), 2 * base[k].double() - ft[k].double(), atol=1e-6), k
    dw = math.sqrt(sum(float(((ft[k].double() - base[k].double()) ** 2).sum()) for k in base))
    assert metrics_of(outs["1"])["dist_from_start"] == pytest.approx(dw, rel=1e-3)


# --------------------------------------------------------------------------------------------- wt_dist
def test_wt_dist_adds_the_noise_then_trains_on_retain_in_compensated_bf16(tiny_run, tmp_path):  # noqa: F811
    out = tmp_path / "wd"
    argv = args_for(tiny_run, out, "wt_dist") + ["--wt-noise-std", "0.05", "--lr", "1e-7", "--precision", "bf16"]
    assert run_main(argv) == 0
    m, rep = metrics_of(out), report_of(out)
    n = sum(v.numel() for v in load_file(tiny_run / "base" / "model.safetensors").values())
    assert m["eval_curve"][0]["dist_from_start"] == 0.0
    assert m["dist_from_start"] == pytest.approx(0.05 * math.sqrt(n), rel=0.03)  # ‖ε‖ ≈ σ·√N; lr 1e-7 adds ~0
    assert rep["Training"]["precision"] == {"mode": "bf16", "compute_dtype": "bf16",
                                            "bytes_per_trainable_parameter": 10}
    assert "Kahan" in rep["Training"]["optimizer"]


def test_weight_methods_refuse_lora_with_one_line(tiny_run, tmp_path, capsys):  # noqa: F811
    for method in ("wt_dist", "wt_dist_reg"):
        assert run_main(args_for(tiny_run, tmp_path / method, method) + ["--lora-r", "4"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and "--lora-r" in err[0]
        assert not (tmp_path / method).exists()


def test_wt_dist_reg_records_distance_and_norm_reg_starts_at_zero(tiny_run, tmp_path, monkeypatch):  # noqa: F811
    seen = []
    real = ul.Trainer.norm_reg

    def spy(self, b):
        value = real(self, b)
        seen.append(value.item())
        return value
    monkeypatch.setattr(ul.Trainer, "norm_reg", spy)
    out = tmp_path / "wr"
    argv = args_for(tiny_run, out, "wt_dist_reg") + ["--norm-reg-lambda", "1", "--layer-id", "0,1",
                                                     "--eval-interval", "2", "--wt-reg-lambda", "10"]
    assert run_main(argv) == 0
    assert seen[0] == pytest.approx(0.0, abs=1e-8) and max(seen) > 0
    m, rep = metrics_of(out), report_of(out)
    dists = [c["dist_from_start"] for c in m["eval_curve"]]
    assert dists[0] == 0.0 and dists[-1] > 0 and len(dists) >= 3
    assert rep["Results"]["dist_from_start_curve"][-1]["dist_from_start"] == dists[-1] == m["dist_from_start"]
    assert rep["Training"]["wt_reg_lambda"] == 10 and rep["Training"]["norm_reg_lambda"] == 1
    assert not [w for w in m["warnings"] if "ignored" in w]  # --layer-id is read by the anchor


# --------------------------------------------------------------------------------------------- Muon
def test_muon_splits_like_the_reference_and_orthogonalises_the_update():
    model = make_tiny_model("gpt_neox", hidden=32, layers=2, heads=4, vocab_size=64).train()
    params = list(model.parameters())
    muon, rest = ul.muon_split(model, params)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in muon} == {n for n, p in model.named_parameters()
                                           if p.ndim == 2 and n not in ("gpt_neox.embed_in.weight", "lm_head.weight")}
    assert {"gpt_neox.embed_in.weight", "lm_head.weight", "gpt_neox.layers.0.input_layernorm.weight",
            "gpt_neox.layers.0.attention.dense.bias"} <= {names[id(p)] for p in rest}
    opts = ul.make_optimizers(model, params, 1e-3, "muon", "fp32")
    assert [type(o).__name__ for o in opts] == ["Muon", "AdamW"]
    w = model.gpt_neox.layers[0].mlp.dense_h_to_4h.weight  # 128 × 32
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    g = w.grad.double().clone()
    for o in opts:
        o.step()
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())
    # Muon's update: −lr·0.2·√max(A, B)·NS(g), NS(g) ≈ U·S'·Vᵀ with S' ≈ 1 (g = U·S·Vᵀ, float64 SVD here)
    upd = (before["gpt_neox.layers.0.mlp.dense_h_to_4h.weight"] - w.detach()).double() / (1e-3 * 0.2 * math.sqrt(128))
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    r = int((s > s[0] * 1e-6).sum())  # a 16-token batch: g has rank < 32
    ortho = u[:, :r] @ vh[:r]

    def cos(x, y):
        return float((x * y).sum() / x.norm() / y.norm())
    assert cos(upd, ortho) > 0.9 and cos(upd, ortho) > cos(g, ortho) + 0.05
    top = torch.linalg.svdvals(upd)[:r]
    assert top.max() < 1.5 and top[:r // 2].min() > 0.5  # pushed towards 1 (5 steps leave the smallest short)


def test_muon_run_updates_only_the_trainable_and_names_its_folder(tiny_run, tmp_path):  # noqa: F811
    out = tmp_path / "mu"
    argv = args_for(tiny_run, out, "ga") + ["--optimizer", "muon", "--trainable", r"layers\.1\.",
                                            "--precision", "mixed"]
    assert run_main(argv) == 0
    base, new = load_file(tiny_run / "base" / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(new[k].dtype == torch.float32 for k in new)  # saved in the input's dtype (--save-dtype input)
    changed = {k for k in base if not torch.equal(base[k], new[k])}
    assert changed and all(k.startswith("gpt_neox.layers.1.") for k in changed)
    rep = report_of(out)
    assert rep["Training"]["optimizer"].startswith("Muon") and rep["Training"]["precision"]["mode"] == "mixed"
    assert rep["Training"]["precision"]["bytes_per_trainable_parameter"] == 18
    assert ul.default_outdir("org/m", "ga", "o", None, "muon").parent.name == "org_m__ga__muon"
    assert ul.default_outdir("org/m", "ga", "o", 7).parent.name == "org_m__ga__seed7"


# --------------------------------------------------------------------------------------------- precision
def test_precision_modes_and_bytes_per_parameter():
    assert ul.PRECISION_BYTES == {"fp32": 4 + 4 + 8, "mixed": 4 + 4 + 8 + 2, "bf16": 2 + 2 + 2 + 2 + 2}
    assert ul.resolve_precision("auto", "fp32", 10, 0, None) == ("fp32", None)
    assert ul.resolve_precision("auto", "bf16", 10, 0, None) == ("mixed", None)
    assert ul.resolve_precision("auto", "fp16", 10, 0, 2**30) == ("mixed", None)
    n, gpu = int(6.9e9), 80 * 10**9  # a 6.9B model on one 80 GB GPU: 124 GB mixed, 69 GB compensated bf16
    mode, note = ul.resolve_precision("auto", "bf16", n, 0, gpu)
    assert mode == "bf16" and "does not fit" in note
    assert ul.precision_bytes("bf16", n) == 69_000_000_000 < 0.9 * gpu
    for bad in (("fp32", "bf16"), ("mixed", "fp32"), ("bf16", "fp16")):
        with pytest.raises(ul.UsageError):
            ul.resolve_precision(*bad, 10, 0, None)


def _displacement(mode: str, lr=1e-5, steps=30) -> torch.Tensor:
    """θ_30 − θ₀ (float64, flattened) of a small model stored in bf16, trained on one batch."""
    model = make_tiny_model("gpt_neox", hidden=64, layers=2, heads=4, vocab_size=96).to(torch.bfloat16)
    model = model.to(torch.float32 if mode in ("fp32", "mixed") else torch.bfloat16).train()
    theta0 = [p.detach().double().clone() for p in model.parameters()]
    params = list(model.parameters())
    if mode == "plain":  # unprotected bf16 AdamW: weights and moments in bf16, plain rounding
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    else:
        [opt] = ul.make_optimizers(model, params, lr, "adamw", mode)
    ids = torch.randint(0, 96, (4, 16), generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "mixed"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return torch.cat([(p.detach().double() - t0).flatten() for p, t0 in zip(model.parameters(), theta0)])


def test_mixed_and_compensated_bf16_keep_the_small_updates_plain_bf16_drops():
    ref = _displacement("fp32")
    norm = ref.norm()
    share = {m: float(_displacement(m) @ ref / norm / norm) for m in ("mixed", "bf16", "plain")}
    assert 0.9 <= share["mixed"] <= 1.1, share
    assert 0.9 <= share["bf16"] <= 1.1, share
    assert share["plain"] < 0.5, share


# --------------------------------------------------------------------------------------------- wrapper
NEW_VARS = {"TAR_ALPHA": "--tar-alpha", "TAR_LR": "--tar-lr", "TAR_STEPS": "--tar-steps",
            "WT_NOISE_STD": "--wt-noise-std", "WT_REG_LAMBDA": "--wt-reg-lambda", "WT_REG_BOUND": "--wt-reg-bound",
            "NORM_REG_LAMBDA": "--norm-reg-lambda", "OPTIMIZER": "--optimizer", "PRECISION": "--precision"}


def test_run_unlearn_sh_accepts_the_new_methods_and_variables():
    import os
    import subprocess
    from conftest import ROOT
    env = {k: v for k, v in os.environ.items() if k not in NEW_VARS} | {"UV_RUN": "echo"}
    plain = subprocess.run(["bash", str(ROOT / "run_unlearn.sh"), "tar"], env=env, capture_output=True, text=True)
    assert plain.returncode == 0 and "--method tar" in plain.stdout
    assert not any(flag in plain.stdout for flag in NEW_VARS.values())
    values = {"TAR_ALPHA": "0.5", "TAR_LR": "1e-4", "TAR_STEPS": "7", "WT_NOISE_STD": "0.01", "WT_REG_LAMBDA": "2",
              "WT_REG_BOUND": "0", "NORM_REG_LAMBDA": "0.3", "OPTIMIZER": "muon", "PRECISION": "mixed"}
    out = subprocess.run(["bash", str(ROOT / "run_unlearn.sh"), "wt_dist_reg"], env=env | values,
                         capture_output=True, text=True)
    assert out.returncode == 0
    words = out.stdout.split()
    assert {NEW_VARS[k]: v for k, v in values.items()} == {f: words[words.index(f) + 1] for f in NEW_VARS.values()}
    known = {s for act in ul.build_parser()._actions for s in act.option_strings}
    assert set(NEW_VARS.values()) <= known
