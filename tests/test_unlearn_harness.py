"""unlearn.py end to end on a tiny GPT-NeoX trained (in seconds) on a fictional technical domain
(forget) and everyday prose (retain): every method unlearns the forget domain selectively, runs are
reproducible, frozen weights stay frozen, the adversary respects its budget, two processes equal one,
and bad input fails with one line and leaves nothing behind."""
from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import ROOT, build_tokenizer, make_tiny_model, save_model

import unlearn as ul

N_LAYERS = 4


def make_corpus(n: int = 60, seed: int = 0) -> tuple[list[str], list[str]]:
    """Forget: templated facts about invented devices. Retain: templated everyday prose."""
    rng = random.Random(seed)
    adj = ["braided", "silver", "quartz", "spiral", "humming", "tuned", "glowing", "hollow"]
    dev = ["zephyr coil", "glimmer reactor", "flux lattice", "aether valve", "prism capacitor", "vortex spindle"]
    unit = ["kilovolts", "hertz", "joules", "lumens", "ohms"]
    verb = ["stores", "emits", "absorbs", "channels", "amplifies"]
    who = ["The old baker", "My neighbour", "A young teacher", "The mayor", "Her brother", "The farmer"]
    act = ["walked to", "painted", "cleaned", "visited", "sold", "described"]
    place = ["the market", "the river", "the garden", "the library", "the station", "the kitchen"]
    when = ["on Monday", "after lunch", "in spring", "before dawn", "every evening", "last winter"]
    forget, retain = set(), set()
    while len(forget) < n:
        forget.add(f"The {rng.choice(adj)} {rng.choice(dev)} {rng.choice(verb)} {rng.randint(2, 99)} "
                   f"{rng.choice(unit)} when the {rng.choice(dev)} is {rng.choice(adj)}.")
    while len(retain) < n:
        retain.add(f"{rng.choice(who)} {rng.choice(act)} {rng.choice(place)} {rng.choice(when)} "
                   f"with {rng.randint(2, 99)} friends.")
    return sorted(forget), sorted(retain)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-layer GPT-NeoX (hidden 64) that has learned both domains; the forget/retain files."""
    d = tmp_path_factory.mktemp("unlearn")
    forget, retain = make_corpus()
    tok = build_tokenizer(forget + retain, vocab_size=400)
    model = make_tiny_model("gpt_neox", hidden=64, layers=N_LAYERS, heads=4, vocab_size=len(tok)).train()
    enc = tok(forget + retain, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(120):
        idx = torch.randint(0, len(ids), (16,), generator=g)
        labels = ids[idx].masked_fill(mask[idx] == 0, -100)
        model(input_ids=ids[idx], attention_mask=mask[idx], labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    save_model(model.eval(), d / "base", tok)
    (d / "forget.txt").write_text("\n".join(forget) + "\n")
    (d / "retain.txt").write_text("\n".join(retain) + "\n")
    return d


def common(d: Path, out: Path, method: str) -> list[str]:
    return ["--model", str(d / "base"), "--method", method, "--forget-data", str(d / "forget.txt"),
            "--retain-data", str(d / "retain.txt"), "--outdir", str(out), "--device", "cpu",
            "--batch-size", "8", "--eval-split", "0.2", "--max-length", "48", "--lr", "1e-3"]


def run_main(argv: list[str]) -> int:
    """unlearn.main in this process, with accelerate's process-wide singletons reset first."""
    from accelerate.state import AcceleratorState, GradientState
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return ul.main(argv)


