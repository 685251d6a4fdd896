"""The wrappers of the evaluation, the attack, the data and the checks pass a flag only when its
environment variable is set (one idiom: common/env.sh's `flag`), every flag they can pass is one
the tool accepts, and a signal stops a wrapper and the pipeline with the tools' codes (130 / 143).
Run with a fake UV_RUN that prints its arguments (or sleeps, for the signals)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

from conftest import ROOT

STUDY_VARS = ("MODEL", "MODEL_A", "MODEL_FILTERED", "MODEL_CBLAT", "COMPARE_WITH", "OUTPUTS_DIR", "PLOTS_DIR",
              "DATA_DIR", "UV_RUN", "TAMPER_DATA_DIR")
SETTINGS = ("DEVICE", "DTYPE", "BATCH_SIZE", "MAX_LENGTH", "SEED", "EVAL_FEW_SHOT", "EVAL_GENERATE", "LM_EVAL_TASKS",
            "TAMPER_STEPS", "TAMPER_EVAL_EVERY", "TAMPER_LR", "TAMPER_BATCH_SIZE", "TAMPER_LORA_R", "DATASET_SOURCE",
            "N_FORGET", "N_RETAIN", "N_TEST", "N_MCQ", "MMLU_PATH", "CACHE_FP16")


def clean_env(**env) -> dict:
    return {k: v for k, v in os.environ.items() if k not in STUDY_VARS + SETTINGS} | env


@pytest.fixture
def run_wrapper(tmp_path):
    fake = tmp_path / "fake_uv_run"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" "--end--"\n')
    fake.chmod(0o755)

    def run(script: str, **env: str) -> list[str]:
        p = subprocess.run([str(ROOT / script)], capture_output=True, text=True,
                           env=clean_env(UV_RUN=str(fake), **env))
        assert p.returncode == 0, p.stderr
        lines = [ln for ln in p.stdout.splitlines() if not ln.startswith("== ")]
        assert lines[-1] == "--end--" and lines.count("--end--") == 1
        return lines[:-1]
    return run


def known_flags(tool: str) -> set[str]:
    import importlib

    module = importlib.import_module(tool)
    parser = module.build_parser() if hasattr(module, "build_parser") else None
    if parser is None:
        import argparse
        captured = {}
        real = argparse.ArgumentParser.parse_args

        def capture(self, *a, **k):
            captured["p"] = self
            raise SystemExit(0)
        argparse.ArgumentParser.parse_args = capture
        try:
            with pytest.raises(SystemExit):
                module.main([])
        finally:
            argparse.ArgumentParser.parse_args = real
        parser = captured["p"]
    return {s for a in parser._actions for s in a.option_strings}


def flags_of(argv: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in zip(argv[1::2], argv[2::2]):
        out.setdefault(key, []).append(value)
    return out


def test_run_eval_and_run_tamper_map_only_set_variables(run_wrapper, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "forget_mcq.jsonl").write_text("{}\n")
    base = dict(MODEL_A="a", COMPARE_WITH="b c", DATA_DIR=str(data), OUTPUTS_DIR="/o")
    argv = run_wrapper("run_eval.sh", **base)
    assert argv[0] == "evaluate_unlearning.py" and flags_of(argv) == {
        "--model": ["a", "b", "c"], "--mcq-forget": [f"{data}/forget_mcq.jsonl"], "--mcq-retain": [""],
        "--outdir": ["/o/eval"], "--forget-test": [f"{data}/forget_test.txt"],
        "--retain-test": [f"{data}/retain_test.txt"], "--forget-train": [f"{data}/forget.txt"]}
    settings = dict(DEVICE="cpu", DTYPE="fp32", BATCH_SIZE="4", MAX_LENGTH="64", SEED="3", EVAL_FEW_SHOT="0,1",
                    EVAL_GENERATE="2", LM_EVAL_TASKS="wmdp_bio")
    flags = flags_of(run_wrapper("run_eval.sh", **base, **settings))
    assert {k: v for k, v in flags.items() if k not in ("--model", "--mcq-forget", "--mcq-retain", "--outdir",
                                                        "--forget-test", "--retain-test", "--forget-train")} == {
        "--device": ["cpu"], "--dtype": ["fp32"], "--batch-size": ["4"], "--max-length": ["64"], "--seed": ["3"],
        "--few-shot": ["0,1"], "--generate": ["2"], "--lm-eval-tasks": ["wmdp_bio"]}
    assert set(flags) <= known_flags("evaluate_unlearning")

    argv = run_wrapper("run_tamper.sh", **base)
    assert argv[0] == "tamper_attack.py" and flags_of(argv) == {
        "--model": ["a", "b", "c"], "--attack-data": [f"{data}/forget.txt"], "--forget-test": [f"{data}/forget_test.txt"],
        "--retain-test": [f"{data}/retain_test.txt"], "--outdir": ["/o/tamper"], "--mcq-forget": [f"{data}/forget_mcq.jsonl"]}
    flags = flags_of(run_wrapper("run_tamper.sh", **base, TAMPER_STEPS="60", TAMPER_EVAL_EVERY="10", TAMPER_LR="3e-4",
                                 TAMPER_BATCH_SIZE="8", TAMPER_LORA_R="4", DEVICE="cpu", DTYPE="fp32",
                                 MAX_LENGTH="64", SEED="5", TAMPER_DATA_DIR="/t"))
    assert flags["--steps"] == ["60"] and flags["--eval-every"] == ["10"] and flags["--lr"] == ["3e-4"]
    assert flags["--batch-size"] == ["8"] and flags["--lora-r"] == ["4"] and flags["--seed"] == ["5"]
    assert flags["--attack-data"] == ["/t/forget.txt"] and "--mcq-forget" not in flags
    assert set(flags) <= known_flags("tamper_attack")


def test_run_datasets_and_run_checks(run_wrapper):
    assert run_wrapper("run_datasets.sh", DATA_DIR="/d") == ["create_datasets.py", "--outdir", "/d"]
    argv = run_wrapper("run_datasets.sh", DATA_DIR="/d", DATASET_SOURCE="synthetic", SEED="1", N_FORGET="5",
                       N_RETAIN="6", N_TEST="2", N_MCQ="3", MMLU_PATH="/m")
    assert flags_of(argv) == {"--outdir": ["/d"], "--source": ["synthetic"], "--seed": ["1"], "--n-forget": ["5"],
                              "--n-retain": ["6"], "--n-test": ["2"], "--n-mcq": ["3"], "--mmlu-path": ["/m"]}
    assert set(flags_of(argv)) <= known_flags("create_datasets")
    assert run_wrapper("run_checks.sh", DATA_DIR="/d", MODEL_A="m") == [
        "check_experiment.py", "--forget-data", "/d/forget.txt", "--retain-data", "/d/retain.txt", "--model", "m"]


@pytest.mark.parametrize("value, passed", [("1", True), ("TRUE", True), ("yes", True), ("0", False), ("no", False),
                                           ("", False)])
def test_cache_fp16_reads_the_one_boolean_rule(run_wrapper, value, passed):
    argv = run_wrapper("run_activations.sh", COMPARE_WITH="b", CACHE_FP16=value)
    assert ("--cache-fp16" in argv) is passed


def test_a_bad_boolean_stops_the_wrapper(tmp_path):
    p = subprocess.run([str(ROOT / "run_activations.sh")], capture_output=True, text=True,
                       env=clean_env(UV_RUN="true", COMPARE_WITH="b", CACHE_FP16="maybe"))
    assert p.returncode == 2 and "error: CACHE_FP16='maybe' is not a boolean" in p.stderr


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_pipeline_with_the_tools_code(tmp_path, sig, code):
    """Like a terminal's Ctrl-C or Slurm's SIGTERM, the signal goes to the whole process group: the
    running tool (here a stand-in that exits as run_tool does) stops, and so does the pipeline, with
    the same status, without starting the next step."""
    tool = tmp_path / "fake_uv_run"
    tool.write_text("#!/usr/bin/env python3\nimport signal, sys, time\n"
                    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))\n"
                    "print('started', flush=True)\n"
                    "try:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    sys.exit(130)\n")
    tool.chmod(0o755)
    log = tmp_path / "out.log"
    with open(log, "w") as out:
        p = subprocess.Popen(["bash", str(ROOT / "pipeline.sh"), "--demo"], stdout=out, stderr=subprocess.STDOUT,
                             env=clean_env(UV_RUN=str(tool), OUTPUTS_DIR=str(tmp_path / "o"),
                                           PLOTS_DIR=str(tmp_path / "p"), HF_HUB_OFFLINE="1"),
                             cwd=ROOT, start_new_session=True)
        deadline = time.monotonic() + 60
        while "started" not in log.read_text() and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.1)
        os.killpg(p.pid, sig)
        assert p.wait(timeout=60) == code
    text = log.read_text()
    assert "build demo models" in text and "weight-diff stats" not in text, text


LANE_TOOL = """#!/usr/bin/env python3
import os, pathlib, signal, sys, time
tool = os.path.basename(sys.argv[1]) if len(sys.argv) > 1 else ""
if tool not in ("evaluate_unlearning.py", "collect_weight_geometry.py"):
    sys.exit(0)                                       # every other tool "succeeds" at once
