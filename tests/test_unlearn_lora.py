"""unlearn.py --lora-r: peft LoRA adapters instead of full-parameter training.

Checked against independent references: the base weights (bit-identical outside the adapters while
training), W + B·A·(alpha/r) computed here from the saved adapter (the merged weights), plain
transformers hidden states of the base model (h_orig with the adapters disabled), the first-step
loss of a full-parameter run (every method starts from the same model), PeftModel.from_pretrained
(the saved adapter) and AutoModelForCausalLM.from_pretrained (the merged model)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import ROOT, make_tiny_model
from test_unlearn_harness import N_LAYERS, common, make_corpus, metrics_of, run_main, trained  # noqa: F401

import unlearn as ul

QKV = "attention.query_key_value"


def lora_args(r=4, *extra) -> list[str]:
    return ["--lora-r", str(r), *extra]


def adapter_deltas(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """ΔW = B·A·(alpha/r) of every adapted matrix, in float64, from adapter_model.safetensors and
    adapter_config.json alone (keys: base_model.model.<module>.lora_{A,B}.weight)."""
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    scale = cfg["lora_alpha"] / cfg["r"]
    sd = load_file(adapter_dir / "adapter_model.safetensors")
    out = {}
    for key, a in sd.items():
        if key.endswith(".lora_A.weight"):
            module = key[len("base_model.model."):-len(".lora_A.weight")]
            b = sd[key.replace(".lora_A.", ".lora_B.")]
            out[f"{module}.weight"] = scale * (b.double() @ a.double())
    return out


def hidden_states(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states


# ---------------------------------------------------------------------------------------------
def test_lora_trains_only_adapters_and_merges_into_base_plus_BA(trained, tmp_path, monkeypatch):  # noqa: F811
    from transformers import AutoModelForCausalLM
    base = load_file(trained / "base" / "model.safetensors")
    base_params = dict(AutoModelForCausalLM.from_pretrained(trained / "base").named_parameters())
    seen = {}
    real_merge = ul.merge_lora

    def merge_spy(peft_model, adapter_dir):
        # after the last optimizer step, before merging: every non-adapter weight is still the base's
        for name, p in peft_model.base_model.model.named_parameters():
            if ".lora_" not in name:
                seen[name.replace(".base_layer.", ".")] = p.detach().clone()
            elif ".lora_B." in name:
                seen.setdefault("_lora_B_norms", []).append(float(p.detach().norm()))
        return real_merge(peft_model, adapter_dir)

    monkeypatch.setattr(ul, "merge_lora", merge_spy)
    out = tmp_path / "out"
    argv = common(trained, out, "cb_lat") + ["--layer-id", "1,2", "--alpha", "100", "--lr", "1e-2"]
    assert run_main(argv + lora_args(4, "--lora-alpha", "8", "--save-adapter")) == 0

    assert set(base_params) == {k for k in seen if not k.startswith("_")}
    assert all(torch.equal(base_params[k], seen[k]) for k in base_params)  # bit-identical inside training
    assert len(seen["_lora_B_norms"]) == 3 and min(seen["_lora_B_norms"]) > 0  # layers 0-2 adapted and trained

    merged = load_file(out / "model.safetensors")
    deltas = adapter_deltas(out / "adapter")
    # default --lora-layers: 0 … highest --layer-id; default target: peft's query_key_value for GPT-NeoX
    assert sorted(deltas) == [f"gpt_neox.layers.{i}.{QKV}.weight" for i in range(3)]
    assert set(merged) == set(base)  # an ordinary checkpoint: no lora_A/lora_B/base_layer names
    for name, w in base.items():
        if name in deltas:
            assert torch.allclose(merged[name].double(), w.double() + deltas[name], atol=1e-6, rtol=0), name
            assert (merged[name] - w).abs().max() > 1e-4, name
            assert torch.linalg.matrix_rank(deltas[name]) <= 4
        else:
            assert torch.equal(merged[name], w), name

    report = yaml.safe_load((out / "run_report.yaml").read_text())
    lora = report["Training"]["lora"]
    assert report["Training"]["trainable"] == "lora"
    assert (lora["r"], lora["alpha"], lora["scaling"], lora["dropout"]) == (4, 8.0, 2.0, 0.05)
    assert (lora["target_modules"], lora["layers"], lora["adapted_matrices"]) == ("query_key_value", "0-2", 3)
    adapter_sd = load_file(out / "adapter" / "adapter_model.safetensors")
    assert lora["trainable_parameters"] == sum(t.numel() for t in adapter_sd.values()) == 3 * 4 * (64 + 3 * 64)
    assert report["Model"]["parameters"] == sum(t.numel() for t in base.values())


def test_merged_model_loads_plainly_and_matches_the_saved_adapter(trained, tmp_path):  # noqa: F811
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    out = tmp_path / "out"
    argv = common(trained, out, "npo") + ["--max-samples", "24", "--lr", "1e-2"]
    assert run_main(argv + lora_args(8, "--save-adapter", "--lora-target-modules", "query_key_value,dense_4h_to_h",
                                     "--lora-layers", "1,3")) == 0
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(merged).__name__ == "GPTNeoXForCausalLM"
    assert not any("lora" in n for n, _ in merged.named_parameters())
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(trained / "base"), out / "adapter").eval()
    base = AutoModelForCausalLM.from_pretrained(trained / "base").eval()
    tok = AutoTokenizer.from_pretrained(out)
    enc = tok(make_corpus()[0][:4], padding=True, return_tensors="pt")
    with torch.no_grad():
        a = merged(**enc).logits
        b = adapted(**enc).logits
        c = base(**enc).logits
    m = enc["attention_mask"].bool()
    assert torch.allclose(a[m], b[m], atol=1e-4) and (a[m] - c[m]).abs().max() > 1e-3
    changed = {k for k, v in load_file(out / "model.safetensors").items()
               if not torch.equal(v, load_file(trained / "base" / "model.safetensors")[k])}
    assert changed == {f"gpt_neox.layers.{i}.{m}.weight" for i in (1, 3)
                       for m in (QKV, "mlp.dense_4h_to_h")}
    assert oct((out / "adapter").stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_h_orig_is_the_base_models_hidden_states_with_adapters_disabled(trained, tmp_path, monkeypatch):  # noqa: F811
    """During a LoRA cb run (adapters already trained after step 1) h_orig equals the hidden states
    of a plain transformers forward of the base model; no frozen copy is made."""
    from transformers import AutoModelForCausalLM
    calls = []
    real = ul.Trainer.h_orig

    def spy(self, b):
        assert self.frozen is None and self.peft is not None
        h = real(self, b)
        calls.append((b.ids.clone(), b.mask.clone(), [x.clone() for x in h]))
        return h

    monkeypatch.setattr(ul.Trainer, "h_orig", spy)
    out = tmp_path / "out"
    argv = common(trained, out, "cb") + ["--layer-id", "1,2", "--lr", "1e-2", "--max-samples", "32"]
    assert run_main(argv + lora_args(4)) == 0
    assert len(calls) >= 3
    base = AutoModelForCausalLM.from_pretrained(trained / "base").eval()
    new = AutoModelForCausalLM.from_pretrained(out).eval()
    for ids, mask, h in calls:
        ref = hidden_states(base, ids, mask)
        for layer, x in zip((1, 2), h):
            assert torch.allclose(x, ref[layer + 1], atol=1e-5, rtol=0)  # hidden_states[0] = embeddings
    ids, mask, _ = calls[-1]
    assert (hidden_states(new, ids, mask)[3] - hidden_states(base, ids, mask)[3]).abs().max() > 1e-3


def test_adapters_off_and_truncated_forward_with_a_peft_model():
    """Unit check of the pieces: with a non-zero adapter, the trunk forward still stops above the top
    target layer, adapters_off gives exactly the base model's states, adapters on give base + BA."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    model = make_tiny_model("gpt_neox", hidden=32, layers=4, heads=4, vocab_size=300)
    base = AutoModelForCausalLM.from_config(model.config)
    base.load_state_dict(model.state_dict())
    base.eval()
    lora = ul.LoraSettings(r=2, alpha=4.0, dropout=0.0, target_modules=["query_key_value"], layers=[0, 1],
                           layers_pattern="layers", save_adapter=False)
    peft_model = get_peft_model(model, lora.peft_config())
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_()
    layers = model.gpt_neox.layers
    calls = []
    for i in (2, 3):  # anything inside layers 2 and 3 running would call these
        layers[i].input_layernorm.register_forward_pre_hook(lambda m, a, i=i: calls.append(i))
        layers[i].attention.register_forward_pre_hook(lambda m, a, i=i: calls.append(i))
    model.get_output_embeddings().register_forward_pre_hook(lambda m, a: calls.append("lm_head"))
    runner = ul.Runner(model, {0: layers[0], 1: layers[1]}, stop_before=layers[2])
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 1]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    ref = hidden_states(base, ids, mask)
    with torch.no_grad():
        with peft_model.disable_adapter():
            off = runner(ids, mask, mode="trunk")
        on = runner(ids, mask, mode="trunk")
    assert calls == []
    assert all(torch.equal(x, ref[i + 1]) for i, x in enumerate(off))
    assert (on[0] - ref[1]).abs().max() > 1e-2
    # independent: the base model with W + B·A·alpha/r written into layer 0's query_key_value
    with torch.no_grad():
        a = model.gpt_neox.layers[0].attention.query_key_value.lora_A["default"].weight
        b = model.gpt_neox.layers[0].attention.query_key_value.lora_B["default"].weight
        base.gpt_neox.layers[0].attention.query_key_value.weight += 2.0 * b @ a
    assert torch.allclose(on[0], hidden_states(base, ids, mask)[1], atol=1e-5)
    assert all(p.requires_grad == (".lora_" in n) for n, p in model.named_parameters())  # restored after off


