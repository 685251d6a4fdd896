"""unlearn.py's pure pieces against hand-written formulas: the ten losses, PGD, data split, schedule."""
from __future__ import annotations

import math

import pytest
import torch

import unlearn as ul


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_sequence_logprobs_and_mean_nll_by_hand():
    # vocab 3, two samples; sample 2 has one padding position at the end
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [1.0, 1.0, 1.0]],
                           [[0.0, 3.0, 0.0], [1.0, -1.0, 2.0], [9.0, 9.0, 9.0]]])
    ids = torch.tensor([[0, 1, 2], [2, 2, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])

    def lp(row, tok):
        return row[tok] - math.log(sum(math.exp(v) for v in row))
    L = logits.tolist()
    s1 = lp(L[0][0], 1) + lp(L[0][1], 2)
    s2 = lp(L[1][0], 2)  # the second target (position 2) is padding
    sum_lp, n = ul.sequence_logprobs(logits, ids, mask)
    assert torch.allclose(sum_lp, torch.tensor([s1, s2]), atol=1e-6)
    assert n.tolist() == [2.0, 1.0]
    assert ul.mean_nll(sum_lp, n).item() == pytest.approx((-s1 / 2 + -s2 / 1) / 2, abs=1e-6)


def test_loss_based_methods_equal_their_formulas():
    nf, nr = torch.tensor(2.5), torch.tensor(0.75)
    assert ul.ga_simple_loss(nf).item() == pytest.approx(-2.5)
    assert ul.ga_loss(nf, nr).item() == pytest.approx(-2.5 + 0.75)
    assert ul.grad_diff_loss(nf, nr, 0.3).item() == pytest.approx(0.75 - 0.3 * 2.5)

    lp_r, ref_r = torch.tensor([-10.0, -20.0]), torch.tensor([-11.0, -19.0])
    lp_f, ref_f = torch.tensor([-5.0, -8.0]), torch.tensor([-6.0, -7.5])
    beta = 0.7
    want = -sum(logsig(beta * ((a - b) - (c - d))) for a, b, c, d in
                zip([-10, -20], [-11, -19], [-5, -8], [-6, -7.5])) / 2
    assert ul.dpo_loss(lp_r, ref_r, lp_f, ref_f, beta).item() == pytest.approx(want, rel=1e-6)

    want = -(2 / beta) * sum(logsig(-beta * (c - d)) for c, d in zip([-5, -8], [-6, -7.5])) / 2 + 0.75
    assert ul.npo_loss(lp_f, ref_f, nr, beta).item() == pytest.approx(want, rel=1e-6)

    n_f = torch.tensor([4.0, 2.0])
    want = -(2 / beta) * sum(logsig(-beta * c / n) for c, n in zip([-5, -8], [4, 2])) / 2 + 0.75
    assert ul.simnpo_loss(lp_f, n_f, nr, beta).item() == pytest.approx(want, rel=1e-6)

    assert ul.lat_loss(nf, nr).item() == pytest.approx(-2.5 + 0.75)


def _fixed_reprs():
    g = torch.Generator().manual_seed(3)
    B, T, d = 2, 3, 4
    hf = [torch.randn(B, T, d, generator=g) for _ in range(2)]
    hf0 = [torch.randn(B, T, d, generator=g) for _ in range(2)]
    hr = [torch.randn(B, T, d, generator=g) for _ in range(2)]
    hr0 = [torch.randn(B, T, d, generator=g) for _ in range(2)]
    mf = torch.tensor([[1, 1, 1], [1, 0, 0]])
    mr = torch.tensor([[1, 1, 0], [1, 1, 1]])
    ctrl = torch.tensor([1.0, 2.0, -1.0, 0.5])
    return hf, hf0, hr, hr0, mf, mr, ctrl


def _tokens(mask):
    return [(b, t) for b in range(mask.shape[0]) for t in range(mask.shape[1]) if mask[b, t]]


def _cos(u, v):
    return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


def test_rmu_loss_by_hand():
    hf, _, hr, hr0, mf, mr, ctrl = _fixed_reprs()
    alpha = 3.0
    total = 0.0
    for l in range(2):
        f = [sum((hf[l][b, t, i].item() - ctrl[i].item()) ** 2 for i in range(4)) / 4 for b, t in _tokens(mf)]
        r = [sum((hr[l][b, t, i].item() - hr0[l][b, t, i].item()) ** 2 for i in range(4)) / 4 for b, t in _tokens(mr)]
        total += sum(f) / len(f) + alpha * sum(r) / len(r)
    assert ul.rmu_loss(hf, hr, hr0, mf, mr, ctrl, alpha).item() == pytest.approx(total / 2, rel=1e-5)


def test_cb_cos_loss_by_hand():
    hf, _, hr, hr0, mf, mr, ctrl = _fixed_reprs()
    alpha = 2.0
    total = 0.0
    for l in range(2):
        f = [-_cos(hf[l][b, t].tolist(), ctrl.tolist()) for b, t in _tokens(mf)]
        r = [1 - _cos(hr[l][b, t].tolist(), hr0[l][b, t].tolist()) for b, t in _tokens(mr)]
        total += sum(f) / len(f) + alpha * sum(r) / len(r)
    assert ul.cb_cos_loss(hf, hr, hr0, mf, mr, ctrl, alpha).item() == pytest.approx(total / 2, rel=1e-5)


def test_cb_rr_loss_by_hand():
    hf, hf0, hr, hr0, mf, mr, _ = _fixed_reprs()
    alpha = 0.5
    total = 0.0
    for l in range(2):
        f = [max(0.0, _cos(hf[l][b, t].tolist(), hf0[l][b, t].tolist())) for b, t in _tokens(mf)]
        r = [math.dist(hr[l][b, t].tolist(), hr0[l][b, t].tolist()) for b, t in _tokens(mr)]
        total += sum(f) / len(f) + alpha * sum(r) / len(r)
    assert ul.cb_rr_loss(hf, hf0, hr, hr0, mf, mr, alpha).item() == pytest.approx(total / 2, rel=1e-5)


def test_control_vector_is_seeded_unit_direction_times_c():
    v = ul.random_control_vector(16, 20.0, seed=5)
    assert v.norm().item() == pytest.approx(20.0, rel=1e-6)
    assert (v >= 0).all()  # u ~ U[0,1)^d
    assert torch.equal(v, ul.random_control_vector(16, 20.0, seed=5))
    assert not torch.equal(v, ul.random_control_vector(16, 20.0, seed=6))


def test_pgd_update_is_projected_sign_descent_and_masks_padding():
    g = torch.Generator().manual_seed(0)
    eps, step = 0.1, 0.04
    delta = torch.zeros(2, 3, 5)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    for _ in range(10):
        grad = torch.randn(2, 3, 5, generator=g)
        want = torch.clamp(delta - step * torch.sign(grad), -eps, eps) * mask[..., None]
        delta = ul.pgd_update(delta, grad, step, eps, mask)
        assert torch.equal(delta, want)
        assert delta.abs().max().item() <= eps + 1e-7
    assert (delta[0, 2] == 0).all()
    assert delta.abs().max().item() == pytest.approx(eps)  # the budget is reached, not exceeded


def test_split_eval_is_seeded_disjoint_and_complete():
    items = [f"s{i}" for i in range(50)]
    tr, ev = ul.split_eval(items, 0.1, seed=1)
    assert len(ev) == 5 and len(tr) == 45
    assert not set(tr) & set(ev) and set(tr) | set(ev) == set(items)
    assert ul.split_eval(items, 0.1, seed=1) == (tr, ev)
    assert ul.split_eval(items, 0.1, seed=2)[1] != ev
    assert ul.split_eval(items, 0.0, seed=1) == (items, [])
    assert ul.split_eval(["a"], 0.1, seed=1) == ([], ["a"])  # at least one held out → empty train


def test_schedule_covers_forget_each_epoch_and_shards_like_one_process():
    s = ul.make_schedule(n_forget=10, n_retain=7, batch_size=2, world_size=2, grad_accum=2, epochs=2, seed=0)
    # ceil(10/4) = 3 micro-batches, rounded up to 4 for whole accumulation groups → 2 steps/epoch
    assert len(s) == 4 and all(len(step) == 2 for step in s)
    for epoch in (s[:2], s[2:]):
        f = [i for step in epoch for fi, _ in step for i in fi]
        assert len(f) == 16 and set(f) == set(range(10))
    r = [i for step in s for _, ri in step for i in ri]
    assert set(r) == set(range(7))
    # one process with batch 4 sees the same global micro-batches as two with batch 2
    one = ul.make_schedule(10, 7, batch_size=4, world_size=1, grad_accum=2, epochs=2, seed=0)
    assert one == s


def test_parse_layer_ids_and_normalised_overlap():
    assert ul.parse_layer_ids("5,6, 7") == [5, 6, 7]
    for bad in ("5,x", "", "1,,2", "-1", "3,3"):
        with pytest.raises(ul.UsageError):
            ul.parse_layer_ids(bad)
    assert ul.count_overlap(["The  Cat sat.", "dog"], ["the cat SAT.", "bird"]) == 1


def test_method_table_rows_say_what_each_method_needs():
    """The table against the method descriptions written out by hand (README / SPEC / the papers)."""
    t = ul.METHOD_TABLE
    assert ul.METHODS == ("ga_simple", "ga", "grad_diff", "dpo", "npo", "simnpo", "rmu", "cb", "lat", "cb_lat",
                          "tar", "wt_dist", "wt_dist_reg")
    assert ul.LOSS_METHODS == ul.METHODS[:6] and ul.REPR_METHODS == ul.METHODS[6:10]
    assert ul.WEIGHT_METHODS == ul.METHODS[10:]
    assert {m: t[m].ref for m in ul.METHODS if t[m].ref} == {"dpo": ("forget", "retain"), "npo": ("forget",)}
    assert [m for m in ul.METHODS if t[m].truncated] == ["rmu", "cb", "cb_lat"]
    assert all(t[m].frozen == t[m].truncated for m in ul.METHODS)  # h_orig only ever from the truncated forward
    assert [m for m in ul.METHODS if t[m].embedding_fallback] == ["rmu", "cb", "lat", "cb_lat"]  # issue 13
    assert [t[m].default_trainable() for m in ("ga", "npo", "rmu", "lat")] == ["all", "all", "layers", "layers"]
    assert t["rmu"].find_unused_parameters("all") and not t["rmu"].find_unused_parameters("layers")
    assert not t["lat"].find_unused_parameters("all") and not t["ga"].find_unused_parameters("all")
    settings = {m: t[m].settings for m in ul.METHODS}
    assert settings == {
        "ga_simple": (), "ga": (), "grad_diff": ("forget_weight",), "dpo": ("beta",), "npo": ("beta",),
        "simnpo": ("beta",), "rmu": ("layer_id", "alpha", "steering_coeff"),
        "cb": ("layer_id", "alpha", "steering_coeff", "cb_loss"),
        "lat": ("layer_id", "lat_eps", "lat_steps", "lat_step_size"),
        "cb_lat": ("layer_id", "alpha", "steering_coeff", "cb_loss", "lat_eps", "lat_steps", "lat_step_size"),
        "tar": ("tar_alpha", "tar_lr", "tar_steps"), "wt_dist": ("wt_noise_std",),
        "wt_dist_reg": ("wt_reg_lambda", "wt_reg_bound")}
    assert [m for m in ul.METHODS if t[m].full_params] == ["wt_dist", "wt_dist_reg"]  # with LoRA: an error
    assert [m for m in ul.METHODS if t[m].reads_hidden] == ["rmu", "cb", "cb_lat"]
    assert [m for m in ul.METHODS if t[m].adversary] == ["lat", "cb_lat"]
    dests = {a.dest for a in ul.build_parser()._actions}
    assert all(s in dests for row in settings.values() for s in row)  # every recorded setting is a flag