def metrics_of(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def hidden_states(path: Path, texts: list[str], layers: list[int]):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    return [out.hidden_states[l + 1] for l in layers], enc["attention_mask"]  # index 0 = embeddings


def relative_shift(base: Path, new: Path, texts: list[str], layers: list[int]) -> float:
    """mean over layers of mean_tok ‖h_new − h_base‖ / mean_tok ‖h_base‖."""
    h0, m = hidden_states(base, texts, layers)
    h1, _ = hidden_states(new, texts, layers)
    return sum(float(ul.masked_token_mean((a - b).norm(dim=-1), m) / ul.masked_token_mean(b.norm(dim=-1), m))
               for a, b in zip(h1, h0)) / len(layers)


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ul.LOSS_METHODS)
def test_loss_methods_raise_forget_nll_more_than_retain(trained, tmp_path, method):
    out = tmp_path / "out"
    assert run_main(common(trained, out, method)) == 0
    m = metrics_of(out)
    d_forget = m["forget_NLL"] - m["before"]["forget_NLL"]
    d_retain = m["retain_NLL"] - m["before"]["retain_NLL"]
    assert d_forget > 0.5, m
    assert d_forget > 3 * max(d_retain, 0.0), m
    assert m["gap"] == pytest.approx(m["forget_NLL"] - m["retain_NLL"])
    assert m["eval_curve"][0]["forget_NLL"] == m["before"]["forget_NLL"]
    report = yaml.safe_load((out / "run_report.yaml").read_text())
    assert list(report) == ["Model", "Dataset", "Training", "Hardware", "Results"]
    assert report["Training"]["method"] == method and report["Training"]["seed"] == 42
    assert report["Dataset"]["forget_size"] == 60 and report["Dataset"]["forget_eval"] == 12
    assert report["Results"]["forget_nll"] == m["forget_NLL"]
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


REPR_ARGS = {
    "rmu": ["--layer-id", "1,2", "--alpha", "100", "--epochs", "2"],
    "cb": ["--layer-id", "1,2", "--alpha", "100", "--epochs", "2", "--lr", "2e-3"],
    "lat": ["--layer-id", "1,2", "--epochs", "2", "--lr", "3e-3"],
    "cb_lat": ["--layer-id", "1,2", "--alpha", "100", "--epochs", "2", "--lr", "2e-3"],
}


@pytest.mark.parametrize("method", ul.REPR_METHODS)
def test_repr_methods_move_forget_representations_and_only_target_layers(trained, tmp_path, method):
    out = tmp_path / "out"
    assert run_main(common(trained, out, method) + REPR_ARGS[method]) == 0
    forget, retain = make_corpus()
    s_forget = relative_shift(trained / "base", out, forget[:20], [1, 2])
    s_retain = relative_shift(trained / "base", out, retain[:20], [1, 2])
    # lat is NLL-driven (only the adversary is latent), so its representation edit is less surgical
    assert s_forget > (2.0 if method == "lat" else 3.0) * s_retain, (s_forget, s_retain)
    # --trainable defaults to the target layers: every other parameter is bit-identical
    before, after = load_file(trained / "base" / "model.safetensors"), load_file(out / "model.safetensors")
    for name, w in before.items():
        in_target = name.startswith(("gpt_neox.layers.1.", "gpt_neox.layers.2."))
        if not in_target:
            assert torch.equal(w, after[name]), name
    assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith("gpt_neox.layers.2."))


def test_trainable_regex_freezes_everything_else(trained, tmp_path):
    out = tmp_path / "out"
    assert run_main(common(trained, out, "grad_diff") + ["--trainable", r"layers\.[03]\.mlp"]) == 0
    before, after = load_file(trained / "base" / "model.safetensors"), load_file(out / "model.safetensors")
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(n.startswith(("gpt_neox.layers.0.mlp", "gpt_neox.layers.3.mlp")) for n in changed)


