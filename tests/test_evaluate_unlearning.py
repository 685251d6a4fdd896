"""evaluate_unlearning.py: every statistic against an independent computation (plain transformers
forward, scikit-learn, scipy, hand formulas), the lm-eval multiple-choice path against a hand
log-likelihood argmax, and the bad-input paths (one `error:` line, exit 1, nothing written)."""
from __future__ import annotations

import json
import shutil
import math
import zlib

import numpy as np
import pytest
import torch

import evaluate_unlearning as ev
from conftest import TINY_TEXTS, make_tiny_model, save_model


# ----------------------------------------------------------------------------------------------
# Pure formulas
# ----------------------------------------------------------------------------------------------
def test_token_stats_match_float64_hand_formulas():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 11, generator=g) * 3
    targets = torch.randint(0, 11, (7,), generator=g)
    logp, mu, sigma = ev.token_stats(logits, targets)
    for t in range(7):
        x = logits[t].double().numpy()
        lp = x - math.log(np.exp(x - x.max()).sum()) - x.max()
        p = np.exp(lp)
        m = (p * lp).sum()
        assert logp[t].item() == pytest.approx(lp[targets[t]], abs=1e-5)
        assert mu[t].item() == pytest.approx(m, abs=1e-5)
        assert sigma[t].item() == pytest.approx(math.sqrt(max((p * lp ** 2).sum() - m ** 2, 1e-6)), abs=1e-5)
    # a one-hot distribution has zero variance: clamped at 1e-6, sigma = 1e-3
    _, _, s = ev.token_stats(torch.tensor([[0.0, -1e4, -1e4]]), torch.tensor([0]))
    assert s.item() == pytest.approx(1e-3, rel=1e-3)


def test_sample_scores_hand_computation():
    logp = [-0.5, -3.0, -1.0, -2.0, -0.1]
    mu = [-1.0, -2.0, -1.5, -0.5, -0.2]
    sigma = [0.5, 1.0, 2.0, 0.25, 1.0]
    text = "Veridite glows amber when it is charged."
    s = ev.sample_scores(logp, mu, sigma, text, k=0.4)
    assert s["nll"] == pytest.approx(6.6 / 5)
    assert s["mink"] == pytest.approx((-3.0 - 2.0) / 2)  # floor(0.4 * 5) = 2 lowest
    z = [(a - b) / c for a, b, c in zip(logp, mu, sigma)]  # [1, -1, 0.25, -6, 0.1]
    assert s["minkpp"] == pytest.approx((-6 - 1) / 2)
    assert s["zlib"] == pytest.approx(-6.6 / len(zlib.compress(text.encode())))
    assert ev.mink_score(logp, 0.1) == -3.0  # max(1, floor(0.5)) = 1 token
    assert ev.mink_score(logp, 1.0) == pytest.approx(-6.6 / 5)
    assert min(z) == -6
    assert all(math.isnan(v) for v in ev.sample_scores([], [], [], "x", 0.4).values())


def test_mia_auc_is_the_mann_whitney_count():
    rng = np.random.default_rng(0)
    members, non = rng.normal(0.3, 1, 40).tolist(), rng.normal(0, 1, 30).tolist()
    members[:3] = non[:3]  # ties count one half
    assert ev.mia_auc(members, non) == pytest.approx(mann_whitney_auc(members, non), abs=1e-12)
    assert ev.mia_auc([3.0, 2.0], [1.0, 2.0]) == pytest.approx((1 + 1 + 1 + 0.5) / 4)      # worked by hand
    rows = [{"nll": 1.0, "zlib": -0.1, "mink": -2.0, "minkpp": -0.5}]
    assert ev.mia_scores(rows) == {"loss": [-1.0], "zlib": [-0.1], "mink": [-2.0], "minkpp": [-0.5]}


def test_bootstrap_ci_agrees_with_a_numpy_percentile_bootstrap():
    x = np.random.default_rng(1).gamma(2.0, 1.0, 80)
    lo, hi = ev.bootstrap_ci(x, seed=42)
    assert ev.bootstrap_ci(x, seed=42) == [lo, hi]  # seeded: identical
    assert ev.bootstrap_ci(x, seed=43) != [lo, hi]
    means = x[np.random.default_rng(7).integers(0, len(x), (20000, len(x)))].mean(1)
    ref_lo, ref_hi = np.percentile(means, [2.5, 97.5])
    se = x.std(ddof=1) / math.sqrt(len(x))
    assert abs(lo - ref_lo) < 0.1 * se and abs(hi - ref_hi) < 0.1 * se
    assert lo < x.mean() < hi


