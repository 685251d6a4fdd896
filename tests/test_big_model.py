"""--device-map auto / --max-memory (accelerate's big-model inference) in the read-only tools: a memory
limit that pushes the layers out of memory onto disk gives the numbers of the in-memory run.

On this CPU-only machine the limit is ``--max-memory cpu=<a few KB>``: accelerate keeps the embeddings
on the CPU and offloads the decoder layers and the head to the offload folder (memory-mapped,
loaded per forward). On a GPU the same flags put layers on the GPU until it is full."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import TINY_TEXTS, make_tiny_model, save_model

import collect_activation_norms as can
import evaluate_unlearning as ev

LIMIT = ["--device-map", "auto", "--max-memory", "cpu=20KB"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("big")
    a = save_model(make_tiny_model("gpt_neox", seed=3, vocab_size=len(tiny_tokenizer)), root / "a", tiny_tokenizer)
    b = save_model(make_tiny_model("gpt_neox", seed=4, vocab_size=len(tiny_tokenizer)), root / "b", tiny_tokenizer)
    (root / "forget.txt").write_text("\n".join(TINY_TEXTS[1::2]) + "\n")
    (root / "retain.txt").write_text("\n".join(TINY_TEXTS[0::2]) + "\n")
    (root / "mcq.jsonl").write_text(json.dumps({"question": "What do glimmer reactors do?",
                                                "choices": ["hum", "sing", "rain"], "answer": 0}) + "\n")
    (root / "train.txt").write_text("\n".join(TINY_TEXTS[::-1] * 2) + "\n")
    return root


def test_parse_max_memory():
    assert ev.parse_max_memory("0=20GiB, cpu=60GiB,disk=1000") == {0: "20GiB", "cpu": "60GiB", "disk": 1000}
    assert ev.parse_max_memory(None) is None and ev.parse_max_memory("") is None
    for bad in ("20GiB", "gpu=20GiB", "0=lots", "0="):
        with pytest.raises(ev.UsageError):
            ev.parse_max_memory(bad)


def test_the_limit_offloads_to_disk(tiny, tmp_path):
    import torch

    model = ev.from_pretrained_big(tiny / "a", dtype=torch.float32, device="cpu", device_map="auto",
                              max_memory={"cpu": "20KB"}, offload_folder=str(tmp_path / "off"))
    assert "disk" in set(model.hf_device_map.values())
    # (transformers 5 reads disk-offloaded layers straight from the model's safetensors file, memory-mapped:
    # nothing is copied into the offload folder)


def test_evaluation_offloaded_equals_in_memory(tiny, tmp_path):
    def run(out, *extra):
        return ev.main(["--model", str(tiny / "a"), "--forget-test", str(tiny / "forget.txt"),
                        "--retain-test", str(tiny / "retain.txt"), "--forget-train", str(tiny / "forget.txt"),
                        "--mcq-forget", str(tiny / "mcq.jsonl"), "--mcq-retain", "", "--few-shot", "0", "--generate", "0",
                        "--batch-size", "2", "--max-length", "32", "--device", "cpu", "--dtype", "fp32",
                        "--outdir", str(out), *extra])

    assert run(tmp_path / "mem") == 0
    assert run(tmp_path / "off", *LIMIT) == 0
    a = pd.read_csv(tmp_path / "mem" / "a" / "per_sample.csv")
    b = pd.read_csv(tmp_path / "off" / "a" / "per_sample.csv")
    pd.testing.assert_frame_equal(a, b, rtol=1e-6, atol=1e-6)
    sa = json.loads((tmp_path / "mem" / "a" / "summary.json").read_text())
    sb = json.loads((tmp_path / "off" / "a" / "summary.json").read_text())
    # lm-eval on the dispatched model (HFLM's device must not be the meta device of the offloaded layers)
    assert sa["mcq"]["forget"]["acc"] is not None and sa["mcq"] == sb["mcq"]
    for key in ("forget_nll", "retain_nll", "mia"):
        assert sa[key] == pytest.approx(sb[key], rel=1e-6), key


def test_activation_norms_offloaded_equals_in_memory(tiny, tmp_path):
    def run(out, *extra):
        cache = tmp_path / f"cache_{out}"
        cache.mkdir()
        rc = can.main(["--model-a", str(tiny / "a"), "--model-b", str(tiny / "b"),
                       "--forget-text", str(tiny / "forget.txt"), "--retain-text", str(tiny / "retain.txt"),
                       "--outdir", str(tmp_path / out), "--device", "cpu", "--dtype", "fp32", "--max-length", "32",
                       "--cache-dir", str(cache), *extra])
        assert rc == 0
        return pd.read_csv(tmp_path / out / "activation_stats.csv")

    pd.testing.assert_frame_equal(run("mem"), run("off", *LIMIT), rtol=1e-6, atol=1e-6)


def test_max_memory_without_device_map_is_one_error_line(tiny, tmp_path, capsys):
    rc = ev.main(["--model", str(tiny / "a"), "--forget-test", str(tiny / "forget.txt"),
                  "--retain-test", str(tiny / "retain.txt"), "--forget-train", str(tiny / "forget.txt"),
                  "--outdir", str(tmp_path / "x"), "--max-memory", "cpu=1GB"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1] == "error: --max-memory needs --device-map auto"


def test_lens_offloaded_equals_in_memory(tiny, tmp_path):
    """Logit and tuned lens (the tuned lens trained through the offloaded norm and unembedding)."""
    import layerwise_lens as ll

    def run(out, *extra):
        assert ll.main(["--model", str(tiny / "a"), "--forget-test", str(tiny / "forget.txt"),
                        "--retain-test", str(tiny / "retain.txt"), "--mcq-forget", "", "--mcq-retain", "",
                        "--lens-train-text", str(tiny / "train.txt"), "--lens-steps", "3",
                        "--lens-tokens-per-step", "64", "--batch-size", "2", "--max-length", "32",
                        "--device", "cpu", "--dtype", "fp32", "--outdir", str(tmp_path / out), *extra]) == 0
        return pd.read_csv(tmp_path / out / "layerwise.csv")

    mem, off = run("mem"), run("off", *LIMIT)
    assert set(mem.lens) == {"logit", "tuned"} and len(mem) == 2 * 5
    pd.testing.assert_frame_equal(mem, off, rtol=1e-5, atol=1e-5)


def ablation_argv(tiny, out, *extra):
    return ["--reference", str(tiny / "a"), "--model", str(tiny / "b"), "--attacks", "direction",
            "--direction-data-forget", str(tiny / "forget.txt"), "--direction-data-retain", str(tiny / "retain.txt"),
            "--forget-test", str(tiny / "forget.txt"), "--retain-test", str(tiny / "retain.txt"),
            "--mcq-forget", str(tiny / "mcq.jsonl"), "--mcq-retain", "", "--device", "cpu", "--dtype", "fp32",
            "--max-length", "32", "--batch-size", "2", "--outdir", str(out), *extra]


def test_ablation_direction_offloaded_equals_in_memory(tiny, tmp_path):
    """The direction attack works by forward hooks on the decoder layers: offloaded, the same rows and the
    same directions; MCQ through lm-eval on the dispatched model too."""
    import ablation_attack as aa
    from safetensors.torch import load_file

    assert aa.main(ablation_argv(tiny, tmp_path / "mem")) == 0
    assert aa.main(ablation_argv(tiny, tmp_path / "off", *LIMIT)) == 0
    mem, off = (pd.read_csv(tmp_path / d / "ablation.csv") for d in ("mem", "off"))
    assert len(mem) == 2 + 4 and mem.forget_nll.notna().all() and mem.mcq_forget_acc.notna().any()
    pd.testing.assert_frame_equal(mem, off, rtol=1e-5, atol=1e-5)
    dm, do = (load_file(tmp_path / d / "directions.safetensors") for d in ("mem", "off"))
    assert dm.keys() == do.keys() and all((dm[k] - do[k]).abs().max() <= 1e-5 for k in dm)


@pytest.mark.parametrize("attacks", ["quantize", "direction,delta_rank"])
def test_ablation_weight_attacks_refuse_offloaded_layers(tiny, tmp_path, capsys, attacks):
    import ablation_attack as aa

    rc = aa.main(ablation_argv(tiny, tmp_path / "x", *LIMIT, "--attacks", attacks, "--mcq-forget", ""))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    weight = attacks.split(",")[-1]
    assert rc == 1 and err.startswith(f"error: {weight} edits weights in place, but --device-map auto offloaded ")
    assert "drop --device-map, give more --max-memory" in err and not (tmp_path / "x" / "ablation.csv").exists()


def test_activation_geometry_offloaded_equals_in_memory(tiny, tmp_path):
    """Hidden states, the per-token sample and the ΔW read shares (forward pre-hooks on the offloaded
    qkv / mlp_in modules; ΔW itself read from the two checkpoints' files, never from the loaded model)."""
    import collect_activation_geometry as cag

    def run(out, *extra):
        assert cag.main(["--model-a", str(tiny / "a"), "--model-b", str(tiny / "b"),
                         "--forget-text", str(tiny / "forget.txt"), "--retain-text", str(tiny / "retain.txt"),
                         "--outdir", str(tmp_path / out), "--device", "cpu", "--dtype", "fp32", "--probe-folds", "2",
                         "--top-k", "4", "--max-length", "32", "--batch-size", "2", *extra]) == 0
        return pd.read_csv(tmp_path / out / cag.GEOMETRY_CSV)

    mem, off = run("mem"), run("off", *LIMIT)
    reads = [c for c in mem.columns if c.startswith("dW_read")]
    assert len(mem) == 5 and reads and mem[reads].iloc[1:].notna().all().all()
    pd.testing.assert_frame_equal(mem, off, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("wrapper", ["run_eval.sh", "run_activations.sh", "run_lens.sh", "run_ablation.sh",
                                     "run_activation_geometry.sh"])
def test_wrappers_pass_the_big_model_flags_only_when_set(wrapper, tmp_path):
    import os
    import subprocess

    from conftest import ROOT

    fake = tmp_path / "fake"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME")} | {
        "UV_RUN": str(fake), "MODEL_A": "a/ref", "COMPARE_WITH": "b/filt", "OUTPUTS_DIR": "o"}
    plain = subprocess.run([str(ROOT / wrapper)], env=env, capture_output=True, text=True, check=True).stdout
    assert "--device-map" not in plain and "--max-memory" not in plain and "--offload-folder" not in plain
    out = subprocess.run([str(ROOT / wrapper)], capture_output=True, text=True, check=True,
                         env=env | {"DEVICE_MAP": "auto", "MAX_MEMORY": "0=20GiB,cpu=60GiB",
                                    "OFFLOAD_FOLDER": "/scratch/off"}).stdout.splitlines()
    assert out[out.index("--device-map") + 1] == "auto" and out[out.index("--max-memory") + 1] == "0=20GiB,cpu=60GiB"
    assert out[out.index("--offload-folder") + 1] == "/scratch/off"


@pytest.mark.parametrize("tool, argv", [
    ("layerwise_lens", ["--model", "m"]),
    ("ablation_attack", ["--reference", "r", "--model", "m"]),
    ("collect_activation_geometry", ["--model-a", "a", "--model-b", "b"]),
])
def test_max_memory_without_device_map_in_the_other_tools(tool, argv, tmp_path, capsys):
    import importlib

    rc = importlib.import_module(tool).main([*argv, "--outdir", str(tmp_path / "x"), "--max-memory", "cpu=1GB"])
    assert rc == 1 and capsys.readouterr().err.strip().splitlines()[-1] == "error: --max-memory needs --device-map auto"
    assert not (tmp_path / "x").exists()