def test_same_seed_same_weights_and_grad_accum_warns(trained, tmp_path, capsys):
    outs = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    extra = ["--grad-accum-steps", "2", "--batch-size", "4"]
    assert run_main(common(trained, outs[0], "npo") + extra) == 0
    assert "not equivalent to a larger batch" in capsys.readouterr().err
    assert run_main(common(trained, outs[1], "npo") + extra) == 0
    assert run_main(common(trained, outs[2], "npo") + extra + ["--seed", "7"]) == 0
    a, b, c = (load_file(o / "model.safetensors") for o in outs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_eval_split_is_held_out_and_metrics_are_its_nll(trained, tmp_path, monkeypatch):
    splits = []
    real_split = ul.split_eval
    monkeypatch.setattr(ul, "split_eval", lambda s, f, seed: splits.append(real_split(s, f, seed)) or splits[-1])
    out = tmp_path / "out"
    assert run_main(common(trained, out, "ga")) == 0
    (train_f, eval_f), (train_r, eval_r) = splits
    assert len(eval_f) == 12 and not set(train_f) & set(eval_f) and not set(train_r) & set(eval_r)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(out)
    # independent reference: the mean per-sample NLL of the held-out forget texts under the saved model
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    nlls = []
    with torch.no_grad():
        for t in eval_f:
            ids = torch.tensor([tok(t)["input_ids"]])
            nlls.append(model(input_ids=ids, labels=ids).loss.item())
    assert metrics_of(out)["forget_NLL"] == pytest.approx(sum(nlls) / len(nlls), rel=1e-4)


def test_training_batches_never_contain_eval_samples(trained, tmp_path, monkeypatch):
    """The schedule only indexes the training split: spy on the (forget, retain) indices it hands out."""
    splits = []
    real_split = ul.split_eval
    monkeypatch.setattr(ul, "split_eval", lambda s, f, seed: splits.append(real_split(s, f, seed)) or splits[-1])
    schedules = []
    real_sched = ul.make_schedule
    monkeypatch.setattr(ul, "make_schedule", lambda *a, **k: schedules.append(real_sched(*a, **k)) or schedules[-1])
    assert run_main(common(trained, tmp_path / "out", "ga_simple")) == 0
    n_f, n_r = len(splits[0][0]), len(splits[1][0])
    idx_f = {i for step in schedules[0] for fi, _ in step for i in fi}
    idx_r = {i for step in schedules[0] for _, ri in step for i in ri}
    assert idx_f == set(range(n_f)) and idx_r <= set(range(n_r))


def test_adversary_respects_linf_budget(trained, tmp_path, monkeypatch):
    seen = []
    real = ul.Runner.perturb

    def spy(self, deltas):
        if deltas is not None:
            seen.append({k: v.detach().clone() for k, v in deltas.items()})
        return real(self, deltas)
    monkeypatch.setattr(ul.Runner, "perturb", spy)
    eps = 0.05
    assert run_main(common(trained, tmp_path / "out", "lat") + ["--layer-id", "1,2", "--lat-eps", str(eps),
                                                                "--lat-steps", "3"]) == 0
    assert seen
    m = max(d.abs().max().item() for ds in seen for d in ds.values())
    assert 0 < m <= eps + 1e-7
    assert m == pytest.approx(eps)  # sign steps reach the budget


def test_trunk_forward_stops_at_top_target_layer_and_h_orig_is_frozen(trained):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(trained / "base").eval()
    layers = model.gpt_neox.layers
    calls = []
    for i in (2, 3):  # anything inside layers 2 and 3 running would call these
        layers[i].input_layernorm.register_forward_pre_hook(lambda m, a, i=i: calls.append(f"layer{i}"))
        layers[i].attention.register_forward_pre_hook(lambda m, a, i=i: calls.append(f"layer{i}.attn"))
    model.get_output_embeddings().register_forward_pre_hook(lambda m, a: calls.append("lm_head"))
    model.gpt_neox.final_layer_norm.register_forward_pre_hook(lambda m, a: calls.append("final_norm"))
    runner = ul.Runner(model, {0: layers[0], 1: layers[1]}, stop_before=layers[2])
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 1]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    with torch.no_grad():
        h0, h1 = runner(ids, mask, mode="trunk")
        assert calls == []  # nothing above layer 1, no final norm, no logits
        full = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert torch.allclose(h0, full[1], atol=1e-6) and torch.allclose(h1, full[2], atol=1e-6)
    # h_orig: functional_call with a frozen copy of (only) layer 1's parameters gives the original states
    frozen = {f"model.{n}": p.detach().clone() for n, p in model.named_parameters() if n.startswith("gpt_neox.layers.1.")}
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.startswith("gpt_neox.layers.1."):
                p.add_(0.5)
        moved = runner(ids, mask, mode="trunk")[1]
        orig = torch.func.functional_call(runner, frozen, args=(ids, mask), kwargs={"mode": "trunk"}, strict=False)[1]
    assert not torch.allclose(moved, full[2], atol=1e-3)
    assert torch.allclose(orig, full[2], atol=1e-6)