def test_distinct_n_and_repeat_rate_by_hand():
    seqs = [[1, 2, 1, 2], [3, 3, 3], [5]]
    # unigrams: 1 2 1 2 3 3 3 5 -> {1,2,3,5} = 4 of 8; bigrams: 12 21 12 33 33 -> {12,21,33} = 3 of 5
    assert ev.distinct_n(seqs, 1) == 4 / 8 and ev.distinct_n(seqs, 2) == 3 / 5
    # pairs with a predecessor: 3 + 2 + 0 = 5; repeats: 3-3 twice
    assert ev.repeat_rate(seqs) == 2 / 5
    assert math.isnan(ev.distinct_n([[1]], 2)) and math.isnan(ev.repeat_rate([[1], []]))
    collapsed = [[7] * 32 for _ in range(4)]
    assert ev.distinct_n(collapsed, 2) == 1 / (31 * 4) and ev.repeat_rate(collapsed) == 1.0


def test_few_shot_sequence_scores_the_same_tokens():
    line = [5, 6, 7, 8]
    assert ev.few_shot_sequence([], line, 0, 16) == (line, 3)  # k = 0: the plain line
    assert ev.few_shot_sequence([1, 2, 3], line, 0, 16) == ([1, 2, 3, 5, 6, 7, 8], 3)
    assert ev.few_shot_sequence([1, 2, 3], line, 0, 6) == ([2, 3, 5, 6, 7, 8], 3)  # context cut from the left
    assert ev.few_shot_sequence([1, 2, 3], line, 0, 4) == (line, 3)  # no room: the plain line
    # a BOS-adding tokenizer: [BOS, a, b]; with context the line's BOS is dropped, a and b are scored
    assert ev.few_shot_sequence([0, 1, 2], [0, 5, 6], 1, 16) == ([0, 1, 2, 5, 6], 2)


def test_model_name(tmp_path):
    (tmp_path / "run__npo" / "unlearned_model").mkdir(parents=True)
    (tmp_path / "my-model").mkdir()
    assert ev.model_name("EleutherAI/deep-ignorance-unfiltered") == "EleutherAI_deep-ignorance-unfiltered"
    assert ev.model_name(str(tmp_path / "my-model")) == "my-model"
    assert ev.model_name(str(tmp_path / "my-model") + "/") == "my-model"
    assert ev.model_name(str(tmp_path / "run__npo" / "unlearned_model")) == "run__npo"


@pytest.mark.parametrize("content, message", [
    ('{"question": "q", "choices": ["a", "b"], "answer": 0}\n{"question": "q2", "choices": ["a", "b"], "answer": 1\n',
     "line 2: not valid JSON"),
    ('\n\n{"question": "q", "choices": ["a", "b"], "answer": 2}\n', "line 3: answer 2 is out of range for 2 choices"),
    ('{"question": "q", "choices": ["a", "b"], "answer": -1}\n', "line 1: answer -1 is out of range"),
    ('{"question": "q", "choices": ["a"], "answer": 0}\n', "line 1: 'choices' must be a list of at least two"),
    ('{"question": "", "choices": ["a", "b"], "answer": 0}\n', "line 1: 'question' must be a non-empty string"),
    ('{"question": "q", "choices": ["a", "b"], "answer": "0"}\n', "line 1: 'answer' must be the integer index"),
    ('[1, 2]\n', "line 1: expected a JSON object"),
    ('\n  \n', "is empty"),
])
def test_read_mcq_names_the_bad_line(tmp_path, content, message):
    p = tmp_path / "mcq.jsonl"
    p.write_text(content)
    with pytest.raises(ev.UsageError, match=message.replace("(", r"\(")):
        ev.read_mcq(p)


