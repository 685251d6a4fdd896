"""layerwise_lens.py against independent references: evaluate_unlearning.py's own NLL and lm-eval
MCQ scoring at the last layer (GPT-NeoX, Llama, GPT-2), a plain transformers computation of final norm
+ unembedding of hidden_states[l] at every other layer, the tuned lens's defining property (KL to
the output on held-out text no larger than the logit lens's, 0 at the last layer), reuse of saved
translators, batch-size/padding invariance, and the bad-input paths."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import evaluate_unlearning as ev
import layerwise_lens as ll
from conftest import TINY_TEXTS, make_tiny_model, save_model

ARCHS = ("gpt_neox", "llama", "gpt2")
FINAL_NORM = {"gpt_neox": lambda m: m.gpt_neox.final_layer_norm, "llama": lambda m: m.model.norm,
              "gpt2": lambda m: m.transformer.ln_f}
MCQ = [{"question": "What do zephyr coils store?", "choices": ["charge", "water", "bread", "rain"], "answer": 0},
       {"question": "What does bread need?", "choices": ["patience", "quartz", "silver"], "answer": 0},
       {"question": "Where did the rain fall?", "choices": ["the old town square", "the river"], "answer": 1},
       {"question": "What hums at a steady frequency?", "choices": ["glimmer reactors", "the dog"], "answer": 0}]
FORGET = TINY_TEXTS[1::2] + ["Zephyr lattices glow when tuned.", "A glimmer reactor hums.", "Glimmer"]
RETAIN = TINY_TEXTS[0::2] + ["The library opens at nine.", "The fox sat by the river all day."]
TRAIN = TINY_TEXTS * 3 + ["The river bank was quiet in the rain.", "Bread and salt on the old town square.",
                          "The committee tuned the quartz lattice.", "A lazy dog slept near the library."]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("lens_data")
    (d / "forget_test.txt").write_text("\n".join(FORGET) + "\n")
    (d / "retain_test.txt").write_text("\n\n".join(RETAIN) + "\n")
    (d / "train.txt").write_text("\n".join(TRAIN) + "\n")
    (d / "forget_mcq.jsonl").write_text("".join(json.dumps(m) + "\n" for m in MCQ))
    (d / "retain_mcq.jsonl").write_text("".join(json.dumps(m) + "\n" for m in MCQ[1:]))
    return d


def argv(model_path, d, outdir, *extra):
    return ["--model", str(model_path), "--forget-test", str(d / "forget_test.txt"),
            "--retain-test", str(d / "retain_test.txt"), "--mcq-forget", str(d / "forget_mcq.jsonl"),
            "--mcq-retain", str(d / "retain_mcq.jsonl"), "--lens-train-text", str(d / "train.txt"),
            "--lens-steps", "40", "--lens-tokens-per-step", "256", "--batch-size", "3", "--max-length", "64",
            "--outdir", str(outdir), *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_tokenizer, data):
    """Per architecture: the tiny model, its folder, and one CLI run with both lenses."""
    root = tmp_path_factory.mktemp("lens_models")
    out = {}
    for i, arch in enumerate(ARCHS):
        model = make_tiny_model(arch, seed=11 + i, vocab_size=len(tiny_tokenizer), layers=3)
        with torch.no_grad():  # weights of std 0.1 instead of 0.02: the layers differ as in a trained model
            for p in model.parameters():
                if p.dim() == 2:
                    p.mul_(5)
        path = save_model(model, root / f"tiny-{arch}", tiny_tokenizer)
        outdir = root / f"out-{arch}"
        assert ll.main(argv(path, data, outdir)) == 0
        out[arch] = {"model": model, "path": path, "outdir": outdir, "csv": pd.read_csv(outdir / "layerwise.csv")}
    return out


def rows(csv, lens):
    return csv[csv.lens == lens].set_index("layer").sort_index()


# ----------------------------------------------------------------------------------------------
# The last layer is the model's output, scored exactly as evaluate_unlearning.py scores it
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_last_layer_equals_evaluate_unlearning(arch, runs, data, tiny_tokenizer, tmp_path):
    r = runs[arch]
    model, tok = r["model"], tiny_tokenizer
    n_layers = model.config.num_hidden_layers
    args = ev.parse_args(["--model", "x", "--batch-size", "3", "--max-length", "64"])
    for lens in ("logit", "tuned"):
        last = rows(r["csv"], lens).loc[n_layers]
        for split, texts in (("forget", FORGET), ("retain", RETAIN)):
            scored = [s["nll"] for s in ev.score_lines(model, tok, texts, args, "cpu", "t") if not math.isnan(s["nll"])]
            assert last[f"{split}_nll"] == pytest.approx(np.mean(scored), abs=1e-5)
        assert last["kl_to_final"] == pytest.approx(0.0, abs=1e-6)
    # MCQ through lm-eval itself (evaluate_unlearning.py's task yaml and call)
    sets = {"forget": data / "forget_mcq.jsonl", "retain": data / "retain_mcq.jsonl"}
    got = ev.McqBenchmarks(sets, [], tmp_path).evaluate(model, tok, args)
    for lens in ("logit", "tuned"):
        last = rows(r["csv"], lens).loc[n_layers]
        assert last["mcq_forget_acc"] == pytest.approx(got["forget"]["acc"], abs=1e-12)
        assert last["mcq_retain_acc"] == pytest.approx(got["retain"]["acc"], abs=1e-12)
    # and every choice's log-likelihood equals lm-eval's own, request by request
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=3, max_length=64)
    reqs = [Instance(request_type="loglikelihood", doc={}, arguments=(f"{m['question']}\nAnswer:", f" {c}"), idx=0)
            for m in MCQ for c in m["choices"]]
    ref = [ll_ for ll_, _ in lm.loglikelihood(reqs, disable_tqdm=True)]
    norm, unembed = ll.lens_parts(model)
    seqs = ll.mcq_sequences(tok, MCQ, 64)
    mine = ll.layer_scores(model, norm, unembed, seqs, [n_layers], {"logit": None}, 3, tok.pad_token_id, "cpu")
    assert mine["logit"][n_layers]["loglik"].tolist() == pytest.approx(ref, abs=1e-5)


def test_max_length_cuts_like_lm_eval(tiny_tokenizer, runs):
    """A context longer than --max-length is cut from the left as lm-eval cuts it."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tok = runs["gpt_neox"]["model"], tiny_tokenizer
    items = [{"question": " ".join(TINY_TEXTS[:3]), "choices": ["the river bank", "salt"], "answer": 0}]
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=2, max_length=12)
    ref = [v for v, _ in lm.loglikelihood([Instance(request_type="loglikelihood", doc={}, idx=0,
                                                    arguments=(f"{items[0]['question']}\nAnswer:", f" {c}"))
                                           for c in items[0]["choices"]], disable_tqdm=True)]
    seqs = ll.mcq_sequences(tok, items, 12)
    assert all(len(s["ids"]) == 12 for s in seqs)
    norm, unembed = ll.lens_parts(model)
    L = model.config.num_hidden_layers
    mine = ll.layer_scores(model, norm, unembed, seqs, [L], {"logit": None}, 2, tok.pad_token_id, "cpu")
    assert mine["logit"][L]["loglik"].tolist() == pytest.approx(ref, abs=1e-5)


