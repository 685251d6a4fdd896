"""End to end: ``./pipeline.sh --demo`` from a clean copy of the repository.

This is the slowest test of the suite (it builds the demo model family from scratch). It checks
that every documented CSV and PNG is produced and that the miniature shows the real study's
signature: the data-filtered twin differs from the base in every layer, the CB-LAT twin only in
the query_key_value matrices of its LoRA layers (low-rank updates), and its activations are
identical below those layers.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # deselect with -m "not slow"
CMP_FILTERED = "demo-unfiltered_vs_demo-e2e-strong-filter"
CMP_CBLAT = "demo-unfiltered_vs_demo-unfiltered-cb-lat"


def clean_copy(dest: Path) -> Path:
    """What a fresh ``git clone`` of the working tree holds: tracked + untracked, not ignored."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, names):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def pipeline_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_", "COMPARE_", "PYTEST"))}
    env.update(HF_HUB_OFFLINE="1", **extra)
    return env


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    if shutil.which("uv") is None:
        pytest.skip("uv is needed to run the pipeline")
    repo = clean_copy(tmp_path_factory.mktemp("clone"))
    proc = subprocess.run(["bash", "pipeline.sh", "--demo"], cwd=repo, env=pipeline_env(),
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + "\n" + proc.stderr[-4000:]
    return repo, proc


def test_every_documented_file_is_produced(demo_run):
    repo, proc = demo_run
    for cmp in (CMP_FILTERED, CMP_CBLAT):
        for csv in ("param_stats/per_matrix.csv", "param_stats/per_layer.csv",
                    "activation_stats/activation_stats.csv"):
            path = repo / "outputs" / cmp / csv
            assert path.is_file() and path.stat().st_size > 100, path
            assert str(path.relative_to(repo)) in proc.stdout  # listed in the closing summary
        for png in (f"param_plots/layer_locality_{cmp}.png", f"param_plots/stable_rank_{cmp}.png",
                    "activation_plots/activation_norms_forget.png",
                    "activation_plots/activation_norms_retain.png",
                    "activation_plots/activation_diffs_forget_vs_retain.png"):
            path = repo / "plots" / cmp / png
            assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    assert (repo / "data" / "forget.txt").stat().st_size > 0


def cb_lat_recipe(repo: Path) -> dict:
    return json.loads((repo / "demo" / "models" / "demo_report.json").read_text())["cb_lat"]


def trained_layers(repo: Path) -> set[int]:
    """The decoder layers whose weights the CB-LAT twin changed: those with LoRA adapters ("0-4")."""
    lo, _, hi = cb_lat_recipe(repo)["lora_layers"].partition("-")
    return set(range(int(lo), int(hi or lo) + 1))


def test_filtered_twin_differs_in_every_layer_cb_lat_only_where_trained(demo_run):
    repo, _ = demo_run
    filtered = pd.read_csv(repo / "outputs" / CMP_FILTERED / "param_stats" / "per_layer.csv")
    assert (filtered["dW_fro_layer"] > 0).all()
    assert set(filtered["group"]) >= {"attn", "mlp"}

    layers = trained_layers(repo)
    cblat = pd.read_csv(repo / "outputs" / CMP_CBLAT / "param_stats" / "per_layer.csv")
    changed = set(cblat.loc[cblat["dW_fro_layer"] > 0, "layer"])
    assert changed == layers
    n_layers = filtered["layer"].nunique()
    assert len(layers) < n_layers

    # the real twin's signature: only query_key_value changed, each by a low-rank update (<= LoRA rank)
    per_matrix = pd.read_csv(repo / "outputs" / CMP_CBLAT / "param_stats" / "per_matrix.csv")
    moved = per_matrix[per_matrix["dW_fro"] > 0]
    assert set(moved["group"]) == {"attn"} and moved["name"].str.contains("query_key_value").all()
    assert set(moved["layer"]) == layers
    assert (moved["dW_stable_rank"] <= cb_lat_recipe(repo)["lora_r"]).all()


def test_cb_lat_activations_move_only_from_the_first_trained_layer(demo_run):
    repo, _ = demo_run
    first = min(trained_layers(repo))
    acts = pd.read_csv(repo / "outputs" / CMP_CBLAT / "activation_stats" / "activation_stats.csv")
    below = acts[acts["layer"] <= first]  # hidden_states[l] is the input of decoder layer l
    above = acts[acts["layer"] > first]
    assert (below["mean_dh_L2"] == 0).all()
    assert (above["mean_dh_L2"] > 0).all()
    # targeted unlearning: forget representations move more than retain ones
    at = above.pivot(index="layer", columns="split", values="mean_dh_L2")
    assert (at["forget"] > at["retain"]).mean() >= 0.5


def test_pipeline_offline_without_demo_says_so_in_one_sentence(tmp_path):
    if shutil.which("uv") is None:
        pytest.skip("uv is needed to run the pipeline")
    repo = clean_copy(tmp_path)
    proc = subprocess.run(["bash", "pipeline.sh"], cwd=repo, env=pipeline_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--demo" in lines[0] and "Traceback" not in proc.stderr
    assert not any((repo / "outputs").glob("*_vs_*"))


def test_evaluation_outputs_and_figure(demo_run):
    repo, proc = demo_run
    eval_dir = repo / "outputs" / "eval"
    rows = pd.read_csv(eval_dir / "summary.csv")
    assert rows["model"].tolist() == ["demo-unfiltered", "demo-e2e-strong-filter", "demo-unfiltered-cb-lat"]
    for name in rows["model"]:
        for f in ("per_sample.csv", "summary.json", "generations.jsonl"):
            assert (eval_dir / name / f).stat().st_size > 0
    png = repo / "plots" / "eval" / "forgetting_summary.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(png.relative_to(repo)) in proc.stdout
    acc = rows.set_index("model")["mcq_forget_acc"]
    # the unfiltered model knows the invented domain; its data-filtered twin never saw it
    assert acc["demo-unfiltered"] > 0.45 and acc["demo-e2e-strong-filter"] < 0.35


def test_step_logs_have_no_progress_bars(demo_run):
    """A log is not a terminal: one line per stage, no carriage-return bars (the tools' own, or
    transformers' "Loading weights" and datasets' "Generating split")."""
    repo, _ = demo_run
    logs = sorted((repo / "outputs" / "logs").glob("*.log"))
    assert len(logs) == 20
    for log in logs:
        assert "\r" not in log.read_text(errors="replace"), log.name


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_demo_build_follows_the_recipe_and_a_rerun_is_cached(demo_run):
    """The family the pipeline built: the unfiltered twin has read the invented domain, the filtered
    one never has; cb-lat was made the real way (LoRA on query_key_value of layers 0-4, merged):
    exactly those matrices changed, each by an update of rank <= r (an independent float64 SVD).
    A second build finds every step cached, starts no tool and leaves the models byte-identical."""
    repo, _ = demo_run
    out = repo / "demo" / "models"
    report = json.loads((out / "demo_report.json").read_text())
    names = ["demo-unfiltered", "demo-e2e-strong-filter", "demo-unfiltered-cb-lat"]
    assert list(report["models"]) == names
    for name in names:
        assert len(list((out / name).glob("model-*-of-*.safetensors"))) >= 2
        assert (out / name / "tokenizer.json").is_file() and (out / name / "build_info.json").is_file()
    u, f, c = (report["models"][n] for n in names)
    assert f["forget_nll"] - u["forget_nll"] > 1.0
    assert abs(f["retain_nll"] - u["retain_nll"]) < 0.5 * u["retain_nll"]
    assert c["forget_nll"] - u["forget_nll"] > 0.5 and abs(c["retain_nll"] - u["retain_nll"]) < 0.1
    cb = report["cb_lat"]
    assert (cb["lora_target_modules"], cb["lora_layers"], u["parameters"]) == ("query_key_value", "0-4", f["parameters"])

    base, cblat = _weights(out / names[0]), _weights(out / names[2])
    changed = {k for k in base if not torch.equal(base[k], cblat[k])}
    assert changed == {f"gpt_neox.layers.{i}.attention.query_key_value.weight" for i in range(5)}
    assert set(report["cb_lat_weight_diff"]) == changed
    for k in changed:
        s = torch.linalg.svdvals(cblat[k].double() - base[k].double())
        assert int((s > 1e-3 * s[0]).sum()) <= cb["lora_r"], k  # numerical rank of ΔW (fp32 rounding: 1e-3)
        assert report["cb_lat_weight_diff"][k] == pytest.approx(float((s ** 2).sum() / s[0] ** 2), abs=1e-3)

    before = {p: p.read_bytes() for p in out.rglob("*.safetensors")}
    again = subprocess.run(["uv", "run", "--quiet", "--script", "demo/build_demo.py", "--outdir", "demo/models"],
                           cwd=repo, env=pipeline_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count(": cached") == 5, again.stdout   # data, tokenizer, the three models
    assert "$ " not in again.stdout  # no tool was started the second time
    assert {p: p.read_bytes() for p in out.rglob("*.safetensors")} == before
    assert json.loads((out / "demo_report.json").read_text())["models"] == report["models"]