# ---------------------------------------------------------------------------------------------
def _bad_input_cases(d: Path, tmp: Path):
    (tmp / "empty.txt").write_text("\n  \n")
    (tmp / "one.txt").write_text("The hollow zephyr coil emits 3 ohms.\n")
    forget = (d / "forget.txt").read_text().splitlines()
    (tmp / "leaky.txt").write_text("\n".join((d / "retain.txt").read_text().splitlines()
                                             + [f.upper() for f in forget[:3]]) + "\n")
    from transformers import MptConfig
    MptConfig(d_model=32, n_heads=4, n_layers=2, vocab_size=400).save_pretrained(tmp / "mpt")
    return {
        "missing forget": (["--forget-data", str(tmp / "nope.txt")], "does not exist"),
        "empty retain": (["--retain-data", str(tmp / "empty.txt")], "is empty"),
        "overlap": (["--retain-data", str(tmp / "leaky.txt")], "3 forget sample(s) also appear in the retain"),
        "empty train split": (["--forget-data", str(tmp / "one.txt")], "leaves no forget samples to train on"),
        "layer out of range": (["--method", "rmu", "--layer-id", "2,9"], "--layer-id 9 is outside the model"),
        "layer duplicated": (["--method", "cb", "--layer-id", "1,1"], "more than once"),
        "layer unparsable": (["--method", "lat", "--layer-id", "one"], "not a comma-separated list"),
        "unsupported arch": (["--method", "rmu", "--trainable", "layers", "--model", str(tmp / "mpt")],
                             "not a supported architecture"),
        "bad regex": (["--trainable", "(("], "not a valid regular expression"),
    }


def test_bad_input_one_line_error_and_nothing_written(trained, tmp_path, capsys):
    for name, (extra, expect) in _bad_input_cases(trained, tmp_path).items():
        parent = tmp_path / f"outputs-{name.replace(' ', '_')}"
        out = parent / "unlearned_model"
        argv = common(trained, out, "ga") + extra
        assert run_main(argv) == 1, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0], (name, err)
        assert not parent.exists(), name


def test_non_finite_loss_stops_and_keeps_existing_outdir(trained, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "run_report.yaml").write_text("previous run")  # an earlier output: may be replaced, but is kept here
    monkeypatch.setattr(ul, "ga_loss", lambda f, r: (f - r) * float("nan"))
    assert run_main(common(trained, out, "ga")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: the ga loss became nan at step 1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in out.iterdir()] == ["run_report.yaml"]


def test_cli_errors_are_one_line_without_traceback(trained, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "o" / "m"
    p = subprocess.run([sys.executable, str(ROOT / "unlearn.py")] + common(trained, out, "ga")
                       + ["--forget-data", str(tmp_path / "missing.txt")], capture_output=True, text=True, env=env)
    assert p.returncode == 1 and p.stderr.strip().count("\n") == 0 and "Traceback" not in p.stderr
    assert p.stderr.startswith("error: forget data")
    p = subprocess.run([sys.executable, str(ROOT / "unlearn.py")] + common(trained, out, "forget_everything"),
                       capture_output=True, text=True, env=env)
    assert p.returncode != 0 and "invalid choice: 'forget_everything'" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "o").exists()


