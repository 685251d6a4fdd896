"""Output faults of collect_param_stats.py, create_datasets.py and the two plot tools.

Every output-path problem (an --outdir that is a file, an unrelated folder, a folder inside the
input model, a path that cannot be created, a read-only place, a full disk while writing, Ctrl-C)
must give one `error:` line (exit 1; 130 for Ctrl-C), leave no half or temporary file, and lose
nothing that existed. Outputs get ordinary modes (files 0666 & ~umask, new folders 0777 & ~umask).
A full disk is a monkeypatched write raising OSError(ENOSPC), Ctrl-C a KeyboardInterrupt there, a
read-only place a probe raising OSError(EROFS) (the tests may run as root, which ignores modes).
"""
from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import make_tiny_model, save_model

import collect_param_stats as cps
import create_datasets as cd
import plot_activation_norms as pan
import plot_param_stats as pps


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: 'nothing lost, nothing added' in one comparison."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error(capsys, *words) -> str:
    text = capsys.readouterr().err
    err = [line for line in text.splitlines() if line.startswith("error")]  # (tqdm bars and warnings aside)
    assert len(err) == 1 and err[0].startswith("error: "), text
    assert "Traceback" not in text
    for w in words:
        assert w in err[0], err[0]
    return err[0]


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


# ---------------------------------------------------------------------------------------------
# check_outdir on its own (the shared helper; one copy stands for all)
# ---------------------------------------------------------------------------------------------
def test_check_outdir_cases(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    new = tmp_path / "a" / "b"
    assert cps.check_outdir(new, "per_*.csv") == new and not (tmp_path / "a").exists()   # nothing created
    empty = tmp_path / "empty"
    empty.mkdir()
    cps.check_outdir(empty, "per_*.csv")
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "per_layer.csv").write_text("x")
    (earlier / "notes.txt").write_text("mine")
    cps.check_outdir(earlier, "per_*.csv")
    shared = tmp_path / "data"
    shared.mkdir()
    (shared / "README.md").write_text("the folder's own file")
    cd.check_outdir(shared, "PROVENANCE.md", owned=("forget.txt", "retain.txt", "PROVENANCE.md"))
    (shared / "forget.txt").write_text("hand-made")
    bad = {
        "file": (tmp_path / "f.txt", "exists and is not a folder"),
        "unrelated": (tmp_path / "thesis", "holds files that no earlier run"),
        "model": (model, "inside the input"),
        "inside_model": (model / "stats", "inside the input"),
        "under_a_file": (tmp_path / "f.txt" / "sub", "is not a folder"),
        "proc": (Path("/proc/h12b-no-such/out"), "cannot write --outdir"),
    }
    (tmp_path / "f.txt").write_text("x")
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("years of work")
    for case, (out, words) in bad.items():
        with pytest.raises(cps.UsageError, match=words):
            cps.check_outdir(out, "per_*.csv", inputs=(model,))
    with pytest.raises(cd.UsageError, match="no earlier run"):
        cd.check_outdir(shared, "PROVENANCE.md", owned=("forget.txt", "retain.txt", "PROVENANCE.md"))


def test_check_outdir_read_only(tmp_path, monkeypatch):
    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    with pytest.raises(cps.UsageError, match="not writable .Read-only file system."):
        cps.check_outdir(tmp_path / "out", "per_*.csv")


# ---------------------------------------------------------------------------------------------
# collect_param_stats.py
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    a = make_tiny_model("gpt_neox", seed=1, hidden=32, layers=2, intermediate=64)
    a_dir = save_model(a, root / "a")
    with torch.no_grad():
        a.gpt_neox.layers[1].mlp.dense_h_to_4h.weight.add_(0.01)
    b_dir = save_model(a, root / "b")
    return a_dir, b_dir


def run_params(pair, outdir) -> int:
    return cps.main(["--model-a", str(pair[0]), "--model-b", str(pair[1]), "--outdir", str(outdir), "--device", "cpu"])


def earlier_output(folder: Path) -> dict[str, bytes]:
    folder.mkdir(parents=True)
    (folder / "per_matrix.csv").write_text("an earlier result\n")
    (folder / "per_layer.csv").write_text("an earlier result\n")
    return tree(folder)


