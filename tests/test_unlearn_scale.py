"""unlearn.py at scale: the saved model keeps the input's dtype (full and merged LoRA) unless
--save-dtype says otherwise. The dtypes are read back from the safetensors files themselves."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import build_tokenizer, make_tiny_model, save_model

import unlearn as ul
from test_unlearn_harness import make_corpus, run_main


def stored_dtypes(folder: Path) -> set[str]:
    out = set()
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), "pt") as sf:
            out |= {str(sf.get_slice(k).get_dtype()) for k in sf.keys()}
    return out


@pytest.fixture(scope="module")
def bf16_model(tmp_path_factory):
    """A 2-layer GPT-NeoX (hidden 32) stored in bf16, and small forget/retain files."""
    d = tmp_path_factory.mktemp("scale")
    forget, retain = make_corpus(24)
    tok = build_tokenizer(forget + retain, vocab_size=300)
    model = make_tiny_model("gpt_neox", hidden=32, layers=2, heads=4, vocab_size=len(tok))
    save_model(model, d / "base", tok, dtype=torch.bfloat16)
    (d / "forget.txt").write_text("\n".join(forget) + "\n")
    (d / "retain.txt").write_text("\n".join(retain) + "\n")
    return d


def argv(d: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(d / "base"), "--method", "grad_diff", "--forget-data", str(d / "forget.txt"),
            "--retain-data", str(d / "retain.txt"), "--outdir", str(out), "--device", "cpu", "--dtype", "fp32",
            "--batch-size", "8", "--eval-split", "0.2", "--max-length", "24", "--lr", "1e-3", *extra]


def test_input_weight_dtype_reads_the_headers(tmp_path):
    save_file({"a": torch.zeros(10, 10, dtype=torch.bfloat16), "b": torch.zeros(3, dtype=torch.float32),
               "i": torch.zeros(1000, dtype=torch.int64)}, str(tmp_path / "model.safetensors"))
    assert ul.input_weight_dtype(tmp_path) == "bf16"          # 100 bf16 elements outweigh 3 fp32 ones
    assert ul.resolve_save_dtype("input", tmp_path) is torch.bfloat16
    assert ul.resolve_save_dtype("fp32", tmp_path) is torch.float32
    assert ul.input_weight_dtype(tmp_path / "nothing") is None


@pytest.mark.parametrize("extra, expected", [((), "BF16"), (("--lora-r", "4"), "BF16"),
                                             (("--save-dtype", "fp32"), "F32")])
def test_bf16_in_bf16_out(bf16_model, tmp_path, extra, expected):
    out = tmp_path / "out"
    assert run_main(argv(bf16_model, out, *extra)) == 0
    assert stored_dtypes(bf16_model / "base") == {"BF16"}
    assert stored_dtypes(out) == {expected}
    config = json.loads((out / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == {"BF16": "bfloat16", "F32": "float32"}[expected]
    # trained (in fp32) and then cast: the saved weights moved away from the input's
    with safe_open(str(bf16_model / "base" / "model.safetensors"), "pt") as a, \
            safe_open(str(out / "model.safetensors"), "pt") as b:
        changed = [k for k in a.keys() if not torch.equal(a.get_tensor(k).float(), b.get_tensor(k).float())]
    assert changed


def test_fsdp_on_cpu_is_one_error_line(bf16_model, tmp_path, monkeypatch, capsys):
    """What `accelerate launch --config_file configs/accelerate_fsdp.yaml` sets, on a machine without CUDA."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert run_main(argv(bf16_model, tmp_path / "out")) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err[-1].startswith("error: FSDP needs CUDA GPUs and this run is on cpu: run unlearn.py as one process")
    assert not any("Traceback" in line for line in err)
    assert not (tmp_path / "out").exists()


def test_resume_after_sigterm_equals_the_uninterrupted_run(bf16_model, tmp_path, monkeypatch, capsys):
    """LoRA (dropout draws from torch's RNG) grad_diff, 2 epochs: SIGTERM during step 3 saves a checkpoint
    at step 3 and exits 143; --resume finishes; the saved weights are bit-identical to one run."""
    import os
    import signal

    handler_before = signal.getsignal(signal.SIGTERM)
    flags = ("--lora-r", "4", "--epochs", "2", "--save-dtype", "fp32", "--seed", "7")
    one = tmp_path / "one"
    assert run_main(argv(bf16_model, one, *flags)) == 0
    # never silent in a log: the before/after evaluations report their batches (tamper_attack.progress's lines)
    assert re.search(r"^per-sample NLL, \w+: done, \d+/\d+ batch", capsys.readouterr().err, re.M)
    steps = len(json.loads((one / "metrics.json").read_text())["train_loss"])
    assert steps >= 5

    real_loss = ul.Trainer.loss
    calls = {"n": 0}

    def loss_with_sigterm(self, fi, ri):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)    # the handler only flags it: step 3 completes, then stop
        return real_loss(self, fi, ri)

    monkeypatch.setattr(ul.Trainer, "loss", loss_with_sigterm)
    two = tmp_path / "two"
    assert run_main(argv(bf16_model, two, *flags, "--save-every", "2")) == 143
    err = capsys.readouterr().err
    assert "checkpoint: step 2 saved" in err and "checkpoint: step 3 saved" in err
    assert "checkpoint: SIGTERM at step 3: the training state is in" in err
    assert err.strip().splitlines()[-1] == "terminated (SIGTERM): nothing was saved"
    ckpt = ul.checkpoint_dir(two)
    assert json.loads((ckpt / "checkpoint.json").read_text())["step"] == 3 and not two.exists()
    monkeypatch.setattr(ul.Trainer, "loss", real_loss)
    assert signal.getsignal(signal.SIGTERM) == handler_before     # the run put the SIGTERM handler back
    # other flags than the checkpoint's: one error line
    assert run_main(argv(bf16_model, two, *flags, "--resume", "--lr", "2e-3")) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: --resume: the checkpoint in")
    assert run_main(argv(bf16_model, two, *flags, "--save-every", "2", "--resume")) == 0
    assert "resuming at step 4" in capsys.readouterr().err
    assert (two / "model.safetensors").read_bytes() == (one / "model.safetensors").read_bytes()
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert m1["train_loss"] == m2["train_loss"] and m1["forget_NLL"] == m2["forget_NLL"]
    assert not ckpt.exists()                         # removed once the model is saved