def test_hub_id_without_offline_flag_fails_fast_in_one_line(tmp_path):
    """The real CLI with HF_HUB_OFFLINE unset: no hub here (or, with network, no such repo), so one
    sentence and exit 1 -- not from_pretrained's "Retrying in 8s" warnings before it."""
    forget, retain = make_corpus(n=10)
    (tmp_path / "f.txt").write_text("\n".join(forget) + "\n")
    (tmp_path / "r.txt").write_text("\n".join(retain) + "\n")
    model = f"model-diffs-test/does-not-exist-{secrets.token_hex(6)}"
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"} | {"OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(ROOT / "unlearn.py"), "--model", model, "--method", "ga",
                        "--forget-data", str(tmp_path / "f.txt"), "--retain-data", str(tmp_path / "r.txt"),
                        "--outdir", str(tmp_path / "out" / "m")], capture_output=True, text=True, env=env)
    err = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 1 and len(err) == 1 and err[0].startswith("error: ") and model in err[0], p.stderr
    assert "not in the local cache" in err[0] or "nor a model on the Hugging Face hub" in err[0]
    assert "Retry" not in p.stderr and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(trained, tmp_path):
    """torchrun --nproc_per_node 2 (gloo, CPU) with --batch-size 2 == one process with --batch-size 4."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).parent / "torchrun"
    base = ["--model", str(trained / "base"), "--method", "npo", "--forget-data", str(trained / "forget.txt"),
            "--retain-data", str(trained / "retain.txt"), "--device", "cpu", "--eval-split", "0.2",
            "--max-length", "48", "--lr", "1e-3", "--max-samples", "40"]
    ddp = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 500),
                          str(ROOT / "unlearn.py")] + base + ["--outdir", str(tmp_path / "ddp"), "--batch-size", "2"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert run_main(base + ["--outdir", str(tmp_path / "one"), "--batch-size", "4"]) == 0
    a, b = load_file(tmp_path / "ddp" / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 2e-3
    changed = max((a[k] - load_file(trained / "base" / "model.safetensors")[k]).abs().max().item() for k in a)
    assert changed > 5e-3  # the tolerance is well below the size of the update
    ra = yaml.safe_load((tmp_path / "ddp" / "run_report.yaml").read_text())
    assert ra["Hardware"]["processes"] == 2 and ra["Training"]["global_batch_size"] == 4
    ma, mb = metrics_of(tmp_path / "ddp"), metrics_of(tmp_path / "one")
    assert ma["steps"] == mb["steps"] and ma["forget_NLL"] == pytest.approx(mb["forget_NLL"], rel=1e-3)


def test_lat_falls_back_to_input_embeddings_on_unknown_architecture(trained, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer, MptConfig
    tok = AutoTokenizer.from_pretrained(trained / "base")
    torch.manual_seed(0)
    mpt = AutoModelForCausalLM.from_config(MptConfig(d_model=32, n_heads=4, n_layers=2, vocab_size=len(tok)))
    save_model(mpt, tmp_path / "mpt", tok)
    out = tmp_path / "out"
    argv = common(trained, out, "lat") + ["--model", str(tmp_path / "mpt"), "--max-samples", "16"]
    assert run_main(argv) == 0
    err = capsys.readouterr().err
    assert "the adversary perturbs the input embeddings" in err
    assert "falling back" in " ".join(metrics_of(out)["warnings"])
    # --trainable layers cannot fall back (cb_lat, rmu and cb do: tests/test_unlearn_seeds.py)
    assert run_main(argv[:-2] + ["--method", "cb_lat", "--trainable", "layers", "--outdir", str(tmp_path / "no")]) == 1
    assert "not a supported architecture" in capsys.readouterr().err and not (tmp_path / "no").exists()


def test_gradient_checkpointing_changes_nothing_with_hooks_and_truncation(trained, tmp_path):
    """cb_lat uses every hook (δ, capture, stop) and the truncated forward: recomputation must not alter them."""
    outs = []
    for flag in ("--gradient-checkpointing", "--no-gradient-checkpointing"):
        outs.append(tmp_path / flag.strip("-"))
        argv = common(trained, outs[-1], "cb_lat") + ["--layer-id", "1,2", "--max-samples", "24", "--lat-steps", "2", flag]
        assert run_main(argv) == 0
    assert yaml.safe_load((outs[0] / "run_report.yaml").read_text())["Training"]["gradient_checkpointing"] is True
    a, b = (load_file(o / "model.safetensors") for o in outs)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert any(not torch.equal(a[k], load_file(trained / "base" / "model.safetensors")[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# Output faults: refused before training, or one line and nothing lost while saving
# ---------------------------------------------------------------------------------------------
def quick(d: Path, out: Path) -> list[str]:
    return common(d, out, "ga_simple") + ["--max-samples", "16"]


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` (hidden ones included) → its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def no_loading(monkeypatch):
    """Fails the test if the weights are loaded: the refusals must come before that (and training)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded although the output could be checked before")
    monkeypatch.setattr(ul, "load_model", refuse)


