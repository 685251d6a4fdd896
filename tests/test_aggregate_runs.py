"""aggregate_runs.py on run folders built by hand the way unlearn.py writes them (metrics.json,
run_report.yaml, per_sample_nll.csv): means and stds equal numpy's over the runs' metrics.json,
the bootstrap CI of three seeds is their [min, max] (worked out in the test), the paired p-values
equal the textbook t test and the exact Wilcoxon signed-rank test written out with numpy on the
per-sample files, mismatched groups are refused naming the setting, the report is the documented
format, and bad input is one `error:` line with nothing written."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT

import aggregate_runs as ag

SEEDS = (42, 1337, 2024)
N_EVAL = 12


# ---------------------------------------------------------------------------------------------
# Textbook references, written out (no scipy): the tool's numbers must equal them
# ---------------------------------------------------------------------------------------------
def paired_t(a, b) -> tuple[float, float]:
    """Paired t test: t = mean(d) / (sd(d) / sqrt(n)), d = a - b, and its two-sided p = 2 P(T_{n-1} > |t|),
    the Student-t tail integrated from the density with 400-point Gauss-Legendre (x = |t|/u on the tail)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    n, nu = len(d), len(d) - 1.0
    t = d.mean() / (d.std(ddof=1) / math.sqrt(n))
    log_c = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi)

    def density(x):
        return np.exp(log_c - (nu + 1) / 2 * np.log1p(x * x / nu))

    nodes, weights = np.polynomial.legendre.leggauss(400)
    u, w = (nodes + 1) / 2, weights / 2                      # Gauss-Legendre on (0, 1)
    a_ = abs(t)
    if a_ <= 1:
        tail = 0.5 - np.sum(w * a_ * density(a_ * u))         # 1/2 - integral over (0, |t|)
    else:
        tail = np.sum(w * density(a_ / u) * a_ / u ** 2)      # integral over (|t|, inf)
    return float(t), float(2 * tail)