# ----------------------------------------------------------------------------------------------
# Every other layer: final norm + unembedding of hidden_states[l], computed plainly here
# ----------------------------------------------------------------------------------------------
def reference_layers(model, arch, ids):
    """float64 log-probs [L+1][T, V] of one unbatched sequence: W_U · norm(hidden_states[l]) for
    l < L; the model's own logits at L (where hidden_states[L] is ALREADY normalised in
    transformers 5, so the norm is not applied again)."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        norm, W = FINAL_NORM[arch](model), model.get_output_embeddings()
        hs = out.hidden_states
        assert torch.allclose(W(hs[-1]), out.logits, atol=1e-5)  # the last entry is normalised already
        logits = [W(norm(h)) for h in hs[:-1]] + [out.logits]
    return [torch.log_softmax(x[0].double(), -1) for x in logits]


@pytest.mark.parametrize("arch", ARCHS)
def test_every_layer_equals_plain_final_norm_and_unembedding(arch, runs, tiny_tokenizer):
    model, tok, csv = runs[arch]["model"], tiny_tokenizer, rows(runs[arch]["csv"], "logit")
    L = model.config.num_hidden_layers
    assert list(csv.index) == list(range(L + 1))
    for split, texts in (("forget", FORGET), ("retain", RETAIN)):
        nll, kl, n_tok = [[] for _ in range(L + 1)], np.zeros(L + 1), 0
        for text in texts:
            ids = tok(text)["input_ids"]
            if len(ids) < 2:
                continue
            lps = reference_layers(model, arch, ids)
            n_tok += len(ids) - 1
            for l in range(L + 1):
                nll[l].append(-np.mean([lps[l][t - 1, ids[t]].item() for t in range(1, len(ids))]))
                p = lps[L][:-1].exp()
                kl[l] += (p * (lps[L][:-1] - lps[l][:-1])).sum().item()
        for l in range(L + 1):
            assert csv.loc[l, f"{split}_nll"] == pytest.approx(np.mean(nll[l]), abs=1e-5), (split, l)
            if split == "retain":
                assert csv.loc[l, "kl_to_final"] == pytest.approx(kl[l] / n_tok, abs=1e-5), l
    for key, items in (("forget", MCQ), ("retain", MCQ[1:])):
        correct = np.zeros(L + 1)
        for item in items:
            scores = np.zeros((L + 1, len(item["choices"])))
            for c, choice in enumerate(item["choices"]):
                ctx = f"{item['question']}\nAnswer:"
                head, whole = tok(ctx)["input_ids"], tok(ctx + " " + choice)["input_ids"]
                lps = reference_layers(model, arch, whole)
                for l in range(L + 1):
                    scores[l, c] = sum(lps[l][t - 1, whole[t]].item() for t in range(len(head), len(whole)))
            correct += scores.argmax(1) == item["answer"]
        assert csv[f"mcq_{key}_acc"].to_numpy() == pytest.approx(correct / len(items), abs=1e-12)
        assert (csv[f"mcq_{key}_chance"] == np.mean([1 / len(i["choices"]) for i in items])).all()


# ----------------------------------------------------------------------------------------------
# Tuned lens
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_tuned_lens_is_closer_to_the_output_on_held_out_text(arch, runs):
    """Belrose et al.'s defining property, on the retain TEST lines (never trained on)."""
    csv = runs[arch]["csv"]
    logit, tuned = rows(csv, "logit"), rows(csv, "tuned")
    L = runs[arch]["model"].config.num_hidden_layers
    assert (tuned.kl_to_final.to_numpy() <= logit.kl_to_final.to_numpy() + 1e-9).all()
    assert (tuned.kl_to_final.to_numpy()[:L] < 0.9 * logit.kl_to_final.to_numpy()[:L]).all()  # it did learn
    assert tuned.loc[L, "kl_to_final"] == pytest.approx(0.0, abs=1e-6)


