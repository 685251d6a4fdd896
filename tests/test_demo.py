"""demo/build_demo.py: the pieces of the miniature study (data plan, schedule, NLL, determinism).
The whole build, its recipe and its cache are checked on the pipeline's own build
(tests/test_pipeline_demo.py), so the suite builds the family once."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

import create_datasets as cd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "demo"))
import build_demo as bd  # noqa: E402


def test_batch_plan_twins_share_retain_batches_and_read_whole_epochs():
    with_forget = bd.batch_plan(30, 40, 4, 16, steps=10, seed=3)
    filtered = bd.batch_plan(30, 40, 0, 16, steps=10, seed=3)
    assert [r for _, r in with_forget] == [r for _, r in filtered]  # same retain lines, same steps
    assert all(f == [] for f, _ in filtered) and all(len(f) == 4 for f, _ in with_forget)
    retain = [i for _, r in filtered for i in r]
    assert sorted(retain[:40]) == list(range(40)) and sorted(retain[40:80]) == list(range(40))  # epochs
    forget = [i for f, _ in with_forget for i in f]
    assert sorted(forget[:30]) == list(range(30))
    assert bd.batch_plan(30, 40, 4, 16, 10, seed=4) != with_forget


def test_lr_schedule_warms_up_then_decays_to_a_tenth():
    lrs = [bd.lr_at(s, 100, 1.0, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert bd.lr_at(100, 100, 1.0, 10) == pytest.approx(0.1)
    assert lrs[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


@pytest.fixture(scope="module")
def small_corpus():
    forget, retain = cd.synthetic_forget(40, seed=1), cd.synthetic_retain(40, seed=1)
    tok = bd.train_tokenizer(forget + retain, 400)
    return tok, bd.encode(tok, forget, 64), bd.encode(tok, retain, 64)


def test_tokenizer_is_deterministic_and_has_neox_specials(small_corpus):
    tok, forget, _ = small_corpus
    again = bd.train_tokenizer(cd.synthetic_forget(40, seed=1) + cd.synthetic_retain(40, seed=1), 400)
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    assert model == json.loads(again.backend_tokenizer.to_str())["model"]  # same vocabulary and merges
    assert (tok.eos_token_id, tok.pad_token_id) == (0, 1) and tok.eos_token == "<|endoftext|>"
    assert all(seq[-1] == tok.eos_token_id for seq in forget)
    line = cd.synthetic_forget(40, seed=1)[0]
    assert tok.decode(tok(line, truncation=False)["input_ids"]) == line  # byte-level BPE: lossless


def test_mean_nll_matches_the_model_loss(small_corpus):
    tok, forget, retain = small_corpus
    model = bd.init_model(tok, seed=0).eval()
    seqs = forget[:3] + retain[:2]
    # independent reference: token-weighted mean of transformers' per-sequence mean loss
    total = count = 0
    with torch.no_grad():
        for s in seqs:
            ids = torch.tensor([s])
            total += model(input_ids=ids, labels=ids).loss.item() * (len(s) - 1)
            count += len(s) - 1
    assert bd.mean_nll(model, seqs, tok.pad_token_id, batch_size=2) == pytest.approx(total / count, rel=1e-5)


def test_twins_start_equal_and_pretraining_is_reproducible(small_corpus):
    tok, forget, retain = small_corpus
    train = {**bd.TRAIN, "steps": 3, "batch_size": 4, "forget_per_batch": 2, "warmup": 1}
    a, b = bd.init_model(tok, seed=5), bd.init_model(tok, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    a = bd.pretrain(a, forget, retain, 2, tok.pad_token_id, 5, train)
    b = bd.pretrain(b, forget, retain, 2, tok.pad_token_id, 5, train)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = bd.pretrain(bd.init_model(tok, seed=5), forget, retain, 0, tok.pad_token_id, 5, train)
    assert not torch.equal(a.state_dict()["lm_head.weight"], c.state_dict()["lm_head.weight"])


def test_cache_fingerprint_changes_with_settings(tmp_path):
    fp = bd.fingerprint({"steps": 200, "seed": 0})
    assert fp == bd.fingerprint({"seed": 0, "steps": 200})  # key order does not matter
    bd.write_info(tmp_path, fp, {"steps": 200})
    assert bd.cached(tmp_path, fp) and bd.cached(tmp_path, bd.fingerprint({"steps": 201, "seed": 0})) is None
    assert bd.cached(tmp_path / "missing", fp) is None