marks = pathlib.Path(os.environ["MARKS"])
def stop(name, code):
    (marks / f"{tool}.{name}").write_text("")
    sys.exit(code)
signal.signal(signal.SIGTERM, lambda *a: stop("TERM", 143))
print("started", tool, flush=True)
try:
    time.sleep(60)
except KeyboardInterrupt:
    stop("INT", 130)
"""


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_both_lanes_of_the_demo_pipeline(tmp_path, sig, code):
    """--demo runs its two lanes of steps side by side (the models' evaluation and attack; the
    geometry, lens and training-free attacks). A signal to the pipeline's process group reaches the
    running tool of each lane (the second lane has a process group of its own, so the pipeline
    passes the signal on): both stop with the tools' code, and no later step starts."""
    tool, marks = tmp_path / "fake_uv_run", tmp_path / "marks"
    tool.write_text(LANE_TOOL)
    tool.chmod(0o755)
    marks.mkdir()
    log = tmp_path / "out.log"
    with open(log, "w") as out:
        p = subprocess.Popen(["bash", str(ROOT / "pipeline.sh"), "--demo"], stdout=out, stderr=subprocess.STDOUT,
                             env=clean_env(UV_RUN=str(tool), OUTPUTS_DIR=str(tmp_path / "o"), MARKS=str(marks),
                                           PLOTS_DIR=str(tmp_path / "p"), HF_HUB_OFFLINE="1", FORCE="1"),
                             cwd=ROOT, start_new_session=True)
        deadline = time.monotonic() + 60
        while log.read_text().count("started") < 2 and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.1)
        assert log.read_text().count("started") == 2, log.read_text()
        os.killpg(p.pid, sig)
        assert p.wait(timeout=60) == code, log.read_text()
    name = sig.name.removeprefix("SIG")
    assert sorted(f.name for f in marks.iterdir()) == [f"collect_weight_geometry.py.{name}",
                                                       f"evaluate_unlearning.py.{name}"]
    text = log.read_text()
    for later in ("evaluation plot", "weight geometry plots", "report"):
        assert f"] {later}  (log" not in text, text