@pytest.mark.parametrize("method", [m for m in ul.METHODS if not ul.METHOD_TABLE[m].full_params])  # others refuse LoRA
def test_every_method_with_lora_starts_where_full_training_does(trained, tmp_path, method):  # noqa: F811
    """Adapters start at B = 0 (and dropout 0 here), so the first loss of a LoRA run equals the first
    loss of the full-parameter run: log π_ref (dpo/npo), h_orig and the adversary all see the base
    model. The run then changes only the adapted matrices."""
    argv = common(trained, tmp_path / "full", method) + ["--layer-id", "1,2", "--max-samples", "16", "--lat-steps", "2"]
    assert run_main(argv) == 0
    lora_out = tmp_path / "lora"
    argv[argv.index("--outdir") + 1] = str(lora_out)
    assert run_main(argv + lora_args(4, "--lora-dropout", "0", "--lr", "1e-2")) == 0
    full, lora = metrics_of(tmp_path / "full"), metrics_of(lora_out)
    assert lora["train_loss"][0] == pytest.approx(full["train_loss"][0], rel=1e-5, abs=1e-6)
    assert lora["before"] == full["before"]
    base = load_file(trained / "base" / "model.safetensors")
    after = load_file(lora_out / "model.safetensors")
    changed = {k for k in base if not torch.equal(base[k], after[k])}
    top = 2 if ul.METHOD_TABLE[method].uses_layers else N_LAYERS - 1
    assert changed == {f"gpt_neox.layers.{i}.{QKV}.weight" for i in range(top + 1)}, changed


