"""report.py on fixture studies built here the way the tools write their outputs: the signature
numbers equal the CSV cells (or an aggregation of them written out again in the test with numpy),
a partial study and a study with corrupt files still give a page that says what is missing or
unreadable, the per-layer join pairs decoder layer k with activation row k+1, the page is valid
HTML (html5lib's strict parser) with no external reference, and a real headless Chromium renders
every figure without a console error (screenshot under the test's tmp folder)."""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

import report as rp

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")   # the distribution's package
REF, FILT, GA = "m-ref", "m-filt", "m-ga"
COMPONENTS = ["qkv", "attn_out", "mlp_in", "mlp_out"]
N_LAYERS = 4


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """report.py never touches torch: conftest's fixture of this name (which imports torch) is not
    needed here."""
    yield


# ----------------------------------------------------------------------------------------------
# The fixture study
# ----------------------------------------------------------------------------------------------
def png(rgb=(200, 30, 30), size=6) -> bytes:
    """A tiny valid PNG (no matplotlib needed)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + bytes(rgb) * size for _ in range(size))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def write_csv(path: Path, columns: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = lambda v: "" if v is None else (repr(v) if isinstance(v, float) else str(v))  # noqa: E731
    path.write_text(",".join(columns) + "\n" + "".join(",".join(fmt(v) for v in r) + "\n" for r in rows))


def dW_pattern(model: str, layer: int, comp: str) -> float:
    """‖ΔW‖_F of the fixture: the filtered twin moved everywhere; the GA model only in layer 2."""
    if model == FILT:
        return 1.0 + 0.1 * layer
    return {("qkv", 2): 3.0, ("mlp_in", 2): 1.0}.get((comp, layer), 0.0)


def W_fro(layer: int, comp: str) -> float:
    return 10.0 + layer + COMPONENTS.index(comp)


def make_pair(out: Path, model: str, with_geometry: bool = True) -> Path:
    d = out / f"{REF}_vs_{model}"
    cols = ["name", "layer", "group", "component", "shape0", "shape1", "dW_fro", "dW_stable_rank", "W_stable_rank",
            "dW_spec", "W_fro", "W_spec", "rel_change", "dW_iters", "W_iters", "rel_dW_fro", "cos_sim"]
    rows = [["gpt_neox.embed_in.weight", -1, "other", "embed", 64, 32, 50.0, 1.0, 5.0, 50.0, 20.0, 5.0, 2.5, 1, 1,
             2.5, 0.5]]
    for k in range(N_LAYERS):
        for comp in COMPONENTS:
            dw, w = dW_pattern(model, k, comp), W_fro(k, comp)
            rows.append([f"gpt_neox.layers.{k}.{comp}.weight", k, "attn" if comp in ("qkv", "attn_out") else "mlp",
                         comp, 32, 32, dw, 1.5, 8.0, dw / 2, w, w / 3, dw / w, 3, 3, dw / w, 1 - dw / w / 10])
    write_csv(d / "param_stats" / "per_matrix.csv", cols, rows)
    act_rows = []
    for l_ in range(N_LAYERS + 1):
        for split in ("forget", "retain"):
            spike = model == GA and l_ == 3   # the output of decoder layer 2
            dh = (5.0 if split == "forget" else 0.5) if spike else 0.1 * (l_ + 1)
            act_rows.append([l_, split, 100.0, 10.0, 99.0, 9.5, dh * 8, dh])
    write_csv(d / "activation_stats" / "activation_stats.csv",
              ["layer", "split", "model_a_norm_L1", "model_a_norm_L2", "model_b_norm_L1", "model_b_norm_L2",
               "mean_dh_L1", "mean_dh_L2"], act_rows)
    if not with_geometry:
        return d
    wrows = []
    for k in range(N_LAYERS):
        for comp in COMPONENTS:
            changed = dW_pattern(model, k, comp) > 0
            rank = (2 if comp == "qkv" else 4) if model == GA else 10 + k
            share = (0.6 if comp == "qkv" else 0.3) if model == GA else 0.2 + 0.01 * k
            wrows.append([k, f"gpt_neox.layers.{k}.{comp}.weight", comp, 32, 32,
                          rank if changed else 0, 0.9 if changed else 0.0, 1.5, 2,
                          0.5, 0.625, 0.5, 0.625, share if changed else None, 0.2, 0.1, 0.2,
                          1 if changed else 0, 0.3])
    write_csv(d / "weight_geometry" / "weight_geometry.csv",
              ["layer", "name", "component", "rows", "cols", "dW_eff_rank_99", "dW_top10_energy", "dW_erank",
               "dW_elbow", "left_overlap_20", "left_overlap_20_random", "right_overlap_20", "right_overlap_20_random",
               "dW_in_colspace_20", "dW_in_colspace_20_random", "dW_in_rowspace_20", "dW_in_rowspace_20_random",
               "intruders", "intruder_max_cos_min"], wrows)
    grows = []
    for l_ in range(N_LAYERS + 1):
        spike = model == GA and l_ == 3
        sel_mlp = 4.0 if spike else (1.1 if model == FILT and l_ > 0 else None)
        sel_qkv = 2.5 if spike else (1.0 if model == FILT and l_ > 0 else None)
        grows.append([l_, 0.9, 0.01, 0.6 if spike else 0.88, 0.02, 0.99, 0.98, 0.5 if spike else 0.95, 0.99,
                      sel_mlp, sel_qkv])
    write_csv(d / "activation_geometry" / "activation_geometry.csv",
              ["layer", "probe_auc_a", "probe_auc_a_std", "probe_auc_b", "probe_auc_b_std", "centroid_cos_a",
               "centroid_cos_b", "cka_forget", "cka_retain", "dW_read_selectivity_mlp_in",
               "dW_read_selectivity_qkv"], grows)
    return d


EVAL = {REF: dict(forget_nll=0.677, retain_nll=0.798, mia_loss=0.71, mia_zlib=0.69, mia_mink=0.7, mia_minkpp=0.73,
                  mcq_forget_acc=0.9, mcq_retain_acc=0.85),
        FILT: dict(forget_nll=10.749, retain_nll=0.768, mia_loss=0.5, mia_zlib=0.52, mia_mink=0.49, mia_minkpp=0.51,
                   mcq_forget_acc=0.26, mcq_retain_acc=0.84),
        GA: dict(forget_nll=2.074, retain_nll=0.813, mia_loss=0.55, mia_zlib=0.56, mia_mink=0.54, mia_minkpp=0.57,
                 mcq_forget_acc=0.31, mcq_retain_acc=0.83)}
STEPS = {REF: 0, FILT: None, GA: 20}


def make_study(root: Path, parts=("params", "acts", "wgeo", "ageo", "eval", "tamper", "lens", "ablation")) -> tuple:
    out, plots = root / "outputs", root / "plots"
    out.mkdir(parents=True)
    plots.mkdir(parents=True)
    for m in (FILT, GA):
        if "params" in parts:
            make_pair(out, m, with_geometry="wgeo" in parts)
            pdir = plots / f"{REF}_vs_{m}" / "param_plots"
            pdir.mkdir(parents=True)
            (pdir / f"layer_locality_{REF}_vs_{m}.png").write_bytes(png())
    if "eval" in parts:
        cols = ["model", "forget_nll", "forget_nll_ci95_low", "forget_nll_ci95_high", "retain_nll",
                "retain_nll_ci95_low", "retain_nll_ci95_high", "mia_loss", "mia_zlib", "mia_mink", "mia_minkpp",
                "mcq_forget_acc", "mcq_forget_acc_norm", "mcq_retain_acc", "mcq_retain_acc_norm", "few_shot_0"]
        rows = []
        for m, e in EVAL.items():
            rows.append([m, e["forget_nll"], e["forget_nll"] - 0.1, e["forget_nll"] + 0.1, e["retain_nll"],
                         e["retain_nll"] - 0.1, e["retain_nll"] + 0.1, e["mia_loss"], e["mia_zlib"], e["mia_mink"],
                         e["mia_minkpp"], e["mcq_forget_acc"], e["mcq_forget_acc"], e["mcq_retain_acc"],
                         e["mcq_retain_acc"], e["forget_nll"]])
            md = out / "eval" / m
            md.mkdir(parents=True)
            (md / "summary.json").write_text(json.dumps({
                "model": f"demo/models/{m}", "model_name": m, "mcq_chance": {"forget": 0.25, "retain": 0.25},
                "settings": {"seed": 42, "max_length": 128}, "versions": {"torch": "2.9.0"},
                "data": {"forget_test": {"path": "data/forget_test.txt", "sha256": "ab" * 32, "lines": 100}}}))
            gens = [{"split": s, "index": i, "mode": "greedy", "sample": None, "prompt": f"{s} prompt {i} <&>",
                     "continuation": f"{m} says {i} on {s}"} for s in ("forget_test", "retain_test") for i in range(6)]
            gens.append({"split": "forget_test", "index": 0, "mode": "sample", "sample": 0, "prompt": "x",
                         "continuation": "SAMPLED-NOT-SHOWN"})
            (md / "generations.jsonl").write_text("".join(json.dumps(g) + "\n" for g in gens))
        write_csv(out / "eval" / "summary.csv", cols, rows)
        (plots / "eval").mkdir()
        (plots / "eval" / "forgetting_summary.png").write_bytes(png((30, 30, 200)))
    if "tamper" in parts:
        write_csv(out / "tamper" / "summary.csv",
                  ["model", "forget_nll_start", "forget_nll_end", "retain_nll_start", "retain_nll_end",
                   "mcq_forget_acc_start", "mcq_forget_acc_end", "steps_to_recover"],
                  [[m, EVAL[m]["forget_nll"], 0.7, 0.8, 0.8, 0.3, 0.8, STEPS[m]] for m in EVAL])
        (out / "tamper" / "attack_report.yaml").write_text("Settings: {steps: 60, lr: 0.0003}\nHardware: {device: cpu}\n")
    if "lens" in parts:
        rows = []
        for m in EVAL:
            for lens in ("logit", "tuned"):
                for l_ in range(N_LAYERS + 1):   # hidden_states rows 0..N
                    acc = 0.8 if (m == GA and lens == "tuned" and l_ == 3) else 0.3 + 0.01 * l_
                    rows.append([m, lens, l_, acc, 0.5, 2.0, 1.0, 0.1, 0.25, 0.25])
        write_csv(out / "lens" / "layerwise.csv",   # layerwise_lens.py's columns
                  ["model", "lens", "layer", "mcq_forget_acc", "mcq_retain_acc", "forget_nll", "retain_nll",
                   "kl_to_final", "mcq_forget_chance", "mcq_retain_chance"], rows)
    if "ablation" in parts:
        cols = ["model", "attack", "setting", "forget_nll", "retain_nll", "mcq_forget_acc", "mcq_retain_acc",
                "recovered"]
        rows = [[REF, "reference", "", 0.677, 0.798, 0.9, 0.85, None],
                [GA, "none", "", 2.074, 0.813, 0.31, 0.83, None],
                [GA, "direction", "layer 2", 1.1, 0.9, 0.6, 0.8, 0.7],
                [GA, "quantize", "bits 4", 1.9, 0.85, 0.33, 0.8, 0.125],
                [GA, "delta_rank", "rank 2", 0.677, 0.798, 0.9, 0.85, 1.0],
                [FILT, "none", "", 10.749, 0.768, 0.26, 0.84, None],
                [FILT, "direction", "layer 1", 10.5, 0.8, 0.27, 0.83, 0.0248]]
        write_csv(out / "ablation" / "ablation.csv", cols, rows)
    run = out / f"{GA}" / "unlearned_model"
    run.mkdir(parents=True)
    (run / "run_report.yaml").write_text("Model: {base: demo/models/m-ref}\nTraining: {method: ga, seed: 42}\n")
    return out, plots


def page_of(tmp_path, **kw):
    out, plots = make_study(tmp_path, **kw)
    html, study = rp.build_report(out, plots, "fixture")
    return html, study


def parse(html: str):
    import html5lib
    return html5lib.parse(html, namespaceHTMLElements=False)


def signature_table(html: str) -> dict[str, dict[str, object]]:
    """{row label: {model: element td}} of the signature table."""
    doc = parse(html)
    tab = doc.find(".//table[@id='signature-table']")
    heads = ["".join(th.itertext()).replace(" (reference)", "") for th in tab.find("thead").iter("th")][1:]
    out = {}
    for tr in tab.find("tbody").iter("tr"):
        th = tr.find("th")
        label = "".join(th.itertext()).strip()
        out[label] = dict(zip(heads, tr.findall("td")))
    return out


def value(td) -> float | None:
    v = td.get("data-value")
    return None if v is None else float(v)


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------
def test_signature_numbers_equal_the_csvs(tmp_path):
    html, study = page_of(tmp_path)
    assert study.models == [REF, FILT, GA] and study.reference == REF and not study.unreadable
    sig = signature_table(html)
    row = lambda part: next(v for k, v in sig.items() if part in k)  # noqa: E731
    for m, e in EVAL.items():
        assert value(row("forget-test NLL")[m]) == e["forget_nll"]
        assert value(row("retain-test NLL")[m]) == e["retain_nll"]
        assert value(row("forget MCQ accuracy")[m]) == e["mcq_forget_acc"]
        assert "chance 0.25" in "".join(row("forget MCQ accuracy")[m].itertext())
        assert value(row("retain MCQ accuracy")[m]) == e["mcq_retain_acc"]
        for attack, label in (("minkpp", "Min-K%++"), ("loss", "loss"), ("zlib", "zlib"), ("mink", "Min-K%)")):
            assert value(row(f"MIA AUC ({label}")[m]) == e[f"mia_{attack}"]
    mia_rows = [k for k in sig if "MIA AUC" in k]
    assert "Min-K%++" in mia_rows[0]                       # Min-K%++ first
    steps = row("steps to recover")
    assert value(steps[GA]) == 20 and "".join(steps[FILT].itertext()) == "never"
    rec = row("training-free")
    assert value(rec[GA]) == 0.7 and "direction" in "".join(rec[GA].itertext())   # delta_rank's 1.0 left out
    assert value(rec[FILT]) == 0.0248
    # magnitude: √Σ‖ΔW‖² / √Σ‖W_A‖² over decoder layers (the embedding's 50.0 left out), written out
    for m in (FILT, GA):
        dw = np.array([dW_pattern(m, k, c) for k in range(N_LAYERS) for c in COMPONENTS])
        w = np.array([W_fro(k, c) for k in range(N_LAYERS) for c in COMPONENTS])
        assert value(row("‖ΔW‖_F / ‖W_A‖_F")[m]) == pytest.approx(np.sqrt((dw ** 2).sum() / (w ** 2).sum()), rel=1e-12)
        assert "reference" in "".join(row("‖ΔW‖_F / ‖W_A‖_F")[REF].itertext())
    # location: GA's change is 9 + 1 in layer 2: qkv alone holds 90%
    loc = "".join(row("holding 90%")[GA].itertext())
    assert loc.startswith("L2 qkv") and "1 of 16 cells" in loc
    assert "16 of 16" in "".join(row("holding 90%")[FILT].itertext()) or value(row("holding 90%")[FILT]) >= 14
    # rank and alignment: medians over changed decoder-layer matrices
    assert value(row("effective rank")[GA]) == np.median([2, 4])
    assert value(row("effective rank")[FILT]) == np.median([10 + k for k in range(N_LAYERS) for _ in COMPONENTS])
    assert value(row("column space")[GA]) == pytest.approx(np.median([0.6 / 0.2, 0.3 / 0.2]))
    # depth: best forget MCQ accuracy over layers and lenses
    depth = row("best layer-wise")
    assert value(depth[GA]) == 0.8 and "lens layer 3 (tuned; chance 0.25)" in "".join(depth[GA].itertext())
    # selectivity: max over rows, named by decoder layer (row - 1)
    sel = row("selectivity")
    assert value(sel[GA]) == 4.0 and "mlp_in 4× at L2" in "".join(sel[GA].itertext())
    # every cell links to a section that exists
    doc = parse(html)
    ids = {e.get("id") for e in doc.iter() if e.get("id")}
    links = [a.get("href") for a in doc.find(".//table[@id='signature-table']").iter("a")]
    assert links and all(h.startswith("#") and h[1:] in ids for h in links)


def test_generations_side_by_side_and_run_reports(tmp_path):
    html, study = page_of(tmp_path)
    doc = parse(html)
    gens = doc.find(".//section[@id='generations']")
    text = "".join(gens.itertext())
    for m in EVAL:
        assert f"{m} says 0 on forget_test" in text and f"{m} says 0 on retain_test" in text
    assert "SAMPLED-NOT-SHOWN" not in text and "forget_test prompt 0 <&>" in text
    assert f"{GA} says {rp.GENERATION_PROMPTS} on" not in text          # only the first few prompts
    runs = "".join(doc.find(".//section[@id='runs']").itertext())
    assert "run_report.yaml" in runs and "Training.method" in runs and "ab" * 32 in runs and "attack_report.yaml" in runs


def test_layer_join_pairs_decoder_layer_k_with_activation_row_k_plus_1(tmp_path):
    _, study = page_of(tmp_path)
    pair = study.pairs[f"{REF}_vs_{GA}"]
    lens = study.lens_rows
    shift, conv = rp.lens_offset([int(r["layer"]) for r in lens], N_LAYERS)
    assert shift == 1 and "hidden_states" in conv                        # rows 0..N: hidden_states
    rows = rp.layer_join(pair["params"], pair["acts"], pair["ageo"],
                         [r for r in lens if r["model"] == REF], [r for r in lens if r["model"] == GA], shift)
    assert [r["layer"] for r in rows] == list(range(N_LAYERS)) and [r["act_row"] for r in rows] == [1, 2, 3, 4]
    # the weights moved only in decoder layer 2; the activations changed only at row 3 = its output
    moved = [r["layer"] for r in rows if r.get("dW_fro")]
    dh_peak = max(rows, key=lambda r: r["rel_dh_forget"])["layer"]
    probe_dip = min(rows, key=lambda r: r["probe_auc_b"])["layer"]
    lens_peak = max(rows, key=lambda r: r["lens_tuned_b"])["layer"]
    assert moved == [2] and dh_peak == 2 and probe_dip == 2 and lens_peak == 2
    r2 = rows[2]
    assert r2["dW_fro"] == pytest.approx(np.hypot(3.0, 1.0))
    assert r2["rel_dW"] == pytest.approx(np.hypot(3.0, 1.0) / np.sqrt(sum(W_fro(2, c) ** 2 for c in COMPONENTS)))
    assert r2["rel_dh_forget"] == 5.0 / 10.0 and r2["rel_dh_retain"] == 0.5 / 10.0 and r2["cka_forget"] == 0.5
    # the page states the rule
    html, _ = page_of(tmp_path / "again")
    assert "Decoder layer k's weights are joined with activation row k+1" in __import__("html").unescape(html)


def test_partial_study_with_only_parameter_stats(tmp_path, capsys):
    out, plots = make_study(tmp_path, parts=("params",))
    page = tmp_path / "r" / "index.html"
    assert rp.main(["--outputs", str(out), "--plots", str(plots), "--out", str(page)]) == 0
    assert capsys.readouterr().out.strip() == str(page)
    html = page.read_text()
    assert oct(page.stat().st_mode & 0o777) == oct(0o666 & ~rp._umask())
    for tool in ("evaluate_unlearning.py", "tamper_attack.py", "layerwise_lens.py", "ablation_attack.py",
                 "collect_weight_geometry.py", "collect_activation_geometry.py"):
        assert f"made by {tool}" in html, tool
    sig = signature_table(html)
    assert "".join(next(v for k, v in sig.items() if "forget-test NLL" in k)[REF].itertext()) == "not run"
    assert value(next(v for k, v in sig.items() if "‖ΔW‖_F / ‖W_A‖_F" in k)[GA]) > 0
    # nothing at all: still a page, saying so
    empty = tmp_path / "empty"
    assert rp.main(["--outputs", str(empty / "o"), "--plots", str(empty / "p"), "--out", str(empty / "i.html")]) == 0
    assert "No model found" in (empty / "i.html").read_text()


def test_corrupt_files_are_named_and_the_page_still_written(tmp_path, capsys):
    out, plots = make_study(tmp_path)
    (out / "eval" / "summary.csv").write_text("model,forget_nll,retain_nll\nm-ref,0.5,0.7\nm-ga,abc,0.8\n")
    acts = out / f"{REF}_vs_{GA}" / "activation_stats" / "activation_stats.csv"
    acts.write_bytes(b"\xff\xfe\x00garbage")
    (out / "lens" / "layerwise.csv").write_text("")
    (plots / "eval" / "forgetting_summary.png").write_bytes(b"not a png")
    page = tmp_path / "index.html"
    assert rp.main(["--outputs", str(out), "--plots", str(plots), "--out", str(page)]) == 0
    html = page.read_text()
    notes = "".join(parse(html).find(".//section[@id='notes']").itertext())
    assert f"{out / 'eval' / 'summary.csv'} (line 3: forget_nll = 'abc' is not a number)" in notes
    assert f"{acts} (not UTF-8 text" in notes
    assert f"{out / 'lens' / 'layerwise.csv'} (empty file)" in notes
    assert "forgetting_summary.png (not a PNG file)" in notes
    sig = signature_table(html)
    assert value(next(v for k, v in sig.items() if "steps to recover" in k)[GA]) == 20   # the rest is there
    assert "unreadable" in html.lower()


def test_html_is_valid_and_self_contained(tmp_path):
    import html5lib
    html, study = page_of(tmp_path)
    html5lib.HTMLParser(strict=True).parse(html)            # raises on any parse error
    doc = parse(html)
    for e in doc.iter():
        for attr in ("src", "href", "action", "poster", "data"):
            v = e.get(attr)
            if v is not None:
                assert v.startswith(("#", "data:image/png;base64,", "data:image/svg+xml;base64,")), (e.tag, attr, v[:60])
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|@import|url\(", html, re.I)
    assert [s.text for s in doc.iter("script")] and all(s.get("src") is None for s in doc.iter("script"))
    assert doc.find(".//link") is None
    # every PNG of the study is inlined once; plus the two join figures
    imgs = list(doc.iter("img"))
    assert len(imgs) == 2 + 1 + 2
    assert len(html) < 200_000


def test_reference_and_model_naming(tmp_path, capsys):
    out, plots = make_study(tmp_path)
    html, study = rp.build_report(out, plots, "t", reference=GA)
    assert study.models[0] == GA
    assert rp.main(["--outputs", str(out), "--plots", str(plots), "--out", str(tmp_path / "x.html"),
                    "--reference", "nobody"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --reference nobody is not a model of this study")
    assert rp.main(["--outputs", str(out), "--plots", str(plots), "--out", str(tmp_path)]) == 1
    # one naming rule: study.sh's comparison folder == report.py's (= evaluate_unlearning.py's) model names
    unl = tmp_path / "outputs" / "base__ga" / "unlearned_model"
    unl.mkdir(parents=True)
    specs = ["EleutherAI/deep-ignorance-unfiltered", str(unl), str(unl) + "/", str(tmp_path / "outputs"), "gpt2"]
    import evaluate_unlearning as ev
    for a in specs:
        b = specs[0]
        got = subprocess.run(["bash", "-c", 'source ./study.sh; comparison_name "$1" "$2"', "_", a, b], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.strip()
        assert got == f"{ev.model_name(a)}_vs_{ev.model_name(b)}" == f"{rp.model_name(a)}_vs_{rp.model_name(b)}"
    assert rp.split_pair("a_vs_b_vs_c", ["a_vs_b", "c"]) == ("a_vs_b", "c")
    assert rp.split_pair("x_vs_y", ["EleutherAI_x", "EleutherAI_y"]) == ("EleutherAI_x", "EleutherAI_y")  # old folders


def test_wrapper_passes_flags_only_when_set(tmp_path):
    fake = tmp_path / "fake_uv_run"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REPORT_", "OUTPUTS_DIR", "PLOTS_DIR"))}
    p = subprocess.run([str(ROOT / "run_report.sh")], env=env | {"UV_RUN": str(fake)}, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[1:] == ["report.py", "--outputs", "outputs", "--plots", "plots"]
    p = subprocess.run([str(ROOT / "run_report.sh")], capture_output=True, text=True,
                       env=env | {"UV_RUN": str(fake), "REPORT_OUT": "/r/x.html", "REPORT_TITLE": "T T",
                                  "REPORT_REFERENCE": "m"})
    assert p.stdout.splitlines()[1:] == ["report.py", "--outputs", "outputs", "--plots", "plots", "--out", "/r/x.html",
                                         "--title", "T T", "--reference", "m"]
    args = rp.parse_args(p.stdout.splitlines()[2:])
    assert args.out == "/r/x.html" and args.reference == "m"


def test_evaluation_cut_short_is_read_from_its_summary_json(tmp_path):
    """No summary.csv yet (the evaluation still runs): the per-model summary.json files, flattened as
    evaluate_unlearning.py's summary_row flattens them."""
    import evaluate_unlearning as ev
    s = {"forget_nll": 2.5, "forget_nll_ci95": [2.4, 2.6], "retain_nll": 0.8, "retain_nll_ci95": [0.7, 0.9],
         "mia": {"loss": 0.6, "zlib": 0.61, "mink": 0.62, "minkpp": 0.63},
         "mcq": {"forget": {"acc": 0.3, "acc_stderr": 0.01, "acc_norm": 0.31, "acc_norm_stderr": 0.01}},
         "few_shot": {"0": 2.5, "1": 2.2}, "generation": {"forget_test": {"distinct_1": 0.5, "distinct_2": 0.7,
                                                                         "repeat_rate": 0.1}}}
    want = {k: str(v) for k, v in ev.summary_row(GA, s).items()}
    assert rp.eval_row(GA, s) == want
    out, plots = make_study(tmp_path, parts=("params",))
    (out / "eval" / GA).mkdir(parents=True)
    (out / "eval" / GA / "summary.json").write_text(json.dumps({**s, "mcq_chance": {"forget": 0.25}}))
    html, study = rp.build_report(out, plots, "t")
    assert study.eval_from_json and "did not finish every model" in html
    sig = signature_table(html)
    assert value(next(v for k, v in sig.items() if "forget-test NLL" in k)[GA]) == 2.5
    assert "".join(next(v for k, v in sig.items() if "forget-test NLL" in k)[FILT].itertext()) == "—"