def test_one_lane_runs_the_steps_in_the_documented_order(tmp_path):
    """PIPELINE_JOBS=1: the steps one after the other, numbered as in the lanes."""
    p = subprocess.run(["bash", str(ROOT / "pipeline.sh"), "--demo"], capture_output=True, text=True, cwd=ROOT,
                       env=clean_env(UV_RUN="true", OUTPUTS_DIR=str(tmp_path / "o"), PLOTS_DIR=str(tmp_path / "p"),
                                     HF_HUB_OFFLINE="1", FORCE="1", PIPELINE_JOBS="1"))
    assert p.returncode == 0, p.stdout + p.stderr
    steps = [line.split("]")[0].removeprefix("==> [") for line in p.stdout.splitlines() if line.startswith("==> [")]
    assert steps == [str(k) for k in range(1, 21)]
    q = subprocess.run(["bash", str(ROOT / "pipeline.sh"), "--demo"], capture_output=True, text=True, cwd=ROOT,
                       env=clean_env(UV_RUN="true", OUTPUTS_DIR=str(tmp_path / "o"), PLOTS_DIR=str(tmp_path / "p"),
                                     HF_HUB_OFFLINE="1", FORCE="1"))
    assert q.returncode == 0, q.stdout + q.stderr
    lanes = [line for line in q.stdout.splitlines() if line.startswith("==> [")]
    assert sorted(lanes) == sorted(line for line in p.stdout.splitlines() if line.startswith("==> ["))


def test_no_wrapper_defines_its_own_flag_idiom():
    """One idiom turns a variable into a flag in every wrapper: common/env.sh's flag/switch."""
    for script in ROOT.glob("*.sh"):
        text = script.read_text()
        assert not re.search(r"^\s*(flag|switch)\s*\(\)", text, re.M), script.name