def one_error_line(capsys, after_progress: bool = False) -> str:
    """The one ``error:`` line on stderr (``after_progress``: the last line, after tqdm's bars)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    if after_progress:
        assert "Traceback" not in err and [ln for ln in lines if ln.startswith("error:")] == lines[-1:], lines[-3:]
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[-1]


def test_outdir_that_is_not_an_earlier_output_or_overlaps_an_input_is_refused(trained, tmp_path, capsys, no_loading):
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("four years of work")
    earlier = tmp_path / "earlier"  # an earlier output (it has run_report.yaml) holding a copy of the inputs
    earlier.mkdir()
    (earlier / "run_report.yaml").write_text("Model: {}\n")
    shutil.copytree(trained / "base", earlier / "model")
    (earlier / "forget.txt").write_text((trained / "forget.txt").read_text())
    (tmp_path / "a_file").write_text("not a folder")
    chained = tmp_path / "chained"  # an earlier output used as the input model
    shutil.copytree(trained / "base", chained)
    (chained / "run_report.yaml").write_text("Model: {}\n")
    cases = {
        "equal to an input that is an output": (quick(trained, chained) + ["--model", str(chained)],
                                                "is inside the input"),
        "unrelated folder": (quick(trained, thesis), "holds files that no earlier run of this tool wrote"),
        "equal to the model": (quick(trained, trained / "base"), "is inside the input"),
        "inside the model": (quick(trained, trained / "base" / "sub" / "m"), "is inside the input"),
        "contains the model": (quick(trained, earlier) + ["--model", str(earlier / "model")], "contains the input model"),
        "contains the data": (quick(trained, earlier) + ["--forget-data", str(earlier / "forget.txt")],
                              "contains the forget data"),
        "an existing file": (quick(trained, tmp_path / "a_file"), "exists and is not a folder"),
        "under a file": (quick(trained, tmp_path / "a_file" / "x" / "m"), "a_file is not a folder"),
        "cannot be created": (quick(trained, Path("/proc/model-diffs-test/m")), "cannot write --outdir"),
    }
    before = {p: snapshot(p) for p in (thesis, earlier, trained, chained)}
    for name, (argv, expect) in cases.items():
        assert run_main(argv) == 1, name
        assert expect in one_error_line(capsys), name
    assert {p: snapshot(p) for p in before} == before
    assert not (trained / "base" / "sub").exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "a_file", "chained", "earlier", "thesis"]


def test_read_only_outdir_and_full_disk_are_refused_before_loading(trained, tmp_path, capsys, monkeypatch, no_loading):
    out = tmp_path / "new" / "deeper" / "m"

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "new" / "deeper"))
    with monkeypatch.context() as m:
        m.setattr(ul.tempfile, "TemporaryFile", read_only)  # root ignores chmod 0555, so simulate it
        assert run_main(quick(trained, out)) == 1
    assert "cannot write --outdir" in (line := one_error_line(capsys)) and "Permission denied" in line
    assert not (tmp_path / "new").exists()  # the folders made for the probe are gone again
    usage = ul.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(ul.shutil, "disk_usage", lambda p: usage._replace(free=50_000))
    assert run_main(quick(trained, out)) == 1
    line = one_error_line(capsys)
    assert "not enough free disk space for the model" in line and "0.0 MiB are free" in line
    assert not (tmp_path / "new").exists()


def test_empty_folder_and_earlier_output_are_replaced_with_ordinary_modes(trained, tmp_path):
    out = tmp_path / "o" / "m"
    out.mkdir(parents=True)  # empty: allowed
    old_umask = os.umask(0o022)
    try:
        assert run_main(quick(trained, out)) == 0
        first = snapshot(out)
        assert run_main(quick(trained, out) + ["--seed", "7"]) == 0  # an earlier output: replaced
    finally:
        os.umask(old_umask)
    assert snapshot(out)["model.safetensors"] != first["model.safetensors"]
    assert (out.stat().st_mode & 0o777) == 0o755
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {p.name: 0o644 for p in out.iterdir()}
    assert [p.name for p in out.parent.iterdir()] == ["m"]  # no temp or .old folders left


def _partial_then(exc):
    """A stand-in for safetensors' save_file that writes half a file, then fails like a full disk."""
    def save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)
        raise exc
    return save_file