def test_lora_run_is_reproducible_and_checkpointing_changes_nothing(trained, tmp_path):  # noqa: F811
    outs = []
    for i, flag in enumerate(("--gradient-checkpointing", "--no-gradient-checkpointing", "--no-gradient-checkpointing")):
        outs.append(tmp_path / f"o{i}")
        argv = common(trained, outs[-1], "cb_lat") + ["--layer-id", "1,2", "--max-samples", "16", "--lat-steps", "2"]
        assert run_main(argv + lora_args(4, "--lr", "1e-2", flag)) == 0
    a, b, c = ((o / "model.safetensors").read_bytes() for o in outs)
    assert b == c  # same seed: identical bytes (dropout included)
    ta, tb = load_file(outs[0] / "model.safetensors"), load_file(outs[1] / "model.safetensors")
    assert all(torch.allclose(ta[k], tb[k], atol=1e-6) for k in ta)


def test_bad_lora_combinations_are_refused_in_one_line(trained, tmp_path, capsys):  # noqa: F811
    cases = {
        "trainable": (["--lora-r", "4", "--trainable", "all"], "--trainable and --lora-r exclude each other"),
        "alpha without r": (["--lora-alpha", "8"], "--lora-alpha needs --lora-r R > 0"),
        "adapter without r": (["--save-adapter"], "--save-adapter needs --lora-r R > 0"),
        "negative r": (["--lora-r", "-1"], "--lora-r must be >= 0"),
        "dropout": (["--lora-r", "4", "--lora-dropout", "1.5"], "--lora-dropout must be in [0, 1)"),
        "alpha": (["--lora-r", "4", "--lora-alpha", "0"], "--lora-alpha must be > 0"),
        "module": (["--lora-r", "4", "--lora-target-modules", "q_proj"], "'q_proj' matches no module of GPTNeoX"),
        "layers range": (["--lora-r", "4", "--lora-layers", "2-9"], "--lora-layers 9 is outside the model"),
        "layers syntax": (["--lora-r", "4", "--lora-layers", "a-b"], "is not a list of layer numbers"),
        "above top": (["--lora-r", "4", "--method", "rmu", "--layer-id", "1", "--lora-layers", "0-2"],
                      "--lora-layers 2 is above the top --layer-id 1"),
        "norm module": (["--lora-r", "4", "--lora-target-modules", "input_layernorm"], "'input_layernorm' is a LayerNorm; LoRA adapts"),
    }
    for name, (extra, expect) in cases.items():
        parent = tmp_path / name.replace(" ", "_")
        assert run_main(common(trained, parent / "m", "ga") + extra) == 1, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0], (name, err)
        assert not parent.exists(), name


