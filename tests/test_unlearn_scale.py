"""unlearn.py at scale: the saved model keeps the input's dtype (full and merged LoRA) unless
--save-dtype says otherwise. The dtypes are read back from the safetensors files themselves."""
from __future__ import annotations

import json
import shutil
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
