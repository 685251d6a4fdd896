"""pipeline.sh checks every setting, and that what it cleans is a results folder, before it deletes anything.

Fast: every run stops before the first heavy step (a refused setting, or UV_RUN=false making the
first tool fail right after the cleaning step).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def copy_checkout(dest: Path, with_git: bool) -> Path:
    """The working tree as a clone holds it (tracked + untracked, not ignored), optionally as a git repo."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, names):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    if with_git:
        git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
        subprocess.run(git + ["init", "-q"], cwd=dest, check=True)
        subprocess.run(git + ["add", "-A"], cwd=dest, check=True)
        subprocess.run(git + ["commit", "-q", "-m", "copy"], cwd=dest, check=True)
    return dest


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    return copy_checkout(tmp_path_factory.mktemp("checkout"), with_git=True)


def pipeline(repo: Path, home: Path, **settings) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MODEL_", "COMPARE_", "PYTEST", "OUTPUTS_DIR", "PLOTS_DIR", "DATA_DIR", "LOG_DIR",
                                "DATASET_SOURCE", "DEVICE", "DTYPE", "SEED", "MAX_LENGTH", "BATCH_SIZE"))}
    env.update({"HF_HUB_OFFLINE": "1", "HOME": str(home), "UV_RUN": "false", **settings})
    return subprocess.run(["bash", str(repo / "pipeline.sh"), "--demo"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=120)


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if ".git" not in p.parts}


def earlier_results(outputs: Path) -> None:
    """A stale comparison, and two unlearned models (one seeded) that must survive any cleaning."""
    (outputs / "a_vs_b" / "param_stats").mkdir(parents=True, exist_ok=True)
    (outputs / "a_vs_b" / "param_stats" / "per_layer.csv").write_text("stale")
    for run in ("m__ga", "m__npo__seed7"):
        (outputs / run / "unlearned_model").mkdir(parents=True, exist_ok=True)
        (outputs / run / "unlearned_model" / "model.safetensors").write_text("weights")


def refused(proc, *words):
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert len(err) == 1 and err[0].startswith("pipeline: "), proc.stderr
    for w in words:
        assert w in err[0], err[0]
    assert "==> cleaning" not in proc.stdout


@pytest.mark.parametrize("case", ["checkout", "project_folder", "home", "git_repo", "root"])
def test_refuses_to_clean_a_folder_that_is_not_results(checkout, tmp_path, case):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    other = tmp_path / "other-repo"
    (other / ".git").mkdir(parents=True)
    (other / "notes.md").write_text("mine")
    outputs = {"checkout": ".", "project_folder": "demo", "home": str(home), "git_repo": str(other), "root": "/"}[case]
    before, home_before, other_before = snapshot(checkout), snapshot(home), snapshot(other)
    proc = pipeline(checkout, home, OUTPUTS_DIR=outputs)
    refused(proc, "refusing to clean OUTPUTS_DIR=", {"checkout": "holds this checkout",
                                                    "project_folder": "the project's own files",
                                                    "home": "home folder", "git_repo": ".git",
                                                    "root": "root folder"}[case])
    assert snapshot(checkout) == before and snapshot(home) == home_before and snapshot(other) == other_before


def test_refuses_project_files_without_git(tmp_path):
    """A copy without .git (a tarball): the project's files are recognised by name."""
    repo = copy_checkout(tmp_path / "repo", with_git=False)
    sibling = copy_checkout(tmp_path / "sibling", with_git=False)
    before = snapshot(sibling)
    proc = pipeline(repo, tmp_path, PLOTS_DIR=str(sibling))
    refused(proc, "refusing to clean PLOTS_DIR=", "project's own files")
    assert snapshot(sibling) == before


@pytest.mark.parametrize("setting", [{"DATASET_SOURCE": "hubb"}, {"DEVICE": "gpu"}, {"DTYPE": "float32"},
                                     {"MAX_LENGTH": "512tokens"}, {"SEED": "-1"}, {"BATCH_SIZE": "0"}])