def test_translators_are_identity_at_the_start_and_saved_per_model(runs):
    from safetensors import safe_open

    lens = ll.new_tuned_lens(3, 32)
    h = torch.randn(5, 32)
    assert all(torch.equal(ll.translate(lens, l, h), h) for l in range(4))
    r = runs["gpt_neox"]
    path = r["outdir"] / "tiny-gpt_neox" / "tuned_lens.safetensors"
    with safe_open(str(path), framework="pt") as f:
        keys, fp = set(f.keys()), json.loads(f.metadata()["fingerprint"])
    assert keys == {f"translators.{l}.{k}" for l in range(3) for k in ("weight", "bias", "scale")}  # none for L
    assert fp["model_sha256"] == ll.model_digest(r["path"]) and fp["steps"] == 40
    info = json.loads(path.with_name("tuned_lens.json").read_text())
    assert info["seconds_per_layer"] == pytest.approx(info["seconds"] / 3)


def test_same_seed_same_translators(runs, tiny_tokenizer):
    model = runs["gpt2"]["model"]
    norm, unembed = ll.lens_parts(model)
    ids = [tiny_tokenizer(t)["input_ids"] for t in TRAIN]
    a, b, c = (ll.train_tuned_lens(model, norm, unembed, ids, 3, 32, 4, 64, 1.0, seed, 3, 1, "cpu")[0]
               for seed in (5, 5, 6))
    ta, tb, tc = ll.lens_tensors(a), ll.lens_tensors(b), ll.lens_tensors(c)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert not all(torch.equal(ta[k], tc[k]) for k in ta)
    assert float(ta["translators.0.scale"]) == pytest.approx(float(tb["translators.0.scale"]))