# ----------------------------------------------------------------------------------------------
# The model passes against a plain transformers forward
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("eval")
    model = make_tiny_model("gpt_neox", seed=3, vocab_size=len(tiny_tokenizer))
    path = save_model(model, root / "tiny-model", tiny_tokenizer)
    forget = TINY_TEXTS[1::2] + ["Zephyr lattices glow when tuned.", "A glimmer reactor hums."]
    retain = TINY_TEXTS[0::2] + ["The library opens at nine."]
    train = ["Glimmer lattices are tuned at dawn.", "Zephyr coils hum softly.", "Braided silver wire stores charge.",
             "The quartz lattice rings when struck.", "Glimmer reactors need cold water."]
    data = root / "data"
    data.mkdir()
    (data / "forget_test.txt").write_text("\n".join(forget) + "\n")
    (data / "retain_test.txt").write_text("\n\n".join(retain) + "\n")  # blank lines are skipped
    (data / "forget.txt").write_text("\n".join(train) + "\n")
    mcq = [{"question": "What do zephyr coils store?", "choices": ["charge", "water", "bread", "rain"], "answer": 0},
           {"question": "What does bread need?", "choices": ["patience", "quartz", "silver"], "answer": 0},
           {"question": "Where did the rain fall?", "choices": ["the old town square", "the river"], "answer": 1}]
    (data / "forget_mcq.jsonl").write_text("".join(json.dumps(m) + "\n" for m in mcq))
    (data / "retain_mcq.jsonl").write_text("".join(json.dumps(m) + "\n" for m in mcq[1:]))
    return {"root": root, "model": model, "tok": tiny_tokenizer, "path": path, "data": data,
            "forget": forget, "retain": retain, "train": train, "mcq": mcq}