def test_bad_settings_are_refused_before_cleaning(checkout, tmp_path, setting):
    outputs = tmp_path / "outputs"
    earlier_results(outputs)
    before = snapshot(outputs)
    proc = pipeline(checkout, tmp_path, OUTPUTS_DIR=str(outputs), PLOTS_DIR=str(tmp_path / "plots"), **setting)
    (name, value), = setting.items()
    refused(proc, f"{name}='{value}'")
    assert snapshot(outputs) == before                        # nothing deleted


def test_cleaning_keeps_unlearned_models_seeded_or_not(checkout, tmp_path):
    outputs, plots = tmp_path / "outputs", tmp_path / "plots"
    earlier_results(outputs)
    (plots / "a_vs_b").mkdir(parents=True)
    (plots / "a_vs_b" / "old.png").write_text("stale")
    proc = pipeline(checkout, tmp_path, OUTPUTS_DIR=str(outputs), PLOTS_DIR=str(plots), FORCE="1")
    assert "==> cleaning" in proc.stdout and proc.returncode == 1    # UV_RUN=false: the first tool "fails"
    assert not (outputs / "a_vs_b").exists() and not (plots / "a_vs_b").exists()
    for run in ("m__ga", "m__npo__seed7"):
        assert (outputs / run / "unlearned_model" / "model.safetensors").read_text() == "weights"


def test_without_force_nothing_is_cleaned(checkout, tmp_path):
    outputs, plots = tmp_path / "outputs", tmp_path / "plots"
    earlier_results(outputs)
    proc = pipeline(checkout, tmp_path, OUTPUTS_DIR=str(outputs), PLOTS_DIR=str(plots))
    assert "==> cleaning" not in proc.stdout and proc.returncode == 1   # UV_RUN=false: the first tool "fails"
    assert (outputs / "a_vs_b" / "param_stats" / "per_layer.csv").read_text() == "stale"


def test_a_rerun_skips_finished_steps_and_force_reruns_them(checkout, tmp_path):
    """UV_RUN=true: every tool "succeeds" at once, so the whole pipeline runs in seconds; the steps
    whose last-written file is there are skipped, FORCE=1 cleans and runs every one."""
    outputs, plots, data = tmp_path / "outputs", tmp_path / "plots", tmp_path / "data"
    data.mkdir()
    for cmp in ("demo-unfiltered_vs_demo-e2e-strong-filter", "demo-unfiltered_vs_demo-unfiltered-cb-lat"):
        for marker in ("param_stats/per_component.csv", "weight_geometry/geometry_report.yaml",
                       "activation_stats/activation_stats.csv", "activation_geometry/geometry_report.yaml"):
            (outputs / cmp / marker).parent.mkdir(parents=True, exist_ok=True)
            (outputs / cmp / marker).write_text("done\n")
    for marker in ("eval/summary.csv", "tamper/attack_report.yaml", "ablation/ablation_report.yaml"):
        (outputs / marker).parent.mkdir(parents=True, exist_ok=True)
        (outputs / marker).write_text("done\n")
    (data / "PROVENANCE.md").write_text("done\n")
    settings = dict(OUTPUTS_DIR=str(outputs), PLOTS_DIR=str(plots), DATA_DIR=str(data), UV_RUN="true")
    proc = pipeline(checkout, tmp_path, **settings)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    skipped = [line.split(":")[0].removeprefix("==> ") for line in proc.stdout.splitlines() if "done already" in line]
    assert sorted(skipped) == sorted(["weight-diff stats", "datasets", "activation stats", "evaluation",
                                      "tamper attack", "weight geometry", "activation geometry",
                                      "training-free attacks"])   # two lanes: their lines interleave
    assert "==> cleaning" not in proc.stdout and "layer-wise lens" in proc.stdout and "report" in proc.stdout
    proc = pipeline(checkout, tmp_path, FORCE="1", **settings)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "==> cleaning" in proc.stdout and "done already" not in proc.stdout
    assert not (outputs / "eval").exists()                        # cleaned; the tools (UV_RUN=true) wrote nothing