def test_translators_are_reused_not_retrained(runs, data, monkeypatch, tmp_path):
    r = runs["llama"]
    out = tmp_path / "again"
    out.mkdir()
    import shutil

    shutil.copytree(r["outdir"], out, dirs_exist_ok=True)
    saved = (out / "tiny-llama" / "tuned_lens.safetensors").read_bytes()

    def no_training(*a, **k):
        raise AssertionError("retrained")

    monkeypatch.setattr(ll, "train_tuned_lens", no_training)
    assert ll.main(argv(r["path"], data, out)) == 0
    assert (out / "tiny-llama" / "tuned_lens.safetensors").read_bytes() == saved
    assert (out / "layerwise.csv").read_text() == (r["outdir"] / "layerwise.csv").read_text()
    monkeypatch.undo()
    calls = []
    real = ll.train_tuned_lens
    monkeypatch.setattr(ll, "train_tuned_lens", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert ll.main(argv(r["path"], data, out, "--lens-steps", "5", "--layers", "0,3")) == 0  # settings changed
    assert calls == [1]
    assert sorted(pd.read_csv(out / "layerwise.csv").layer.unique()) == [0, 3]


# ----------------------------------------------------------------------------------------------
# Batching and padding change nothing
# ----------------------------------------------------------------------------------------------
def test_batch_size_and_padding_do_not_change_any_number(runs, tiny_tokenizer):
    model, tok = runs["gpt2"]["model"], tiny_tokenizer
    norm, unembed = ll.lens_parts(model)
    lens = ll.new_tuned_lens(3, 32)
    with torch.no_grad():
        for lin in lens:
            lin.weight.normal_(0, 0.05)
            lin.bias.normal_(0, 0.05)
    seqs = ll.text_sequences(tok, RETAIN + FORGET, 64) + ll.mcq_sequences(tok, MCQ, 64)
    layers = [0, 1, 2, 3]
    res = [ll.layer_scores(model, norm, unembed, seqs, layers, {"logit": None, "tuned": lens}, bs, pad, "cpu",
                           with_kl=True) for bs, pad in ((1, 1), (4, 1), (50, 7))]
    for other in res[1:]:
        for name in ("logit", "tuned"):
            for l in layers:
                assert other[name][l]["loglik"].numpy() == pytest.approx(res[0][name][l]["loglik"].numpy(), abs=1e-5)
                assert other[name][l]["kl"] == pytest.approx(res[0][name][l]["kl"], abs=1e-4)
                assert other[name][l]["n"] == res[0][name][l]["n"]


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------
def bad(args, capsys, outdir=None):
    capsys.readouterr()
    assert ll.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: "), err
    assert not any(line.startswith("Traceback") for line in err)
    if outdir is not None:
        assert not (outdir / "layerwise.csv").exists()
    return err[-1]


def test_bad_inputs_name_the_problem(runs, data, tmp_path, capsys):
    path, out = runs["gpt_neox"]["path"], tmp_path / "out"
    m = tmp_path / "mcq.jsonl"
    m.write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n\n{"question": "q2", "choices": ["a"], "answer": 0}\n')
    assert "mcq.jsonl, line 3: 'choices' must be a list of at least two" in bad(
        argv(path, data, out, "--mcq-forget", str(m)), capsys, out)
    m.write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n{oops\n')
    assert "line 2: not valid JSON" in bad(argv(path, data, out, "--mcq-retain", str(m)), capsys, out)
    assert "--layers 9 is out of range" in bad(argv(path, data, out, "--layers", "0,9"), capsys, out)
    assert "--layers takes" in bad(argv(path, data, out, "--layers", "x"), capsys, out)
    assert "--lens takes" in bad(argv(path, data, out, "--lens", "logit,magic"), capsys, out)
    assert "--lens-lr must be" in bad(argv(path, data, out, "--lens-lr", "nan"), capsys, out)
    assert "is the evaluation file --retain-test" in bad(
        argv(path, data, out, "--lens-train-text", str(data / "retain_test.txt")), capsys, out)
    assert "does not exist" in bad(argv(tmp_path / "nope", data, out), capsys, out)


def test_model_without_final_norm_or_unembedding(tiny_tokenizer):
    model = make_tiny_model("gpt2", vocab_size=len(tiny_tokenizer), layers=2)
    del model.transformer.ln_f
    with pytest.raises(ll.UsageError, match="no final normalisation layer.*GPT2Model.ln_f"):
        ll.lens_parts(model, "tiny")
    model = make_tiny_model("llama", vocab_size=len(tiny_tokenizer), layers=2)
    model.get_output_embeddings = lambda: None
    with pytest.raises(ll.UsageError, match="tiny has no unembedding"):
        ll.lens_parts(model, "tiny")


def test_logits_changed_after_the_unembedding_are_refused(runs, tiny_tokenizer):
    """A model that rescales its logits (as soft-capping models do) cannot be read by a lens."""
    model = runs["gpt_neox"]["model"]
    norm, unembed = ll.lens_parts(model)
    seqs = ll.text_sequences(tiny_tokenizer, RETAIN[:2], 64)
    hook = model.register_forward_hook(lambda m, i, out: setattr(out, "logits", out.logits * 2) or out)
    try:
        with pytest.raises(ll.UsageError, match="changes its logits after the unembedding"):
            ll.layer_scores(model, norm, unembed, seqs, [0], {"logit": None}, 2, 1, "cpu")
    finally:
        hook.remove()


# ----------------------------------------------------------------------------------------------
# Plot and wrappers
# ----------------------------------------------------------------------------------------------
def test_plot_keeps_model_order_and_colours(runs, tmp_path, capsys):
    import plot_layerwise_lens as pl

    csv = pd.concat([runs[a]["csv"] for a in ARCHS])
    csv.to_csv(tmp_path / "layerwise.csv", index=False)
    assert pl.main(["--csv", str(tmp_path / "layerwise.csv"), "--outdir", str(tmp_path / "plots")]) == 0
    png = tmp_path / "plots" / "layerwise_lens.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    styles = pl.model_styles(list(dict.fromkeys(csv.model)))
    assert {m: s["color"] for m, s in styles.items()} == {
        "tiny-gpt_neox": "#000000", "tiny-llama": "#0072B2", "tiny-gpt2": "#D55E00"}
    (tmp_path / "bad.csv").write_text("model,lens\nx,logit\n")
    assert pl.main(["--csv", str(tmp_path / "bad.csv"), "--outdir", str(tmp_path / "p2")]) == 1
    assert "lacks the column(s) layer" in capsys.readouterr().err


def test_wrappers_pass_models_in_study_order_and_only_set_flags(tmp_path):
    import os
    import subprocess

    from conftest import ROOT

    fake = tmp_path / "fake"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME")}
    env = keep | {"UV_RUN": str(fake), "MODEL_A": "a/ref", "COMPARE_WITH": "b/filt c/cblat", "OUTPUTS_DIR": "o"}
    out = subprocess.run([str(ROOT / "run_lens.sh")], env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[1:] == ["layerwise_lens.py", "--model", "a/ref", "--model", "b/filt", "--model", "c/cblat",
                                    "--outdir", "o/lens"]
    out = subprocess.run([str(ROOT / "run_lens.sh")], env=env | {"LENS_STEPS": "60", "DATA_DIR": "d"},
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[out.index("--lens-steps") + 1] == "60" and out[out.index("--lens-train-text") + 1] == "d/retain.txt"
    out = subprocess.run([str(ROOT / "plot_lens.sh")], env=env | {"PLOTS_DIR": "p"}, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[1:] == ["plot_layerwise_lens.py", "--csv", "o/lens/layerwise.csv", "--outdir", "p/lens"]