def reference_token_logps(model, ids: list[int], start: int = 1):
    """log p(x_t | x_<t) for t >= start from an unbatched forward, log-softmax in float64."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    return [lp[t - 1, ids[t]].item() for t in range(start, len(ids))], lp


def test_scores_match_a_plain_transformers_forward(tiny):
    model, tok = tiny["model"], tiny["tok"]
    args = ev.parse_args(["--model", "x", "--batch-size", "3", "--max-length", "64"])
    texts = tiny["forget"]
    rows = ev.score_lines(model, tok, texts, args, "cpu", "test")
    for text, row in zip(texts, rows):
        ids = tok(text)["input_ids"]
        with torch.no_grad():  # transformers' own loss: the mean NLL of tokens 2..T
            loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
        assert row["n_tokens"] == len(ids)
        assert row["nll"] == pytest.approx(loss, abs=1e-5)
        lps, lp_all = reference_token_logps(model, ids)
        k = max(1, math.floor(0.4 * len(lps)))
        assert row["mink"] == pytest.approx(np.mean(sorted(lps)[:k]), abs=1e-5)
        p = lp_all.exp()
        mu = (p * lp_all).sum(-1)
        sd = ((p * lp_all ** 2).sum(-1) - mu ** 2).clamp_min(1e-6).sqrt()
        z = [(lps[t - 1] - mu[t - 1].item()) / sd[t - 1].item() for t in range(1, len(ids))]
        assert row["minkpp"] == pytest.approx(np.mean(sorted(z)[:k]), abs=1e-4)
        assert row["zlib"] == pytest.approx(sum(lps) / len(zlib.compress(text.encode())), abs=1e-5)


def test_few_shot_k0_equals_plain_nll_and_context_is_not_scored(tiny):
    model, tok = tiny["model"], tiny["tok"]
    args = ev.parse_args(["--model", "x", "--batch-size", "2", "--max-length", "128"])
    test, train = tiny["forget"], tiny["train"]
    assert max(len(tok("\n".join(train[:2]) + "\n" + t)["input_ids"]) for t in test) <= 128  # no context cut
    plain = ev.score_lines(model, tok, test, args, "cpu", "t")
    shots = ev.few_shot_nll(model, tok, test, train, [0, 2], args, "cpu")
    assert shots["0"] == np.mean([r["nll"] for r in plain])
    ref = []
    for text in test:
        ctx = tok("\n".join(train[:2]) + "\n")["input_ids"]
        line = tok(text)["input_ids"]
        lps, _ = reference_token_logps(model, ctx + line, start=len(ctx) + 1)
        ref.append(-np.mean(lps))
    assert shots["2"] == pytest.approx(np.mean(ref), abs=1e-5)


def test_generation_is_greedy_then_seeded_samples(tiny):
    model, tok = tiny["model"], tiny["tok"]
    args = ev.parse_args(["--model", "x", "--generate", "2", "--gen-tokens", "5", "--prompt-tokens", "4"])
    recs, toks = ev.generate(model, tok, tiny["retain"][:2], "retain_test", args, "cpu")
    assert [(r["index"], r["mode"], r["sample"]) for r in recs] == [
        (0, "greedy", None), (1, "greedy", None), (0, "sample", 0), (0, "sample", 1), (1, "sample", 0), (1, "sample", 1)]
    ids = tok(tiny["retain"][0])["input_ids"][:4]
    cur = list(ids)
    with torch.no_grad():  # greedy by hand: argmax of a plain forward, five times
        for _ in range(5):
            cur.append(int(model(input_ids=torch.tensor([cur])).logits[0, -1].argmax()))
    expected = cur[4:]
    if tok.eos_token_id in expected:
        expected = expected[:expected.index(tok.eos_token_id)]
    assert toks[0] == expected and recs[0]["prompt"] == tok.decode(ids)
    again, toks2 = ev.generate(model, tok, tiny["retain"][:2], "retain_test", args, "cpu")
    assert toks2 == toks and again == recs  # seeded sampling: identical


# ----------------------------------------------------------------------------------------------
# The command line, end to end (lm-eval included)
# ----------------------------------------------------------------------------------------------
def run_cli(tiny, outdir, *extra):
    d = tiny["data"]
    return ev.main(["--model", str(tiny["path"]), "--forget-test", str(d / "forget_test.txt"),
                    "--retain-test", str(d / "retain_test.txt"), "--forget-train", str(d / "forget.txt"),
                    "--mcq-forget", str(d / "forget_mcq.jsonl"), "--mcq-retain", str(d / "retain_mcq.jsonl"),
                    "--few-shot", "0,1", "--generate", "2", "--gen-tokens", "6", "--batch-size", "4",
                    "--max-length", "64", "--outdir", str(outdir), *extra])


@pytest.fixture(scope="module")
def cli_run(tiny):
    out = tiny["root"] / "out"
    assert run_cli(tiny, out) == 0
    return out


def test_outputs_have_the_documented_shape(cli_run, tiny):
    folder = cli_run / "tiny-model"
    s = json.loads((folder / "summary.json").read_text())
    for key in ("forget_nll", "forget_nll_ci95", "retain_nll", "retain_nll_ci95", "mia", "mcq", "few_shot",
                "generation", "model", "data", "settings", "versions"):
        assert key in s
    assert set(s["mia"]) == {"loss", "zlib", "mink", "minkpp"}
    assert set(s["mcq"]) == {"forget", "retain"}
    assert set(s["mcq"]["forget"]) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}
    assert list(s["few_shot"]) == ["0", "1"]
    assert set(s["generation"]) == {"forget_test", "retain_test"}
    assert set(s["generation"]["forget_test"]) == {"distinct_1", "distinct_2", "repeat_rate"}
    assert s["data"]["forget_test"]["sha256"] == ev.sha256_file(tiny["data"] / "forget_test.txt")
    import pandas as pd

    ps = pd.read_csv(folder / "per_sample.csv")
    assert list(ps.columns) == ["split", "index", "n_tokens", "nll", "mink", "minkpp", "zlib"]
    assert ps.groupby("split", sort=False).size().to_dict() == {
        "forget_test": len(tiny["forget"]), "retain_test": len(tiny["retain"]), "forget_train": len(tiny["train"])}
    gens = [json.loads(x) for x in (folder / "generations.jsonl").read_text().splitlines()]
    assert len(gens) == (len(tiny["forget"]) + len(tiny["retain"])) * 3
    assert {"prompt", "continuation", "split"} <= set(gens[0])
    summary = pd.read_csv(cli_run / "summary.csv")
    assert summary["model"].tolist() == ["tiny-model"]
    assert summary.loc[0, "forget_nll"] == pytest.approx(s["forget_nll"])
    assert (folder / "summary.json").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask():
    import os

    m = os.umask(0)
    os.umask(m)
    return m


def mann_whitney_auc(members, non_members) -> float:
    """ROC AUC as the Mann-Whitney count written out: the fraction of (member, non-member) pairs in
    which the member scores higher, a tie counting one half."""
    wins = sum((m > n) + 0.5 * (m == n) for m in members for n in non_members)
    return wins / (len(members) * len(non_members))


def test_summary_statistics_match_the_mann_whitney_count_and_the_per_sample_rows(cli_run, tiny):
    import pandas as pd

    folder = cli_run / "tiny-model"
    s = json.loads((folder / "summary.json").read_text())
    ps = pd.read_csv(folder / "per_sample.csv")
    f, r, t = (ps[ps.split == x] for x in ("forget_test", "retain_test", "forget_train"))
    assert s["forget_nll"] == pytest.approx(f.nll.mean(), abs=1e-12)
    assert s["retain_nll"] == pytest.approx(r.nll.mean(), abs=1e-12)
    assert s["forget_nll_ci95"][0] <= s["forget_nll"] <= s["forget_nll_ci95"][1]
    for attack, col, sign in (("loss", "nll", -1), ("zlib", "zlib", 1), ("mink", "mink", 1), ("minkpp", "minkpp", 1)):
        members, non = (sign * t[col]).tolist(), (sign * f[col]).tolist()     # members: the training lines
        assert s["mia"][attack] == pytest.approx(mann_whitney_auc(members, non), abs=1e-12)
    assert s["few_shot"]["0"] == pytest.approx(s["forget_nll"], abs=1e-12)


def test_mcq_accuracy_through_lm_eval_equals_a_hand_loglikelihood_argmax(cli_run, tiny):
    """lm-eval's cloze scoring, done by hand: context "{question}\\nAnswer:", continuation " {choice}",
    acc = argmax of the summed log-likelihood, acc_norm = argmax of it divided by the choice's bytes."""
    model, tok = tiny["model"], tiny["tok"]
    s = json.loads((cli_run / "tiny-model" / "summary.json").read_text())
    for key, items in (("forget", tiny["mcq"]), ("retain", tiny["mcq"][1:])):
        acc, acc_norm = [], []
        for item in items:
            ctx = f"{item['question']}\nAnswer:"
            ll = []
            for c in item["choices"]:
                whole, head = tok(ctx + " " + c)["input_ids"], tok(ctx)["input_ids"]
                lps, _ = reference_token_logps(model, whole, start=len(head))
                ll.append(sum(lps))
            acc.append(int(np.argmax(ll) == item["answer"]))
            acc_norm.append(int(np.argmax([v / len((" " + c).encode()) for v, c in zip(ll, item["choices"])])
                                == item["answer"]))
        got = s["mcq"][key]
        assert got["acc"] == pytest.approx(np.mean(acc)) and got["acc_norm"] == pytest.approx(np.mean(acc_norm))
        assert got["acc_stderr"] == pytest.approx(np.std(acc, ddof=1) / math.sqrt(len(acc)))
        chance = np.mean([1 / len(i["choices"]) for i in items])
        assert s["mcq_chance"][key] == pytest.approx(chance)