def wilcoxon_exact(a, b) -> float:
    """Two-sided exact Wilcoxon signed-rank p: zero differences dropped, R+ = sum of the ranks of |d| of
    the positive d; under H0 every sign pattern is equally likely, so the null distribution of R+ is
    the number of subsets of {1..n} with each sum / 2^n (counted by dynamic programming);
    p = min(1, 2 min(P(R+ <= r), P(R+ >= r))). Valid without ties (continuous data)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    d = d[d != 0]
    n = len(d)
    ranks = np.empty(n)
    ranks[np.argsort(np.abs(d))] = np.arange(1, n + 1)
    r = int(ranks[d > 0].sum())
    counts = [1] + [0] * (n * (n + 1) // 2)
    for k in range(1, n + 1):
        for total in range(len(counts) - 1, k - 1, -1):
            counts[total] += counts[total - k]
    low, high = sum(counts[:r + 1]) / 2 ** n, sum(counts[r:]) / 2 ** n
    return min(1.0, 2 * min(low, high))


def test_the_references_on_a_published_example():
    """Wilcoxon's own signed-rank illustration (Hollander & Wolfe): for n = 5 all positive, the exact
    two-sided p is 2/32; the t reference gives p = 1 at t = 0 and matches the tabulated
    t_{0.975, 10} = 2.228 (two-sided p = 0.05)."""
    assert wilcoxon_exact([1, 2, 3, 4, 5], [0, 0, 0, 0, 0]) == pytest.approx(2 / 32)
    assert wilcoxon_exact([1, -2, 3], [0, 0, 0]) == pytest.approx(2 * 3 / 8)     # P(R+ >= 4) = 3/8
    assert paired_t([1, -1, 2, -2], [0, 0, 0, 0])[1] == pytest.approx(1.0)
    z = np.arange(11.0) - 5.0
    z = z / z.std(ddof=1)                                     # mean 0, sd 1: t = shift * sqrt(11)
    t, p = paired_t(z + 2.228139 / math.sqrt(11), np.zeros(11))
    assert t == pytest.approx(2.228139, rel=1e-9) and p == pytest.approx(0.05, abs=2e-7)


def report_dict(seed: int, method: str = "ga", model: str = "demo/models/demo-unfiltered", lr: float = 1e-5) -> dict:
    """run_report.yaml as unlearn.py writes it (the fields aggregation reads, and a few more)."""
    return {
        "Model": {"base": model, "parameters": 123456, "dtype": "fp32"},
        "Dataset": {"forget_size": 120, "retain_size": 120, "forget_domain": "forget.txt",
                    "retain_domain": "retain.txt", "forget_train": 108, "retain_train": 108,
                    "forget_eval": N_EVAL, "retain_eval": N_EVAL},
        "Training": {"method": method, "learning_rate": lr, "batch_size": 4, "epochs": 1, "gradient_clip": 1.0,
                     "seed": seed, "split_seed": 0, "max_length": 128, "steps": 27},
        "Hardware": {"device": "cpu", "cuda": "none", "pytorch": "2.9.0"},
        "Results": {"forget_nll": 0.0, "retain_nll": 0.0},
    }


def make_run(root: Path, seed: int, method: str = "ga", rng=None, shift: float = 0.5, **report_kw) -> Path:
    """outputs/<model>__<method>__seed<k>/unlearned_model with the three files of a run."""
    rng = rng or np.random.default_rng(seed)
    run = root / f"demo-unfiltered__{method}__seed{seed}" / "unlearned_model"
    run.mkdir(parents=True)
    rows = []
    for split in ("forget_eval", "retain_eval"):
        idx = np.arange(0, 3 * N_EVAL, 3) + (split == "retain_eval")  # line numbers in the source file
        before = 3.0 + np.linspace(0, 1, N_EVAL)  # the base model: identical for every seed
        after = before + (shift if split == "forget_eval" else 0.02) + rng.normal(0, 0.1, N_EVAL)
        rows += [(split, int(i), float(b), float(a)) for i, b, a in zip(idx, before, after)]
    (run / "per_sample_nll.csv").write_text(
        "split,index,nll_before,nll_after\n" + "".join(f"{s},{i},{b!r},{a!r}\n" for s, i, b, a in rows))
    mean = lambda split, col: float(np.mean([r[col] for r in rows if r[0] == split]))  # noqa: E731
    before = {"forget_NLL": mean("forget_eval", 2), "retain_NLL": mean("retain_eval", 2)}
    before["gap"] = before["forget_NLL"] - before["retain_NLL"]
    metrics = {"method": method, "forget_NLL": mean("forget_eval", 3), "retain_NLL": mean("retain_eval", 3),
               "before": before, "runtime_s": float(rng.uniform(10, 20))}
    metrics["gap"] = metrics["forget_NLL"] - metrics["retain_NLL"]
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (run / "run_report.yaml").write_text(yaml.safe_dump(report_dict(seed, method, **report_kw), sort_keys=False))
    return run


def run_cli(args, capsys=None) -> int:
    return ag.main([str(a) for a in args])


@pytest.fixture
def three(tmp_path):
    return [make_run(tmp_path / "outputs", s) for s in SEEDS]


def test_summary_means_stds_equal_numpy_and_the_bootstrap_ci_of_three_seeds(three, tmp_path):
    out = tmp_path / "agg"
    assert run_cli([*three, "--outdir", out, "--n-boot", "2000", "--seed", "7"]) == 0
    import pandas as pd
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == ["group", "metric", "n_seeds", "mean", "std", "ci95_low", "ci95_high", "min", "max"]
    assert set(summary["group"]) == {"demo-unfiltered__ga"}
    metrics = [json.loads((r / "metrics.json").read_text()) for r in three]
    ref = {"forget_NLL": [m["forget_NLL"] for m in metrics], "retain_NLL": [m["retain_NLL"] for m in metrics],
           "gap": [m["gap"] for m in metrics], "forget_NLL_before": [m["before"]["forget_NLL"] for m in metrics],
           "retain_NLL_before": [m["before"]["retain_NLL"] for m in metrics],
           "gap_before": [m["before"]["gap"] for m in metrics], "runtime": [m["runtime_s"] for m in metrics]}
    assert set(summary["metric"]) == set(ref)
    for _, row in summary.iterrows():
        x = np.array(ref[row["metric"]])
        assert row["n_seeds"] == 3
        assert row["mean"] == pytest.approx(np.mean(x), rel=1e-12, abs=1e-12)
        assert row["std"] == pytest.approx(np.std(x, ddof=1), rel=1e-12, abs=1e-12)
        assert (row["min"], row["max"]) == (pytest.approx(x.min()), pytest.approx(x.max()))
        if row["std"] > 0:
            assert row["ci95_low"] < row["mean"] < row["ci95_high"]
        # Percentile bootstrap of the mean of three values: a resample is one of 27 equally likely
        # index triples, and "all three the smallest" (or the largest) has probability 1/27 = 3.7 %,
        # more than the 2.5 % each tail of a 95 % interval holds: the exact interval is [min, max].
        # With 2000 seeded resamples the count at each extreme (~74, sd ~8.4) exceeds the 50 in a tail.
        assert row["ci95_low"] == pytest.approx(x.min(), abs=1e-12)
        assert row["ci95_high"] == pytest.approx(x.max(), abs=1e-12)


def test_paired_p_values_equal_the_textbook_formulas_on_the_per_sample_files(three, tmp_path):
    out = tmp_path / "agg"
    assert run_cli([*three, "--outdir", out]) == 0
    import pandas as pd
    tests = pd.read_csv(out / "tests.csv")
    assert list(tests.columns) == ["group", "metric", "n", "mean_diff", "t", "p_t", "p_wilcoxon"]
    # reference: each sample's NLL averaged over the three seeds, by index, with plain numpy
    files = [np.genfromtxt(r / "per_sample_nll.csv", delimiter=",", names=True, dtype=None, encoding="utf-8")
             for r in three]
    for split in ("forget_eval", "retain_eval"):
        idx = sorted(int(i) for i in files[0]["index"][files[0]["split"] == split])
        after = np.mean([[f["nll_after"][(f["split"] == split) & (f["index"] == i)][0] for i in idx] for f in files], 0)
        before = np.mean([[f["nll_before"][(f["split"] == split) & (f["index"] == i)][0] for i in idx] for f in files], 0)
        row = tests[tests["metric"] == f"{split} after-before"].iloc[0]
        t, p = paired_t(after, before)
        assert row["n"] == N_EVAL
        assert row["mean_diff"] == pytest.approx(np.mean(after - before), rel=1e-12)
        assert row["t"] == pytest.approx(t, rel=1e-10)
        assert row["p_t"] == pytest.approx(p, rel=1e-8)
        assert row["p_wilcoxon"] == pytest.approx(wilcoxon_exact(after, before), rel=1e-10)
    assert tests.set_index("metric").loc["forget_eval after-before", "p_t"] < 1e-6  # a shift of 0.5 nats


def test_baseline_pairs_groups_on_the_same_samples(tmp_path):
    root = tmp_path / "outputs"
    ga = [make_run(root, s, "ga", shift=0.5) for s in SEEDS]
    npo = [make_run(root, s, "npo", rng=np.random.default_rng(s + 1), shift=0.3) for s in SEEDS]
    out = tmp_path / "agg"
    assert run_cli([*ga, *npo, "--baseline", "ga", "--outdir", out]) == 0
    import pandas as pd
    tests = pd.read_csv(out / "tests.csv")
    row = tests[(tests["group"] == "demo-unfiltered__npo") & (tests["metric"] == "forget_eval after-demo-unfiltered__ga")]
    assert len(row) == 1 and not (tests["metric"].str.contains("after-demo") & (tests["group"] == "demo-unfiltered__ga")).any()

    def pooled(runs):
        fs = [pd.read_csv(r / "per_sample_nll.csv") for r in runs]
        fs = [f[f["split"] == "forget_eval"].sort_values("index")["nll_after"].to_numpy() for f in fs]
        return np.mean(fs, 0)
    a, b = pooled(npo), pooled(ga)
    assert row.iloc[0]["mean_diff"] == pytest.approx(np.mean(a - b), rel=1e-12)
    assert row.iloc[0]["p_t"] == pytest.approx(paired_t(a, b)[1], rel=1e-8)
    assert row.iloc[0]["p_wilcoxon"] == pytest.approx(wilcoxon_exact(a, b), rel=1e-10)


def test_report_yaml_is_the_documented_format_with_mean_pm_std(three, tmp_path, capsys):
    out = tmp_path / "agg"
    assert run_cli([*three, "--outdir", out]) == 0
    text = (out / "report.yaml").read_text(encoding="utf-8")
    rep = yaml.safe_load(text)["demo-unfiltered__ga"]
    assert list(rep) == ["Model", "Dataset", "Training", "Hardware", "Results"]
    assert rep["Training"]["seeds"] == list(SEEDS) and "seed" not in rep["Training"]
    f = [json.loads((r / "metrics.json").read_text())["forget_NLL"] for r in three]
    assert rep["Results"]["forget_nll"] == ag.format_pm(np.mean(f), np.std(f, ddof=1))
    m, s = (float(v) for v in rep["Results"]["forget_nll"].split(" ± "))
    assert m == pytest.approx(np.mean(f), abs=0.006) and s == pytest.approx(np.std(f, ddof=1), abs=0.006)
    assert f'forget_nll: "{rep["Results"]["forget_nll"]}"  # mean ± std over 3 seeds' in text
    lo, hi = rep["Results"]["forget_nll_ci95"]
    assert lo < np.mean(f) < hi
    # the printed table: a header and one line per group
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split()[:2] == ["group", "seeds"]
    assert printed[1].startswith("demo-unfiltered__ga") and rep["Results"]["forget_nll"] in printed[1]


def test_format_pm_and_model_name():
    assert ag.format_pm(5.2313, 0.1534) == "5.23 ± 0.15"
    assert ag.format_pm(3.01234, 0.004217) == "3.0123 ± 0.0042"
    assert ag.format_pm(1.0, 0.0) == "1.0000 ± 0.0000"
    assert ag.format_pm(2.5, float("nan")) == "2.5000"
    assert ag.model_name("EleutherAI/deep-ignorance-unfiltered") == "EleutherAI_deep-ignorance-unfiltered"
    assert ag.model_name("demo/models/demo-unfiltered/") == "demo-unfiltered"
    assert ag.model_name("outputs/x__ga/unlearned_model") == "x__ga"


def test_mismatched_group_is_refused_naming_the_setting(tmp_path, capsys):
    root = tmp_path / "outputs"
    runs = [make_run(root, 42), make_run(root, 1337), make_run(root, 2024, lr=2e-5)]
    out = tmp_path / "agg"
    assert run_cli([*runs, "--outdir", out]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Training.learning_rate" in err[0]
    assert not out.exists()
    # grouping by the differing setting makes them two groups instead
    assert run_cli([*runs, "--group-by", "model,method,learning_rate", "--outdir", out]) == 0
    import pandas as pd
    assert pd.read_csv(out / "summary.csv").groupby("group")["n_seeds"].first().to_dict() == {
        "demo-unfiltered__ga__learning_rate=1e-05": 2, "demo-unfiltered__ga__learning_rate=2e-05": 1}


def corrupt_nan(run):
    p = run / "per_sample_nll.csv"
    p.write_text(p.read_text().replace("\nretain_eval,1,", "\nretain_eval,1,nan,", 1).replace(",nan,3", ",nan,", 1))


@pytest.mark.parametrize("breakage, expect", [
    (lambda r: (r / "metrics.json").write_text("{not json"), "metrics.json cannot be read as JSON"),
    (lambda r: (r / "metrics.json").write_text(json.dumps({"forget_NLL": 1.0})), "has no retain_NLL"),
    (lambda r: (r / "run_report.yaml").unlink(), "has no run_report.yaml"),
    (lambda r: (r / "per_sample_nll.csv").unlink(), "has no per_sample_nll.csv"),
    (lambda r: (r / "per_sample_nll.csv").write_text("split,index,nll_before\nforget_eval,0,1.0\n"), "lacks the column(s) nll_after"),
    (lambda r: (r / "per_sample_nll.csv").write_text("split,index,nll_before,nll_after\nforget_eval,0,1.0,inf\n"),
     "line 2: nll_after"),
    (lambda r: (r / "per_sample_nll.csv").write_text(
        "split,index,nll_before,nll_after\nforget_eval,0,1.0,2.0\nforget_eval,0,1.0,2.0\n"), "line 3: sample forget_eval 0 appears twice"),
    (lambda r: (r / "run_report.yaml").write_text(yaml.safe_dump(report_dict(42))), "seed 42 occurs twice"),
])
def test_bad_input_is_one_error_line_and_keeps_what_exists(three, tmp_path, capsys, breakage, expect):
    out = tmp_path / "agg"
    out.mkdir()
    (out / "summary.csv").write_text("old\n")  # an earlier aggregation's files
    (out / "report.yaml").write_text("old\n")
    breakage(three[1])
    assert run_cli([*three, "--outdir", out]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0], err
    assert sorted(os.listdir(out)) == ["report.yaml", "summary.csv"] and (out / "summary.csv").read_text() == "old\n"


def test_outdir_with_foreign_files_is_refused_before_reading(three, tmp_path, capsys):
    out = tmp_path / "agg"
    out.mkdir()
    (out / "summary.csv").write_text("someone else's\n")
    assert run_cli([*three, "--outdir", out]) == 1
    assert "holds files that no earlier run of this tool wrote" in capsys.readouterr().err
    assert (out / "summary.csv").read_text() == "someone else's\n"


def test_missing_run_dir_and_unknown_baseline(three, tmp_path, capsys):
    out = tmp_path / "agg"
    assert run_cli([three[0], tmp_path / "nope", "--outdir", out]) == 1
    assert "nope does not exist" in capsys.readouterr().err
    assert run_cli([*three, "--baseline", "npo", "--outdir", out]) == 1
    assert "--baseline npo matches no group" in capsys.readouterr().err
    assert not out.exists()


def test_cli_parent_folders_deterministic_and_ordinary_modes(three, tmp_path):
    """As a user runs it: the scripts' own interpreter, parent folders as RUN_DIRs, twice → same bytes."""
    parents = [str(r.parent) for r in three]
    outs = []
    for k in range(2):
        out = tmp_path / f"agg{k}"
        p = subprocess.run([sys.executable, str(ROOT / "aggregate_runs.py"), *parents, "--outdir", str(out),
                            "--n-boot", "500"], capture_output=True, text=True, cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        assert "Traceback" not in p.stderr
        outs.append({n: (out / n).read_bytes() for n in ("summary.csv", "tests.csv", "report.yaml")})
        mask = os.umask(0)
        os.umask(mask)
        assert {oct((out / n).stat().st_mode & 0o777) for n in outs[-1]} == {oct(0o666 & ~mask)}
    assert outs[0] == outs[1]
    p = subprocess.run([sys.executable, str(ROOT / "aggregate_runs.py"), str(tmp_path / "nope")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and p.stderr.startswith("error: ")