def test_run_unlearn_sh_passes_lora_flags_only_when_set(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORA_")} | {"UV_RUN": "echo"}
    plain = subprocess.run(["bash", str(ROOT / "run_unlearn.sh"), "cb_lat"], env=env, capture_output=True, text=True)
    assert plain.returncode == 0 and "--lora" not in plain.stdout
    env |= {"LORA_R": "16", "LORA_ALPHA": "32", "LORA_DROPOUT": "0.1", "LORA_TARGET_MODULES": "query_key_value",
            "LORA_LAYERS": "0-30"}
    lora = subprocess.run(["bash", str(ROOT / "run_unlearn.sh"), "cb_lat"], env=env, capture_output=True, text=True)
    assert lora.returncode == 0
    assert ("--lora-r 16 --lora-alpha 32 --lora-dropout 0.1 --lora-target-modules query_key_value "
            "--lora-layers 0-30") in lora.stdout


def test_layer_list_parsing():
    assert ul.parse_layer_list("0-4", "--lora-layers") == [0, 1, 2, 3, 4]
    assert ul.parse_layer_list(" 5, 0-1,1 ", "--lora-layers") == [0, 1, 5]
    assert ul.layer_range_text([0, 1, 2, 4, 6, 7]) == "0-2,4,6-7" and ul.layer_range_text(None) == "all"
    for bad in ("", "3-1", "-1", "x", "1,,2"):
        with pytest.raises(ul.UsageError):
            ul.parse_layer_list(bad, "--lora-layers")
