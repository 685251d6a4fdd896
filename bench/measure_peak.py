# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "torch>=2.4",
#     "transformers>=5.0,<6",
#     "peft>=0.13",
# ]
# ///
"""Measured peak memory of one training or inference step, on the CPU, for the memory plan's checks.

The model is built from a config (random weights, no download), then two steps run: a forward,
backward and AdamW step (``--mode train``; with ``--lora-r`` peft adapters on the config's default
targets) or a no-grad forward with the log-softmax the evaluation takes (``--mode infer``).

How the peak is measured: Linux's resident-set high-water mark. After the imports and a warm-up
step on a throw-away model (kernels, thread pools and lazy initialisation are not the step's
memory), the script records the current RSS, resets the high-water mark (writing ``5`` to
``/proc/self/clear_refs``), builds the model and runs the steps, and reports ``VmHWM - RSS before``.
glibc hands big blocks back to the kernel only above its mmap threshold, which it raises on its
own after the first free; run with ``MALLOC_MMAP_THRESHOLD_=65536`` (the tests do) so that every
tensor above 64 KiB is its own mapping and the RSS follows the live tensors. What it cannot see:
memory the allocator keeps after a free below that size (a few MiB on these fixtures).

    MALLOC_MMAP_THRESHOLD_=65536 uv run --script bench/measure_peak.py --hidden 256 --layers 4 \\
        --intermediate 1024 --vocab 4096 --batch 4 --length 128 --mode train
prints one JSON object: {"peak_bytes": ..., "settings": {...}}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def neox_config(hidden, layers, intermediate, vocab, heads, max_pos):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, intermediate_size=intermediate,
                         max_position_embeddings=max_pos, tie_word_embeddings=False,
                         bos_token_id=0, eos_token_id=0)


def run_steps(config, mode: str, dtype, batch: int, length: int, gc: bool, lora_r: int, steps: int = 2):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    ids = torch.randint(0, config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))
    if mode == "infer":
        model.eval()
        with torch.no_grad():
            for _ in range(steps):
                logits = model(input_ids=ids).logits
                lp = torch.log_softmax(logits.float(), dim=-1)
                del logits, lp
        return
    if lora_r:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=lora_r, lora_dropout=0.05))
    if gc:
        if hasattr(model, "activation_checkpointing_enable"):    # transformers >= 5 (non-reentrant by default)
            model.activation_checkpointing_enable()
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora_r:
            model.enable_input_require_grads()
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, weight_decay=0.0)
    for _ in range(steps):
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        del out
        opt.step()
        opt.zero_grad(set_to_none=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--mode", choices=("train", "infer"), default="train")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--lora-r", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    # warm-up on a throw-away model of the same kind (kernels, lazy init, thread pools)
    run_steps(neox_config(32, 1, 64, 64, 4, 64), a.mode, dtype, 2, 16, a.gradient_checkpointing, a.lora_r, steps=1)
    import gc

    gc.collect()
    before = status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    config = neox_config(a.hidden, a.layers, a.intermediate, a.vocab, a.heads, max(a.length, 64))
    run_steps(config, a.mode, dtype, a.batch, a.length, a.gradient_checkpointing, a.lora_r)
    peak = status_kib("VmHWM")
    print(json.dumps({"peak_bytes": (peak - before) * 1024, "rss_before_bytes": before * 1024,
                      "settings": vars(a)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
