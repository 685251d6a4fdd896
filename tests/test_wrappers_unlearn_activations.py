"""run_unlearn.sh and run_activations.sh pass a flag only when its environment variable is set, so
every default lives once, in the Python tool: run them with a fake UV_RUN that prints its arguments."""
from __future__ import annotations

import os
import subprocess

import pytest

from conftest import ROOT

STUDY_VARS = ("MODEL", "MODEL_A", "MODEL_FILTERED", "MODEL_CBLAT", "COMPARE_WITH", "OUTPUTS_DIR", "PLOTS_DIR",
              "DATA_DIR", "UV_RUN")
SETTINGS = ("OUTDIR", "FORGET_DATA", "RETAIN_DATA", "FORGET_TEXT", "RETAIN_TEXT", "DEVICE", "DTYPE", "LR", "EPOCHS",
            "BATCH_SIZE", "GRAD_ACCUM", "MAX_LENGTH", "MAX_SAMPLES", "BETA", "ALPHA", "STEERING_COEFF", "LAYER_ID",
            "FORGET_WEIGHT", "LAT_EPS", "LAT_STEPS", "EVAL_SPLIT", "EVAL_INTERVAL", "GRAD_CLIP", "SEED", "CB_LOSS",
            "TRAINABLE", "CACHE_FP16", "CACHE_DIR")


@pytest.fixture
def run_wrapper(tmp_path):
    fake = tmp_path / "fake_uv_run"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" "--end--"\n')
    fake.chmod(0o755)

    def run(script: str, *argv: str, **env: str) -> list[list[str]]:
        """The argument lists the wrapper started tools with (one list per tool call)."""
        clean = {k: v for k, v in os.environ.items() if k not in STUDY_VARS + SETTINGS}
        p = subprocess.run([str(ROOT / script), *argv], capture_output=True, text=True,
                           env=clean | {"UV_RUN": str(fake)} | env)
        assert p.returncode == 0, p.stderr
        lines = [ln for ln in p.stdout.splitlines() if not ln.startswith("== ")]
        calls, cur = [], []
        for ln in lines:
            if ln == "--end--":
                calls.append(cur)
                cur = []
            else:
                cur.append(ln)
        return calls
    return run


def test_run_unlearn_passes_no_value_flags_without_env(run_wrapper):
    assert run_wrapper("run_unlearn.sh", "npo") == [
        ["unlearn.py", "--model", "EleutherAI/deep-ignorance-unfiltered", "--method", "npo"]]


def test_run_unlearn_maps_each_set_variable_to_its_flag(run_wrapper):
    env = {"MODEL": "m", "OUTPUTS_DIR": "/o", "DATA_DIR": "/d", "DEVICE": "cpu", "DTYPE": "fp32", "LR": "2e-5",
           "EPOCHS": "3", "BATCH_SIZE": "2", "GRAD_ACCUM": "4", "MAX_LENGTH": "64", "MAX_SAMPLES": "10",
           "BETA": "0.2", "ALPHA": "50", "STEERING_COEFF": "5", "LAYER_ID": "1,2", "FORGET_WEIGHT": "0.5",
           "LAT_EPS": "0.2", "LAT_STEPS": "3", "EVAL_SPLIT": "0", "EVAL_INTERVAL": "5", "GRAD_CLIP": "0",
           "SEED": "7", "CB_LOSS": "rr", "TRAINABLE": "all"}
    [argv] = run_wrapper("run_unlearn.sh", "cb", "--no-gradient-checkpointing", **env)
    flags = dict(zip(argv[1::2], argv[2::2]))
    assert flags == {
        "--model": "m", "--method": "cb", "--forget-data": "/d/forget.txt", "--retain-data": "/d/retain.txt",
        "--outputs-dir": "/o", "--device": "cpu", "--dtype": "fp32", "--lr": "2e-5", "--epochs": "3",
        "--batch-size": "2", "--grad-accum-steps": "4", "--max-length": "64", "--max-samples": "10",
        "--beta": "0.2", "--alpha": "50", "--steering-coeff": "5", "--layer-id": "1,2", "--forget-weight": "0.5",
        "--lat-eps": "0.2", "--lat-steps": "3", "--eval-split": "0", "--eval-interval": "5", "--grad-clip": "0",
        "--seed": "7", "--cb-loss": "rr", "--trainable": "all"}
    assert argv[-1] == "--no-gradient-checkpointing"  # extra arguments go through last
    # every flag the wrapper can pass is one unlearn.py accepts
    import unlearn
    known = {s for a in unlearn.build_parser()._actions for s in a.option_strings}
    assert set(flags) <= known
    [argv] = run_wrapper("run_unlearn.sh", "ga", OUTDIR="/x/m", FORGET_DATA="f.txt")
    assert argv[1:] == ["--model", "EleutherAI/deep-ignorance-unfiltered", "--method", "ga",
                        "--forget-data", "f.txt", "--outdir", "/x/m"]


def test_run_activations_passes_no_value_flags_without_env(run_wrapper):
    calls = run_wrapper("run_activations.sh")
    assert calls == [
        ["collect_activation_norms.py", "--model-a", "EleutherAI/deep-ignorance-unfiltered", "--model-b", b,
         "--outdir", f"outputs/EleutherAI_deep-ignorance-unfiltered_vs_{b.replace('/', '_')}/activation_stats"]
        for b in ("EleutherAI/deep-ignorance-e2e-strong-filter", "EleutherAI/deep-ignorance-unfiltered-cb-lat")]


def test_run_activations_maps_each_set_variable_to_its_flag(run_wrapper):
    env = {"MODEL_A": "a", "COMPARE_WITH": "b", "DATA_DIR": "/d", "DEVICE": "cpu", "DTYPE": "bf16",
           "BATCH_SIZE": "2", "MAX_LENGTH": "64", "MAX_SAMPLES": "10", "CACHE_DIR": "/c", "CACHE_FP16": "1"}
    [argv] = run_wrapper("run_activations.sh", **env)
    assert argv == ["collect_activation_norms.py", "--model-a", "a", "--model-b", "b", "--outdir",
                    "outputs/a_vs_b/activation_stats", "--forget-text", "/d/forget.txt", "--retain-text",
                    "/d/retain.txt", "--device", "cpu", "--dtype", "bf16", "--batch-size", "2", "--max-length",
                    "64", "--max-samples", "10", "--cache-dir", "/c", "--cache-fp16"]
    import collect_activation_norms as can
    parsed = can.parse_args(argv[1:])  # every flag the wrapper passes is one the tool accepts
    assert parsed.forget_text == "/d/forget.txt" and parsed.cache_fp16 and parsed.max_samples == 10