@pytest.mark.parametrize("sig, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_interrupted_run_writes_nothing(tmp_path, sig, code):
    """kill and Ctrl-C while the page is being made: exit 143/130, no page and no temporary file."""
    import signal
    import sys
    import time
    out = tmp_path / "r" / "index.html"
    code_ = ("import sys, time; sys.path.insert(0, %r); import report as rp\n"
             "def slow(*a, **k):\n    print('ready', flush=True); time.sleep(30)\n"
             "rp.build_report = slow\nsys.exit(rp.main(['--outputs', %r, '--out', %r]))") % (str(ROOT), str(tmp_path), str(out))
    p = subprocess.Popen([sys.executable, "-c", code_], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(getattr(signal, sig))
    _, err = p.communicate(timeout=20)
    assert p.returncode == code and err.strip().endswith(": nothing was written")
    assert not out.exists() and not any(tmp_path.rglob("*.tmp"))


def open_in_chromium(page: Path, screenshot: Path, check_sort: bool = False) -> dict:
    """Open the page in headless Chromium with every network request refused; what it rendered."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--disable-sync"])
        try:
            ctx = browser.new_context(offline=True, viewport={"width": 1280, "height": 900})
            blocked = []

            def route(r):
                if r.request.url.startswith(("file://", "data:")):
                    r.continue_()
                else:
                    blocked.append(r.request.url)
                    r.abort()
            ctx.route("**/*", route)
            tab = ctx.new_page()
            errors = []
            tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.goto(page.resolve().as_uri(), wait_until="load")
            imgs = tab.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
            # the sortable tables work: a click on the forget_nll head sorts the evaluation table
            col = None
            if check_sort:
                tab.click("#evaluation > table thead th:nth-child(2)")
                col = tab.eval_on_selector_all("#evaluation > table tbody tr td:nth-child(2)",
                                               "els => els.map(e => parseFloat(e.getAttribute('data-value')))")
            tab.screenshot(path=str(screenshot), full_page=False)
        finally:
            browser.close()
    return {"imgs": imgs, "errors": errors, "blocked": blocked, "sorted_col": col}


def test_real_browser_renders_every_figure(tmp_path):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing on CI (.ci/run installs the distribution's chromium package)")
        pytest.skip(f"no {CHROMIUM} here: apt-get install -y chromium (Debian) to run the browser test")
    pytest.importorskip("playwright")
    out, plots = make_study(tmp_path)
    page = tmp_path / "report" / "index.html"
    assert rp.main(["--outputs", str(out), "--plots", str(plots), "--out", str(page)]) == 0
    shot = tmp_path / "screenshot.png"
    got = open_in_chromium(page, shot, check_sort=True)
    assert len(got["imgs"]) == 5 and all(done and width > 0 for done, width in got["imgs"]), got["imgs"]
    assert got["errors"] == [] and got["blocked"] == []
    assert len(got["sorted_col"]) == 3 and got["sorted_col"] == sorted(got["sorted_col"])
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 5000


if __name__ == "__main__":   # python tests/test_report.py PAGE SCREENSHOT: the README's screenshot
    import sys
    shutil.os.makedirs(Path(sys.argv[2]).parent, exist_ok=True)
    print(open_in_chromium(Path(sys.argv[1]), Path(sys.argv[2])))


def test_out_never_replaces_a_file_that_is_not_a_report(tmp_path, capsys):
    import report

    other = tmp_path / "notes.html"
    other.write_text("my own notes\n")
    assert report.main(["--outputs", str(tmp_path / "none"), "--plots", str(tmp_path / "none"),
                        "--out", str(other)]) == 1
    assert "is not a report written by report.py" in capsys.readouterr().err
    assert other.read_text() == "my own notes\n"
    page = tmp_path / "index.html"
    for _ in range(2):   # an earlier report is replaced
        assert report.main(["--outputs", str(tmp_path / "none"), "--plots", str(tmp_path / "none"),
                            "--out", str(page)]) == 0