def test_params_replaces_its_own_earlier_output_with_ordinary_modes(pair, tmp_path, capsys, umask022):
    out = tmp_path / "new" / "param_stats"
    assert run_params(pair, out) == 0
    assert mode(out) == mode(out.parent) == 0o755
    assert mode(out / "per_matrix.csv") == mode(out / "per_layer.csv") == 0o644
    first = tree(out)
    (out / "notes.txt").write_text("kept")
    assert run_params(pair, out) == 0                       # an earlier output: replaced, the notes kept
    assert tree(out) == {**first, "notes.txt": b"kept"}


@pytest.mark.parametrize("case", ["file", "unrelated", "equal_to_model", "inside_model", "proc"])
def test_params_refuses_an_outdir_before_any_work(pair, tmp_path, capsys, case, monkeypatch):
    a_dir, b_dir = pair
    model_before = tree(b_dir)
    out = {"file": tmp_path / "f.csv", "unrelated": tmp_path / "thesis", "equal_to_model": b_dir,
           "inside_model": b_dir / "param_stats", "proc": Path("/proc/h12b-no-such/param_stats")}[case]
    if case == "file":
        out.write_text("a file")
    if case == "unrelated":
        out.mkdir()
        (out / "chapter1.tex").write_text("years of work")
    before = tree(tmp_path)
    monkeypatch.setattr(cps, "matrix_stats", lambda *a, **k: pytest.fail("work started before the check"))
    assert run_params(pair, out) == 1
    one_error(capsys, "--outdir")
    assert tree(tmp_path) == before and tree(b_dir) == model_before


@pytest.mark.parametrize("fault", ["read_only", "disk_full", "ctrl_c"])
def test_params_write_faults_lose_nothing(pair, tmp_path, capsys, monkeypatch, fault):
    out = tmp_path / "param_stats"
    before = earlier_output(out)
    if fault == "read_only":
        def probe(*a, **k):
            raise OSError(errno.EROFS, "Read-only file system")
        monkeypatch.setattr(tempfile, "TemporaryFile", probe)
    else:
        def write_table_csv(path, *a, **k):
            Path(path).write_text("half a CSV")
            raise OSError(errno.ENOSPC, "No space left on device") if fault == "disk_full" else KeyboardInterrupt()
        monkeypatch.setattr(cps, "write_table_csv", write_table_csv)
    code = run_params(pair, out)
    if fault == "ctrl_c":
        assert code == 130 and "interrupted" in capsys.readouterr().err
    else:
        assert code == 1
        one_error(capsys, *({"read_only": ["Read-only file system"],
                             "disk_full": ["No space left on device", "per_matrix.csv"]}[fault]))
    assert tree(out) == before                                # old results intact, no temporary files


def test_params_non_finite_weights_are_one_line(pair, tmp_path, capsys):
    from safetensors.torch import load_file, save_file
    a_dir, _ = pair
    bad = tmp_path / "nan"
    bad.mkdir()
    for f in a_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    weights = load_file(bad / "model.safetensors")
    name = "gpt_neox.layers.0.attention.dense.weight"
    weights[name][0, 0] = float("nan")
    save_file(weights, bad / "model.safetensors", metadata={"format": "pt"})
    assert run_params((a_dir, bad), tmp_path / "out") == 1
    one_error(capsys, name, "model B", "NaN or infinite")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# create_datasets.py
# ---------------------------------------------------------------------------------------------
def make_data(outdir, *extra) -> int:
    return cd.main(["--source", "synthetic", "--n-forget", "20", "--n-retain", "20", "--outdir", str(outdir), *extra])


def test_datasets_modes_and_the_folders_other_files(tmp_path, capsys, umask022):
    data = tmp_path / "data"
    data.mkdir()
    (data / "README.md").write_text("the folder's own file")
    assert make_data(data) == 0
    for name in ("forget.txt", "retain.txt", "PROVENANCE.md"):
        assert mode(data / name) == 0o644, name
    assert (data / "README.md").read_text() == "the folder's own file"
    assert make_data(tmp_path / "new" / "data") == 0 and mode(tmp_path / "new") == mode(tmp_path / "new" / "data") == 0o755
    assert make_data(data, "--seed", "7") == 0                # an earlier output: replaced