@pytest.mark.parametrize("failure", ["enospc_safetensors", "enospc_oserror", "ctrl_c_saving", "ctrl_c_training"])
def test_full_disk_or_ctrl_c_is_one_line_and_keeps_the_earlier_output(trained, tmp_path, capsys, monkeypatch, failure):
    import errno

    import transformers.modeling_utils as mu
    from safetensors import SafetensorError
    earlier = tmp_path / "runs" / "m"
    assert run_main(quick(trained, earlier)) == 0
    capsys.readouterr()
    kept = snapshot(tmp_path)
    if failure == "enospc_safetensors":  # what safetensors 0.8 really raises (seen on a full tmpfs)
        monkeypatch.setattr(mu, "safe_save_file", _partial_then(SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)")))
    elif failure == "enospc_oserror":
        monkeypatch.setattr(mu, "safe_save_file", _partial_then(OSError(errno.ENOSPC, "No space left on device")))
    elif failure == "ctrl_c_saving":
        monkeypatch.setattr(mu, "safe_save_file", _partial_then(KeyboardInterrupt()))
    else:
        monkeypatch.setattr(ul, "ga_simple_loss", lambda nll: (_ for _ in ()).throw(KeyboardInterrupt()))
    for out in (earlier, tmp_path / "fresh" / "deep" / "m"):  # replacing an earlier output; a new folder
        rc = run_main(quick(trained, out) + ["--seed", "3"])
        if failure.startswith("enospc"):
            line = one_error_line(capsys, after_progress=True)
            assert rc == 1 and "cannot save the model to" in line and "No space left on device" in line, line
        else:
            err = capsys.readouterr().err
            assert rc == 130 and "Traceback" not in err and "error:" not in err
            assert err.splitlines()[-1] == "interrupted (Ctrl-C): nothing was saved"
        assert snapshot(tmp_path) == kept  # earlier output byte-identical, no half folder, no temp files
        assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


def test_folders_left_by_a_killed_run_are_named(trained, tmp_path, capsys):
    out = tmp_path / "m"
    (tmp_path / ".m.tmp-abc123").mkdir()
    assert run_main(quick(trained, out)) == 0
    err = capsys.readouterr().err
    assert f"{tmp_path / '.m.tmp-abc123'} was left by an interrupted run" in err
    assert any("left by an interrupted run" in w for w in metrics_of(out)["warnings"])


def test_progress_inside_a_step_and_around_training_in_a_log(trained, tmp_path, capsys, monkeypatch):
    """Non-TTY stderr (a log; the 60 s period set to 0 here): the evaluations before and after
    training show progress, and a step with several micro-batches and LAT adversary steps says
    where it is inside the step."""
    monkeypatch.setattr(ul, "progress", lambda *a, **k: ul.LineProgress(*a, every=0, **k))
    capsys.readouterr()
    assert run_main(common(trained, tmp_path / "out", "lat") + [
        "--grad-accum-steps", "2", "--batch-size", "4", "--lat-steps", "2", "--layer-id", "1",
        "--max-samples", "8"]) == 0
    err = capsys.readouterr().err.splitlines()
    for split in ("forget", "retain"):  # before and after training
        assert sum(line.startswith(f"per-sample NLL, {split}_eval: started of ") for line in err) == 2, split
    inside = [line.split(" s, ")[-1] for line in err if line.startswith("unlearn lat: 0/1 step")]
    assert inside == ["micro-batch 1/2", "adversary 1/2", "adversary 2/2",
                      "micro-batch 2/2", "adversary 1/2", "adversary 2/2"]