def test_rerun_gives_identical_outputs(cli_run, tiny):
    again = tiny["root"] / "again"
    assert run_cli(tiny, again) == 0
    for name in ("per_sample.csv", "generations.jsonl"):
        assert (again / "tiny-model" / name).read_bytes() == (cli_run / "tiny-model" / name).read_bytes()
    a = json.loads((again / "tiny-model" / "summary.json").read_text())
    b = json.loads((cli_run / "tiny-model" / "summary.json").read_text())
    for key in ("forget_nll_ci95", "mia", "mcq", "few_shot", "generation"):
        assert a[key] == b[key]


# ----------------------------------------------------------------------------------------------
# Bad input: one error line, exit 1, nothing written
# ----------------------------------------------------------------------------------------------
def _bad(tmp, tiny, capsys, *args, replace=None):
    out = tmp / "out"
    argv = ["--model", str(tiny["path"]), "--forget-test", str(tiny["data"] / "forget_test.txt"),
            "--retain-test", str(tiny["data"] / "retain_test.txt"), "--forget-train", str(tiny["data"] / "forget.txt"),
            "--mcq-forget", str(tiny["data"] / "forget_mcq.jsonl"), "--mcq-retain", "", "--outdir", str(out), *args]
    for flag, value in (replace or {}).items():
        argv[argv.index(flag) + 1] = value
    capsys.readouterr()
    assert ev.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not out.exists()
    return err[0]