@pytest.mark.parametrize("case", ["file", "hand_made", "proc", "read_only", "disk_full", "ctrl_c"])
def test_datasets_output_faults(tmp_path, capsys, monkeypatch, case):
    data = tmp_path / "data"
    data.mkdir()
    if case == "hand_made":
        (data / "forget.txt").write_text("my own forget set\n")
    elif case in ("disk_full", "ctrl_c"):
        assert make_data(data) == 0
        capsys.readouterr()
    out = {"file": tmp_path / "f.txt", "proc": Path("/proc/h12b-no-such/data")}.get(case, data)
    if case == "file":
        out.write_text("a file")
    before = tree(tmp_path)
    if case == "read_only":
        def probe(*a, **k):
            raise OSError(errno.EROFS, "Read-only file system")
        monkeypatch.setattr(tempfile, "TemporaryFile", probe)
    if case in ("disk_full", "ctrl_c"):
        real_fdopen = os.fdopen

        def fdopen(fd, *a, **k):
            f = real_fdopen(fd, *a, **k)

            def write(data):
                raise OSError(errno.ENOSPC, "No space left on device") if case == "disk_full" else KeyboardInterrupt()
            f.write = write
            return f
        monkeypatch.setattr(os, "fdopen", fdopen)
    code = make_data(out, "--seed", "7")
    if case == "ctrl_c":
        assert code == 130
    else:
        assert code == 1
        one_error(capsys, {"file": "not a folder", "hand_made": "no earlier run", "proc": "cannot write",
                           "read_only": "Read-only", "disk_full": "No space left"}[case])
    assert tree(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# the plot tools
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def per_layer(tmp_path):
    stats = tmp_path / "param_stats"
    stats.mkdir()
    pd.DataFrame({"layer": [0, 0, 1, 1], "group": ["attn", "mlp"] * 2, "dW_fro_layer": [0.1, 0.2, 0.3, 0.0],
                  "mean_dW_stable_rank": [1.5, 30.0, 2.0, float("nan")], "count_mats": [2, 2, 2, 2]}).to_csv(
        stats / "per_layer.csv", index=False)
    return stats


@pytest.fixture
def act_csv(tmp_path):
    rows = []
    for split in ("forget", "retain"):
        for layer in range(4):
            rows.append({"layer": layer, "split": split, "model_a_norm_L1": 10.0 + layer, "model_a_norm_L2": 1.0 + layer,
                         "model_b_norm_L1": 11.0 + layer, "model_b_norm_L2": 1.1 + layer,
                         "mean_dh_L1": 0.5 * layer, "mean_dh_L2": 0.05 * layer})
    path = tmp_path / "cmp" / "activation_stats" / "activation_stats.csv"
    path.parent.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def plot(tool, inputs, out) -> int:
    if tool == "param":
        return pps.main(["--stats-dir", str(inputs), "--outdir", str(out), "--name", "x"])
    return pan.main(["--csv", str(inputs), "--outdir", str(out), "--name", "x"])


@pytest.mark.parametrize("tool", ["param", "activation"])
def test_plot_modes(tool, per_layer, act_csv, tmp_path, umask022, capsys):
    out = tmp_path / "plots" / "x"
    assert plot(tool, per_layer if tool == "param" else act_csv, out) == 0
    pngs = sorted(out.iterdir())
    assert pngs and all(mode(p) == 0o644 for p in pngs) and mode(out) == mode(out.parent) == 0o755
    assert not [p for p in pngs if p.name.startswith(".")]


@pytest.mark.parametrize("tool", ["param", "activation"])
@pytest.mark.parametrize("case", ["file", "proc", "read_only", "disk_full", "ctrl_c"])
def test_plot_output_faults(tool, case, per_layer, act_csv, tmp_path, capsys, monkeypatch):
    out = tmp_path / "plots"
    if case in ("disk_full", "ctrl_c"):
        assert plot(tool, per_layer if tool == "param" else act_csv, out) == 0
        capsys.readouterr()
    out = {"file": tmp_path / "f.png", "proc": Path("/proc/h12b-no-such/plots")}.get(case, out)
    if case == "file":
        out.write_text("a file")
    before = tree(tmp_path)
    if case == "read_only":
        def probe(*a, **k):
            raise OSError(errno.EROFS, "Read-only file system")
        monkeypatch.setattr(tempfile, "TemporaryFile", probe)
    import matplotlib.figure

    if case in ("disk_full", "ctrl_c"):
        def savefig(self, path, *a, **k):
            Path(path).write_bytes(b"\x89PNG half")
            raise OSError(errno.ENOSPC, "No space left on device") if case == "disk_full" else KeyboardInterrupt()
        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    code = plot(tool, per_layer if tool == "param" else act_csv, out)
    if case == "ctrl_c":
        assert code == 130
    else:
        assert code == 1
        one_error(capsys, {"file": "not a folder", "proc": "cannot write", "read_only": "Read-only",
                           "disk_full": "No space left"}[case])
    assert tree(tmp_path) == before
