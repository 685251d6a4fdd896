"""check_experiment.py's memory plan: verdicts on the reference study's 6.9B GPT-NeoX config (built
here, no download) and estimates against peaks measured on the CPU (docs/scale.md)."""
from __future__ import annotations

import json
import os

import pytest

import check_experiment as ce
from conftest import ROOT

GB = 10**9


def neox_config(hidden=4096, layers=32, intermediate=16384, vocab=50304, heads=32):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         intermediate_size=intermediate, max_position_embeddings=2048, tie_word_embeddings=False,
                         bos_token_id=0, eos_token_id=0)


@pytest.fixture(scope="module")
def shape_6p9b():
    return ce.model_shape(neox_config())


def test_parameter_count_of_the_6p9b_config_matches_the_formula(shape_6p9b):
    h, L, I, V = 4096, 32, 16384, 50304
    # GPT-NeoX layer written out: qkv (h x 3h + 3h), dense (h x h + h), MLP (h x I + I, I x h + h), two layer norms
    layer = (3 * h * h + 3 * h) + (h * h + h) + (h * I + I) + (I * h + h) + 2 * 2 * h
    expected = L * layer + 2 * V * h + 2 * h          # embed_in, embed_out, final layer norm
    assert shape_6p9b["params"] == expected
    assert shape_6p9b["layer_params"] == layer
    assert 6.8e9 < expected < 6.9e9
    # default LoRA target of GPT-NeoX: query_key_value, r x (h + 3h) per layer
    assert ce.lora_params(shape_6p9b, 16, None) == L * 16 * (h + 3 * h)


def study_step(**kw):
    base = dict(kind="train", dtype="fp32", batch=4, length=512, sequences=2, gradient_checkpointing=True)
    base.update(kw)
    return ce.StepSettings("unlearn.py", **base)