@pytest.mark.parametrize("k", ["0", "-0.1", "1.5", "nan"])
def test_mink_k_outside_0_1(tmp_path, tiny, capsys, k):
    assert "--mink-k must be in (0, 1]" in _bad(tmp_path, tiny, capsys, "--mink-k", k)


def test_missing_empty_and_malformed_inputs(tmp_path, tiny, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    assert "does not exist" in _bad(tmp_path, tiny, capsys, replace={"--forget-test": str(tmp_path / "nope.txt")})
    assert "is empty" in _bad(tmp_path, tiny, capsys, replace={"--retain-test": str(empty)})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n{oops}\n')
    assert "line 2: not valid JSON" in _bad(tmp_path, tiny, capsys, replace={"--mcq-forget": str(bad)})
    bad.write_text('{"question": "q", "choices": ["a", "b", "c", "d"], "answer": 4}\n')
    assert "answer 4 is out of range for 4 choices" in _bad(tmp_path, tiny, capsys, replace={"--mcq-forget": str(bad)})
    assert "does not exist" in _bad(tmp_path, tiny, capsys, replace={"--mcq-forget": str(tmp_path / "none.jsonl")})
    assert "--few-shot 9 needs" in _bad(tmp_path, tiny, capsys, "--few-shot", "0,9")
    assert "model directory" in _bad(tmp_path, tiny, capsys, replace={"--model": str(tmp_path / "no-model")})


def test_unknown_or_unreachable_lm_eval_task_offline(tmp_path, tiny, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    assert "unknown lm-eval task no_such_task" in _bad(tmp_path, tiny, capsys, "--lm-eval-tasks", "no_such_task")
    msg = _bad(tmp_path, tiny, capsys, "--lm-eval-tasks", "wmdp_bio")
    assert "wmdp_bio" in msg and "offline" in msg


def test_outdir_of_another_tools_summary_csv_is_refused(tmp_path, tiny, capsys):
    """aggregate_runs.py and tamper_attack.py also write summary.csv: a folder holding only theirs
    is not an earlier evaluation, so it is refused before any model loads and left as it was."""
    out = tmp_path / "aggregate"
    out.mkdir()
    (out / "summary.csv").write_text("group,metric\nga,forget_NLL\n")
    argv = ["--model", str(tiny["path"]), "--forget-test", str(tiny["data"] / "forget_test.txt"),
            "--retain-test", str(tiny["data"] / "retain_test.txt"), "--outdir", str(out)]
    capsys.readouterr()
    assert ev.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no */summary.json" in err[0], err
    assert [p.name for p in out.iterdir()] == ["summary.csv"]
    assert (out / "summary.csv").read_text() == "group,metric\nga,forget_NLL\n"


def test_stopped_run_keeps_per_sample_csv_and_is_not_finished(cli_run, tiny, tmp_path, capsys, monkeypatch):
    """Each finished part is written as it goes: a run stopped after the per-sample scoring (here
    over a finished earlier run) leaves the new per_sample.csv, no summary.json (the model's
    marker), no summary.csv (the run's), and no temporary file; a log shows the scoring's progress."""
    out = tmp_path / "out"
    shutil.copytree(cli_run, out)

    def stop(self, model, tokenizer, args):
        raise ev.UsageError("stopped after the per-sample scoring")
    monkeypatch.setattr(ev.McqBenchmarks, "evaluate", stop)
    capsys.readouterr()
    assert run_cli(tiny, out) == 1
    err = capsys.readouterr().err
    folder = out / "tiny-model"
    assert (folder / "per_sample.csv").read_text() == (cli_run / "tiny-model" / "per_sample.csv").read_text()
    assert not (folder / "summary.json").exists() and not (out / "summary.csv").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["per_sample.csv"]
    for split in ("forget_test", "retain_test", "forget_train"):
        assert f"tiny-model {split}: started of " in err and f"tiny-model {split}: done, " in err
    assert "error: stopped after the per-sample scoring" in err
