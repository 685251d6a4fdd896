"""FSDP on the CPU: torch's FSDP2 (``fully_shard``, gloo) with 2 processes trains as one process does.

accelerate cannot launch FSDP without CUDA (``accelerate launch --cpu`` drops the FSDP config;
unlearn.py refuses in one line, tests/test_unlearn_scale.py), so this checks the sharded training
itself, the part FSDP changes: unlearn.py's own loss (``ga_loss`` of ``mean_nll`` over
``sequence_logprobs``) on a tiny GPT-NeoX, every decoder layer and then the root sharded as
configs/accelerate_fsdp.yaml shards them, three SGD steps with half of the global batch on each
rank, the full state dict gathered on rank 0, against one process with the whole batch.
``mean_nll`` averages per sample, so the mean of the two ranks' losses is the whole batch's loss.
SGD, not AdamW: Adam divides each gradient by its own scale, so the rounding-level differences of
near-zero gradients (a different summation order) become whole learning-rate steps; SGD keeps the
comparison at rounding level.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT, make_tiny_model

SCRIPT = r'''
import os, socket, sys
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import save_file

sys.path[:0] = [{root!r}, {tests!r}]
import unlearn as ul
from conftest import make_tiny_model

STEPS, GLOBAL = 3, 4


def data():
    g = torch.Generator().manual_seed(0)
    forget, retain = torch.randint(5, 250, (GLOBAL, 24), generator=g), torch.randint(5, 250, (GLOBAL, 24), generator=g)
    fmask, rmask = torch.ones_like(forget), torch.ones_like(retain)
    fmask[1, 17:] = 0   # ragged lines: right padding
    rmask[2, 9:] = 0
    return forget, fmask, retain, rmask


def nll(model, ids, mask):
    return ul.mean_nll(*ul.sequence_logprobs(model(input_ids=ids, attention_mask=mask).logits, ids, mask))


def train(rank, world, port, out):
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{{port}}", rank=rank, world_size=world)
    model = make_tiny_model("gpt_neox", seed=0, layers=2)   # the same initial weights in every process
    if world > 1:
        from torch.distributed.fsdp import fully_shard
        for layer in model.gpt_neox.layers:
            fully_shard(layer)
        fully_shard(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)   # linear in the gradients: equal to float rounding
    forget, fmask, retain, rmask = data()
    part = slice(rank * GLOBAL // world, (rank + 1) * GLOBAL // world)
    for _ in range(STEPS):
        loss = ul.ga_loss(nll(model, forget[part], fmask[part]), nll(model, retain[part], rmask[part]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if world > 1:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        dist.barrier()
    else:
        state = model.state_dict()
    if rank == 0:
        save_file({{k: v.detach().contiguous() for k, v in state.items()}}, out)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    out = sys.argv[1]
    train(0, 1, 0, out + "/one.safetensors")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(train, args=(2, port, out + "/fsdp.safetensors"), nprocs=2, join=True)
'''


@pytest.mark.slow
def test_fsdp2_two_processes_on_cpu_equal_one_process(tmp_path):
    from safetensors.torch import load_file

    script = tmp_path / "fsdp_check.py"
    script.write_text(SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests")))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, fsdp = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "fsdp.safetensors")
    assert one.keys() == fsdp.keys() and len(one) > 10
    start = make_tiny_model("gpt_neox", seed=0, layers=2).state_dict()
    moved = 0
    for name, w in one.items():
        assert fsdp[name].shape == w.shape and fsdp[name].dtype == w.dtype, name
        scale = float(w.abs().max()) or 1.0
        assert float((fsdp[name] - w).abs().max()) <= 1e-5 * scale, (name, float((fsdp[name] - w).abs().max()), scale)
        moved += bool(float((w - start[name]).abs().max()) > 1e-4)
    assert moved >= len(one) // 2   # the steps trained: most tensors moved (3 SGD steps at lr 0.5)