def test_verdicts_on_one_and_two_80gb_gpus(shape_6p9b):
    P = shape_6p9b["params"]
    gpu = 80 * GB
    fp32 = study_step(precision="fp32")
    mixed = study_step(precision="mixed")
    assert not ce.fits(shape_6p9b, fp32, gpu)[0]
    assert not ce.fits(shape_6p9b, mixed, gpu)[0]
    # the states alone: 16 and 18 bytes per parameter
    assert ce.estimate_memory(shape_6p9b, fp32)["weights_and_states"] == 16 * P
    assert ce.estimate_memory(shape_6p9b, mixed)["weights_and_states"] == 18 * P
    assert ce.fits(shape_6p9b, study_step(dtype="bf16", lora_r=16), gpu)[0]
    assert ce.fits(shape_6p9b, study_step(dtype="fp32", lora_r=16), gpu)[0]
    # compensated bf16: 10 bytes per parameter = 68.6 GB: fits 80 GB, not 64 GB
    bf16 = study_step(precision="bf16", dtype="bf16")
    assert ce.estimate_memory(shape_6p9b, bf16)["weights_and_states"] == 10 * P
    assert ce.fits(shape_6p9b, bf16, gpu)[0]
    assert not ce.fits(shape_6p9b, bf16, 64 * GB)[0]
    # mixed sharded over two GPUs (FSDP): half the states plus two gathered layers in fp32
    sharded = study_step(precision="mixed", gpus=2, shard=True)
    est = ce.estimate_memory(shape_6p9b, sharded)
    assert est["weights_and_states"] == -(-18 * P // 2) + 2 * shape_6p9b["layer_params"] * 4
    assert ce.fits(shape_6p9b, sharded, gpu)[0]
    # the cheapest change for fp32 full on one GPU keeps the method and the GPU: compensated bf16
    advice, new = ce.cheapest_fix(shape_6p9b, fp32, gpu)
    assert advice.startswith("--precision bf16") and new.precision == "bf16"
    # on a 24 GB GPU full training needs LoRA; evaluation needs offload or more GPUs
    assert ce.cheapest_fix(shape_6p9b, study_step(precision="bf16", dtype="bf16"), 24 * GB)[0].startswith("LoRA")
    infer = ce.StepSettings("evaluate_unlearning.py", kind="infer", dtype="fp32", batch=8, length=512)
    assert not ce.fits(shape_6p9b, infer, 24 * GB)[0]
    assert "GPUs" in ce.cheapest_fix(shape_6p9b, infer, 24 * GB)[0]


def test_parse_size():
    assert ce.parse_size("80GB") == 80 * GB
    assert ce.parse_size("24GiB") == 24 * 2**30
    assert ce.parse_size("81920MiB") == 81920 * 2**20
    assert ce.parse_size("80G") == 80 * 2**30
    for bad in ("", "eighty", "-1GB", "0GB"):
        with pytest.raises(ce.UsageError):
            ce.parse_size(bad)


def test_cli_memory_plan_json(tmp_path, capsys):
    model = tmp_path / "m"
    model.mkdir()
    cfg = neox_config().to_dict()
    (model / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "f.txt").write_text("alpha beta\ngamma delta\n")
    (tmp_path / "r.txt").write_text("epsilon zeta\neta theta\n")
    common = ["--forget-data", str(tmp_path / "f.txt"), "--retain-data", str(tmp_path / "r.txt"), "--model", str(model),
              "--data-only", "--json", "--gpu-memory", "80GB", "--method", "npo"]
    rc = ce.main(common + ["--precision", "mixed"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1
    steps = {s["step"].split()[0]: s for s in out["memory"]["steps"]}
    assert steps["unlearn.py"]["fits"] is False and steps["unlearn.py"]["fix"]["advice"].startswith("--precision bf16")
    assert steps["evaluate_unlearning.py"]["fits"] is True
    rc = ce.main(common + ["--precision", "mixed", "--gpus", "2"])
    out = json.loads(capsys.readouterr().out)
    assert {s["step"].split()[0]: s["fits"] for s in out["memory"]["steps"]}["unlearn.py"] is True
    rc = ce.main(common[:-4] + ["--gpu-memory", "lots"])
    assert rc == 1 and capsys.readouterr().err.startswith("error: --gpu-memory must be a size")


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's /proc/self/clear_refs")
def test_estimates_within_25_percent_of_measured_cpu_peaks():
    """Two real AdamW steps (fp32; full, with gradient checkpointing, LoRA) and a no-grad forward with
    log-softmax on a 4-layer, 256-wide GPT-NeoX, measured with the RSS high-water mark of a fresh
    process each (bench/measure_peak.py explains the method; glibc's mmap threshold is pinned at
    64 KiB so freed tensors leave the RSS). A fresh process, because a test worker's heap, grown by
    earlier tests, hides part of the step's memory from the RSS."""
    import json
    import subprocess
    import sys

    from bench.measure_peak import neox_config as small_config

    cfg = small_config(256, 4, 1024, 4096, 4, 256)
    shape = ce.model_shape(cfg)
    B, S = 4, 128
    cases = [(["--mode", "train"], ce.StepSettings("full", kind="train", dtype="fp32", batch=B, length=S)),
             (["--mode", "train", "--gradient-checkpointing"],
              ce.StepSettings("gc", kind="train", dtype="fp32", batch=B, length=S, gradient_checkpointing=True)),
             (["--mode", "train", "--lora-r", "8"],
              ce.StepSettings("lora", kind="train", dtype="fp32", batch=B, length=S, lora_r=8)),
             (["--mode", "infer"], ce.StepSettings("infer", kind="infer", dtype="fp32", batch=B, length=S))]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    for flags, st in cases:
        out = subprocess.run([sys.executable, str(ROOT / "bench" / "measure_peak.py"), "--hidden", "256",
                              "--layers", "4", "--intermediate", "1024", "--vocab", "4096", "--batch", str(B),
                              "--length", str(S), *flags], env=env, capture_output=True, text=True, check=True)
        measured = json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]
        estimate = ce.estimate_memory(shape, st)["total"]
        assert 0.75 <= estimate / measured <= 1.25, (st.step, estimate, measured)
