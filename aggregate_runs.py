# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "numpy>=1.24",
#     "scipy>=1.11",
#     "pandas>=2.0",
#     "pyyaml>=6.0",
# ]
# ///
"""Many unlearning runs in, one honest summary out: mean ± std over seeds, a bootstrap confidence
interval, and paired per-sample tests.

    uv run --script aggregate_runs.py outputs/*__ga__seed*/ outputs/*__npo__seed*/ --baseline ga

Each RUN_DIR is an ``unlearned_model`` folder written by unlearn.py (or its parent); it holds
``metrics.json``, ``run_report.yaml`` and ``per_sample_nll.csv``. Runs are grouped (default: by
model and method); inside a group every setting except the seed must agree, else one ``error:``
line names the setting. Writes into ``--outdir`` (default outputs/aggregate):

- ``summary.csv``  group, metric, n_seeds, mean, std (ddof 1), ci95_low, ci95_high (percentile
  bootstrap of the mean over seeds, seeded), min, max; for forget_NLL, retain_NLL, gap, their
  ``_before`` values (and ``_test`` ones when the runs have a test split).
- ``tests.csv``    group, metric, n, mean_diff, t, p_t (scipy ttest_rel), p_wilcoxon (scipy
  wilcoxon): per group and split, each sample's nll_after against its nll_before, both averaged
  over the group's seeds by sample index (metric ``forget_eval after-before``); with
  ``--baseline M``, each group's nll_after against group M's on the same samples (metric
  ``forget_eval after-<group of M>``). mean_diff = mean(first − second).
- ``report.yaml``  the project's reporting format (Model / Dataset / Training / Hardware /
  Results) per group, Results as ``"mean ± std"`` strings with a comment naming the seed count.

A table (one line per group) is printed. Same inputs and ``--seed``: identical outputs.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import sys
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd


# --- shared helpers: copied from common/helpers.py; edit them there, then run `uv run --script common/fix_copies.py` ---
# (the helpers named here, plus the ones they use, in the canonical order; to take another one add a
# line `# take: NAME` here and run the command; the helpers use this script's imports)
class UsageError(Exception):
    """Bad input or a failed step: reported as one ``error: ...`` line, exit status 1 (see run_tool)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a Slurm time limit), raised like Ctrl-C so that every ``finally:`` cleans up
    the same way; run_tool turns it into exit status 143 (Ctrl-C: 130)."""


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an exception's message, or the exception's type name when the
    message is empty (``str(e).splitlines()[0]`` raises IndexError there)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def run_tool(work, kept: str = "nothing was written", errors: tuple = (), oom_hint: str = "") -> int:
    """Run ``work()`` (a tool's body) with the collection's exit behaviour; return the exit status:
    0 done (or the int ``work`` returns; any other value counts as 0); 1 for a UsageError or one of
    ``errors``, an OSError, or running out of (device) memory, printed as one ``error: ...`` line
    (``oom_hint`` appended to the memory one); 130 on Ctrl-C and 143 on SIGTERM, after the
    ``finally:`` blocks inside ``work`` have removed what was half-written, with one line saying what
    was ``kept``. SIGTERM raises Terminated (a KeyboardInterrupt) while ``work`` runs; a second
    SIGTERM during the cleanup is ignored. argparse's SystemExit (status 2) passes through."""
    import signal
    import threading

    received = []

    def on_sigterm(signum, frame):
        if not received:
            received.append(signum)
            raise Terminated()

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main_thread else None
    if not sys.stderr.isatty():
        quiet_library_bars()
    hint = f"; {oom_hint}" if oom_hint else ""
    try:
        status = work()
    except KeyboardInterrupt:
        how, status = ("terminated (SIGTERM)", 143) if received else ("interrupted (Ctrl-C)", 130)
        print(f"{how}: {kept}", file=sys.stderr, flush=True)
        return status
    except (UsageError, *errors) as e:
        print(f"error: {first_line(e)}", file=sys.stderr, flush=True)
        return 1
    except MemoryError:
        print(f"error: out of memory{hint}", file=sys.stderr, flush=True)
        return 1
    except OSError as e:  # a full disk, a read-only folder, a file that vanished, ...
        where = f" {e.filename}" if e.filename else ""
        print(f"error: cannot access{where}: {e.strerror or first_line(e)}", file=sys.stderr, flush=True)
        return 1
    except RuntimeError as e:
        if "out of memory" not in str(e).lower():
            raise
        print(f"error: out of device memory{hint}", file=sys.stderr, flush=True)
        return 1
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    if received:
        return 143
    return status if isinstance(status, int) and not isinstance(status, bool) else 0


def quiet_library_bars() -> None:
    """A log is not a terminal: switch off the progress bars that transformers ("Loading weights"),
    datasets ("Generating ... split") and huggingface_hub draw with carriage returns; the tools' own
    stages print lines instead (``progress``). Set before those libraries are imported, the
    environment variables do it; for the ones already imported, their switches."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    for module, switch in (("transformers.utils.logging", "disable_progress_bar"),
                           ("datasets.utils.logging", "disable_progress_bar"),
                           ("huggingface_hub.utils", "disable_progress_bars")):
        if module in sys.modules and hasattr(sys.modules[module], switch):
            getattr(sys.modules[module], switch)()


HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def model_name(spec: str) -> str:
    """The project's name of a model (its results folder): hub ID ``org/name`` -> ``org_name``; a
    local folder -> its basename, or its parent's name when the folder is an ``unlearned_model``
    (unlearn.py's layout). A path is made absolute first, so ``.`` and ``..`` name the folders they
    stand for (symbolic links are not followed)."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if not path.is_dir() and not spec.startswith((".", "/", "~")) and spec.count("/") == 1 and HUB_ID_RE.match(spec):
        return spec.replace("/", "_")
    path = Path(os.path.abspath(path))
    name = path.parent.name if path.name == "unlearned_model" and path.parent.name else path.name
    return name or "root"


def _umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_outdir(outdir, marker: str, owned: tuple = (), inputs: tuple = ()) -> Path:
    """Refuse, before any work starts, an ``--outdir`` whose writing would lose something or fail.

    Refused: a path that exists and is not a folder; a folder equal to or inside one of the
    ``inputs`` (e.g. the input model); a folder this tool did not write, i.e. one without a file
    matching the glob ``marker`` that is non-empty (or, when ``owned`` names the files the tool
    writes there, that holds one of them); a path whose nearest existing folder cannot be written
    (read-only, /proc, permissions: probed with a temporary file that is removed at once).
    Returns ``Path(outdir)``; nothing is created."""
    out = Path(outdir)
    for source in inputs:
        if source is not None and Path(source).is_dir():
            src = Path(source).resolve()
            if out.resolve() == src or src in out.resolve().parents:
                raise UsageError(f"--outdir {out} is inside the input {source}; choose a folder outside it")
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise UsageError(f"--outdir {out} exists and is not a folder")
        ours = any(out.glob(marker))
        theirs = [p.name for p in out.iterdir() if p.name in owned] if owned else list(out.iterdir())
        if theirs and not ours:
            raise UsageError(f"--outdir {out} holds files that no earlier run of this tool wrote (no {marker}); "
                             "choose a new or empty folder, or move them away")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"cannot create --outdir {out}: {probe} is not a folder")
    try:
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as e:
        raise UsageError(f"cannot write --outdir {out}: {probe} is not writable ({e.strerror or first_line(e)})") from None
    return out


def write_atomically(files: dict) -> None:
    """Write each ``{path: content}`` to a temporary file beside ``path``, then rename them all
    into place. ``content``: str (written as UTF-8, line ends as given), bytes, or a function that
    writes the file at the path it is given (``lambda p: fig.savefig(p, format="png")``). Files get
    the ordinary mode 0666 & ~umask (mkstemp makes 0600), missing folders 0777 & ~umask. On any
    error or Ctrl-C the temporary files are removed and every existing file stays as it was; an
    OSError (disk full, read-only, ...) becomes a UsageError naming the file."""
    temps: dict[Path, str] = {}
    try:
        for path, content in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            temps[path] = tmp
            with os.fdopen(fd, "wb") as f:
                if isinstance(content, (str, bytes)):
                    f.write(content.encode("utf-8") if isinstance(content, str) else content)
            if callable(content):
                content(Path(tmp))
            os.chmod(tmp, 0o666 & ~_umask())
        for path, tmp in temps.items():
            os.replace(tmp, path)
    except BaseException as e:
        for tmp in temps.values():
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise UsageError(f"cannot write {path}: {e.strerror or first_line(e)}") from None
        raise
# --- end shared helpers ---


# metric name in summary.csv -> (where in metrics.json, key in report.yaml's Results)
METRICS = {
    "forget_NLL": (("forget_NLL",), "forget_nll"),
    "retain_NLL": (("retain_NLL",), "retain_nll"),
    "gap": (("gap",), "gap"),
    "forget_NLL_before": (("before", "forget_NLL"), "forget_nll_before"),
    "retain_NLL_before": (("before", "retain_NLL"), "retain_nll_before"),
    "gap_before": (("before", "gap"), "gap_before"),
    "forget_NLL_test": (("test", "forget_NLL"), "forget_nll_test"),
    "retain_NLL_test": (("test", "retain_NLL"), "retain_nll_test"),
    "gap_test": (("test", "gap"), "gap_test"),
    "forget_NLL_test_before": (("test", "before", "forget_NLL"), "forget_nll_test_before"),
    "retain_NLL_test_before": (("test", "before", "retain_NLL"), "retain_nll_test_before"),
    "gap_test_before": (("test", "before", "gap"), "gap_test_before"),
    "runtime": (("runtime_s",), "runtime"),
}
CI_METRICS = ("forget_NLL", "retain_NLL", "gap")  # whose CI goes into report.yaml
# Training keys that legitimately differ between the seeds of one group
PER_SEED_KEYS = {"seed"}
SPLIT_ORDER = ("forget_eval", "retain_eval", "forget_test", "retain_test", "forget_train", "retain_train")
# ----------------------------------------------------------------------------------------------
# Statistics (pure)
# ----------------------------------------------------------------------------------------------
def seed_stats(values, n_boot: int, rng: np.random.Generator) -> dict:
    """Summary of one metric over a group's seeds: n_seeds, mean, std (sample std, ddof = 1),
    ci95_low/ci95_high, min, max.

    The CI is the percentile bootstrap of the mean (Efron & Tibshirani 1993, ch. 13) by
    ``scipy.stats.bootstrap(method="percentile")`` with ``n_boot`` resamples drawn from ``rng``.
    With one seed, std and the CI are undefined (NaN). With a handful of seeds the percentile
    interval is known to be too narrow; it is reported as what it is, not as a guarantee.
    """
    from scipy.stats import bootstrap

    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    out = {"n_seeds": n, "mean": float(np.mean(x)), "std": float(np.std(x, ddof=1)) if n > 1 else math.nan,
           "ci95_low": math.nan, "ci95_high": math.nan, "min": float(np.min(x)), "max": float(np.max(x))}
    if n > 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # identical values: a degenerate (zero-width) interval
            ci = bootstrap((x,), np.mean, n_resamples=n_boot, method="percentile", confidence_level=0.95,
                           rng=rng).confidence_interval
        out["ci95_low"], out["ci95_high"] = float(ci.low), float(ci.high)
    return out


def paired_test(a, b) -> dict:
    """Paired comparison of a and b over the same samples: n, mean_diff = mean(a − b), the
    paired t statistic and its two-sided p (``scipy.stats.ttest_rel``), and the two-sided
    Wilcoxon signed-rank p (``scipy.stats.wilcoxon``; zero differences dropped). NaN where a test
    is undefined (fewer than two samples, or all differences zero)."""
    from scipy.stats import ttest_rel, wilcoxon

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    out = {"n": len(a), "mean_diff": float(np.mean(a - b)) if len(a) else math.nan,
           "t": math.nan, "p_t": math.nan, "p_wilcoxon": math.nan}
    if len(a) < 2:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero variance of the differences: NaN, as scipy says
        t = ttest_rel(a, b)
        out["t"], out["p_t"] = float(t.statistic), float(t.pvalue)
        if np.any(a != b):
            try:
                out["p_wilcoxon"] = float(wilcoxon(a, b).pvalue)
            except ValueError:
                pass
    return out


def bootstrap_rng(seed: int, group: str, metric: str) -> np.random.Generator:
    """The generator of one (group, metric) bootstrap: seeded by ``--seed`` and a CRC32 of the
    names, so a group's interval does not depend on which other groups were aggregated with it."""
    return np.random.default_rng([seed, zlib.crc32(f"{group}\0{metric}".encode())])


def pool_samples(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Per-sample NLLs of several seeds, averaged by (split, index): one row per sample with the
    mean nll_before and nll_after over the seeds, sorted by split order then index."""
    df = pd.concat(frames, ignore_index=True)
    pooled = df.groupby(["split", "index"], sort=False, as_index=False)[["nll_before", "nll_after"]].mean()
    order = {s: i for i, s in enumerate(SPLIT_ORDER)}
    pooled["_o"] = pooled["split"].map(lambda s: order.get(s, len(order)))
    return pooled.sort_values(["_o", "split", "index"]).drop(columns="_o").reset_index(drop=True)


def format_pm(mean: float, std: float) -> str:
    """``"5.23 ± 0.15"``: the std to two significant digits (at least two decimals, at most six),
    the mean to the same number of decimals; a zero std with four decimals; without a std (one
    seed) just the mean."""
    if not math.isfinite(std):
        return f"{mean:.4f}"
    decimals = 4 if std <= 0 else min(6, max(2, 1 - math.floor(math.log10(std))))
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


# ----------------------------------------------------------------------------------------------
# Reading runs
# ----------------------------------------------------------------------------------------------
def find_run(path: str) -> Path:
    """The run folder (the one with metrics.json): ``path`` itself or its ``unlearned_model``."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{path} does not exist")
    if not p.is_dir():
        raise UsageError(f"{path} is not a folder (pass an unlearned_model folder or its parent)")
    for cand in (p, p / "unlearned_model"):
        if (cand / "metrics.json").is_file():
            return cand
    raise UsageError(f"{path} holds no metrics.json (nor does {path.rstrip('/')}/unlearned_model); "
                     f"is it a run folder written by unlearn.py?")


def dig(d, keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def read_run(path: str) -> dict:
    """metrics.json, run_report.yaml and per_sample_nll.csv of one run, checked."""
    import yaml

    run = find_run(path)
    try:
        metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{run / 'metrics.json'} cannot be read as JSON ({first_line(e)})") from None
    if not isinstance(metrics, dict):
        raise UsageError(f"{run / 'metrics.json'} is not a JSON object")
    values = {}
    for name, (keys, _) in METRICS.items():
        v = dig(metrics, keys)
        if v is None:
            if keys[0] in ("test",):
                continue
            raise UsageError(f"{run / 'metrics.json'} has no {'.'.join(keys)}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise UsageError(f"{run / 'metrics.json'}: {'.'.join(keys)} = {v!r} is not a finite number")
        values[name] = float(v)
    rp = run / "run_report.yaml"
    if not rp.is_file():
        raise UsageError(f"{run} has no run_report.yaml")
    try:
        report = yaml.safe_load(rp.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UsageError(f"{rp} cannot be read as YAML ({first_line(e)})") from None
    if not isinstance(report, dict) or not all(isinstance(report.get(k), dict) for k in ("Model", "Training")):
        raise UsageError(f"{rp} lacks the Model and Training sections of the reporting format")
    if "seed" not in report["Training"]:
        raise UsageError(f"{rp} records no Training.seed")
    return {"dir": run, "metrics": values, "report": report, "seed": report["Training"]["seed"],
            "samples": read_per_sample_nll(run / "per_sample_nll.csv")}


def read_per_sample_nll(path: Path) -> pd.DataFrame:
    """per_sample_nll.csv (split, index, nll_before, nll_after), checked: finite numbers, integer
    indices, no (split, index) twice."""
    if not path.is_file():
        raise UsageError(f"{path.parent} has no per_sample_nll.csv (runs of an older unlearn.py lack it; "
                         f"rerun them to get the per-sample tests)")
    try:
        df = pd.read_csv(path, dtype={"split": str})
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as e:
        raise UsageError(f"{path} cannot be read as CSV ({first_line(e)})") from None
    missing = [c for c in ("split", "index", "nll_before", "nll_after") if c not in df.columns]
    if missing:
        raise UsageError(f"{path} lacks the column(s) {', '.join(missing)}")
    if df.empty:
        raise UsageError(f"{path} has no rows")
    for col in ("index", "nll_before", "nll_after"):
        num = pd.to_numeric(df[col], errors="coerce")
        bad = ~np.isfinite(num.to_numpy(dtype=np.float64))
        if col == "index":
            bad |= ~bad & ((num % 1 != 0) | (num < 0)).to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise UsageError(f"{path} line {row + 2}: {col} = {df[col].iloc[row]!r} is not a "
                             f"{'non-negative integer' if col == 'index' else 'finite number'}")
        df[col] = num.astype(np.int64) if col == "index" else num.astype(np.float64)
    dup = df.duplicated(["split", "index"])
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        raise UsageError(f"{path} line {row + 2}: sample {df['split'].iloc[row]} {df['index'].iloc[row]} appears twice")
    return df[["split", "index", "nll_before", "nll_after"]]


# ----------------------------------------------------------------------------------------------
# Grouping
# ----------------------------------------------------------------------------------------------
def setting(report: dict, key: str):
    """Value of a grouping key: ``model`` = Model.base, else a key of Training, Model or Dataset."""
    if key == "model":
        return report["Model"].get("base")
    for section in ("Training", "Model", "Dataset"):
        if isinstance(report.get(section), dict) and key in report[section]:
            return report[section][key]
    raise KeyError(key)


def group_name(report: dict, keys: list[str]) -> str:
    """``<model name>__<method>`` for the default keys; other keys add ``key=value``."""
    parts = []
    for k in keys:
        v = setting(report, k)
        parts.append(model_name(v) if k == "model" else str(v) if k == "method" else f"{k}={v}")
    return "__".join(parts)


def settings_of(report: dict) -> dict:
    """Every setting of a run, flattened to ``Section.key``: Model, Dataset and Training, except
    the per-seed keys (the seed). Hardware and Results are not settings."""
    out = {}
    for section in ("Model", "Dataset", "Training"):
        for k, v in (report.get(section) or {}).items():
            if section == "Training" and k in PER_SEED_KEYS:
                continue
            out[f"{section}.{k}"] = v
    return out


def check_group(name: str, runs: list[dict]) -> None:
    """Every setting except the seed agrees; no seed twice; the same held-out samples."""
    first = settings_of(runs[0]["report"])
    for r in runs[1:]:
        other = settings_of(r["report"])
        for k in sorted(set(first) | set(other)):
            if first.get(k, "<missing>") != other.get(k, "<missing>"):
                raise UsageError(f"group {name}: setting {k} differs between runs ({first.get(k, '<missing>')!r} in "
                                 f"{runs[0]['dir']}, {other.get(k, '<missing>')!r} in {r['dir']}); only the seed may "
                                 f"differ inside a group (or group by it with --group-by)")
    seen = {}
    for r in runs:
        if r["seed"] in seen:
            raise UsageError(f"group {name}: seed {r['seed']} occurs twice ({seen[r['seed']]} and {r['dir']})")
        seen[r["seed"]] = r["dir"]
    keys0 = set(zip(runs[0]["samples"]["split"], runs[0]["samples"]["index"]))
    for r in runs[1:]:
        if set(zip(r["samples"]["split"], r["samples"]["index"])) != keys0:
            raise UsageError(f"group {name}: the per-sample files of {runs[0]['dir']} and {r['dir']} cover different "
                             f"samples (different --split-seed or data?); they cannot be paired")
    names = {tuple(sorted(k for k in METRICS if k in r["metrics"])) for r in runs}
    if len(names) > 1:
        raise UsageError(f"group {name}: some runs have a test split and others not")


def make_groups(runs: list[dict], keys: list[str]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in runs:
        try:
            name = group_name(r["report"], keys)
        except KeyError as e:
            raise UsageError(f"--group-by {e.args[0]}: {r['dir']}/run_report.yaml has no such setting "
                             f"(use model or a key of its Training, Model or Dataset section)") from None
        groups.setdefault(name, []).append(r)
    for name, rs in groups.items():
        rs.sort(key=lambda r: (str(type(r["seed"])), r["seed"]))
        check_group(name, rs)
    return groups


# ----------------------------------------------------------------------------------------------
# Tables and the report
# ----------------------------------------------------------------------------------------------
def summarise(groups: dict, n_boot: int, seed: int) -> pd.DataFrame:
    rows = []
    for name, runs in groups.items():
        for metric in METRICS:
            if metric not in runs[0]["metrics"]:
                continue
            stats = seed_stats([r["metrics"][metric] for r in runs], n_boot, bootstrap_rng(seed, name, metric))
            rows.append({"group": name, "metric": metric, **stats})
    return pd.DataFrame(rows, columns=["group", "metric", "n_seeds", "mean", "std", "ci95_low", "ci95_high", "min", "max"])


def baseline_group(name: str, groups: dict, keys: list[str], baseline: str) -> str | None:
    """The group ``--baseline`` names for ``name``: a group name as given, or (when grouping by
    method) the group with method ``baseline`` and the same other keys."""
    if baseline in groups:
        return baseline
    if "method" not in keys:
        return None
    rep = groups[name][0]["report"]
    for other, runs in groups.items():
        o = runs[0]["report"]
        if setting(o, "method") == baseline and all(setting(o, k) == setting(rep, k) for k in keys if k != "method"):
            return other
    return None


def paired_tests(groups: dict, keys: list[str], baseline: str | None) -> pd.DataFrame:
    pooled = {name: pool_samples([r["samples"] for r in runs]) for name, runs in groups.items()}
    rows = []
    for name, df in pooled.items():
        for split, part in df.groupby("split", sort=False):
            rows.append({"group": name, "metric": f"{split} after-before",
                         **paired_test(part["nll_after"], part["nll_before"])})
    if baseline is not None:
        bases = {name: baseline_group(name, groups, keys, baseline) for name in pooled}
        if all(b is None for b in bases.values()):
            raise UsageError(f"--baseline {baseline} matches no group (groups: {', '.join(groups)})")
        for name, base in bases.items():
            if base is None or base == name:
                continue
            df = pooled[name]
            for split, part in df.groupby("split", sort=False):
                other = pooled[base][pooled[base]["split"] == split]
                if set(part["index"]) != set(other["index"]):
                    raise UsageError(f"--baseline {baseline}: groups {name} and {base} were evaluated on different "
                                     f"{split} samples (different --split-seed or data?); they cannot be paired")
                merged = part.merge(other, on="index", suffixes=("", "_base"))
                rows.append({"group": name, "metric": f"{split} after-{base}",
                             **paired_test(merged["nll_after"], merged["nll_after_base"])})
    return pd.DataFrame(rows, columns=["group", "metric", "n", "mean_diff", "t", "p_t", "p_wilcoxon"])


def common_section(runs: list[dict], section: str) -> dict:
    """A report section of a group: each key's value when all runs agree, else the list of the
    runs' values in seed order (Hardware may differ; settings were checked to agree)."""
    keys = []
    for r in runs:
        for k in (r["report"].get(section) or {}):
            if k not in keys:
                keys.append(k)
    out = {}
    for k in keys:
        vals = [(r["report"].get(section) or {}).get(k) for r in runs]
        out[k] = vals[0] if all(v == vals[0] for v in vals) else vals
    return out


def yaml_scalar(v) -> str:
    import yaml
    return yaml.safe_dump(v, default_flow_style=True, allow_unicode=True, width=10**6).strip().removesuffix("...").strip()


def report_yaml(groups: dict, summary: pd.DataFrame, n_boot: int) -> str:
    """report.yaml text: per group the reporting format, Results as "mean ± std" with comments."""
    import yaml

    lines = ["# aggregate_runs.py: the reporting format per group of runs that differ only in the seed.",
             "# Results are \"mean ± std\" (sample std, ddof 1) over the group's seeds; *_ci95 is the",
             f"# 95% percentile bootstrap interval of the mean ({n_boot} resamples over seeds).", ""]
    for name, runs in groups.items():
        training = common_section(runs, "Training")
        training = {"seeds": [r["seed"] for r in runs], **{k: v for k, v in training.items() if k != "seed"}}
        head = {name: {"Model": common_section(runs, "Model"), "Dataset": common_section(runs, "Dataset"),
                       "Training": training, "Hardware": common_section(runs, "Hardware")}}
        lines.append(yaml.safe_dump(head, sort_keys=False, allow_unicode=True, width=100).rstrip("\n"))
        lines.append("  Results:")
        rows = summary[summary["group"] == name].set_index("metric")
        n = len(runs)
        what = f"mean ± std over {n} seeds" if n > 1 else "1 seed: no std"
        for metric, (_, key) in METRICS.items():
            if metric not in rows.index:
                continue
            r = rows.loc[metric]
            lines.append(f"    {key}: \"{format_pm(r['mean'], r['std'])}\"  # {what}")
            if metric in CI_METRICS and n > 1:
                lines.append(f"    {key}_ci95: {yaml_scalar([round(float(r['ci95_low']), 6), round(float(r['ci95_high']), 6)])}"
                             f"  # bootstrap over seeds")
        lines.append(f"    runs: {yaml_scalar([str(r['dir']) for r in runs])}")
        lines.append("")
    return "\n".join(lines)


def table(groups: dict, summary: pd.DataFrame, tests: pd.DataFrame) -> str:
    """The printed table: a header and one line per group."""
    cols = [("forget_NLL", "forget_NLL"), ("retain_NLL", "retain_NLL"), ("gap", "gap")]
    rows = [["group", "seeds", "forget_NLL", "retain_NLL", "gap", "forget before→after", "p_t (forget)"]]
    for name, runs in groups.items():
        s = summary[summary["group"] == name].set_index("metric")
        cells = [name, str(len(runs))] + [format_pm(s.loc[m, "mean"], s.loc[m, "std"]) for m, _ in cols]
        cells.append(f"{s.loc['forget_NLL_before', 'mean']:.3f} → {s.loc['forget_NLL', 'mean']:.3f}")
        t = tests[(tests["group"] == name) & tests["metric"].str.endswith(" after-before")]
        first = t.iloc[0] if len(t) else None
        cells.append(f"{first['p_t']:.2g} ({first['metric'].split()[0]})" if first is not None and
                     math.isfinite(first["p_t"]) else "n/a")
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                     for r in rows)


def to_csv(df: pd.DataFrame) -> str:
    buf = io.StringIO()
    df.to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Aggregate unlearn.py runs over seeds: summary.csv (mean, std, bootstrap CI), tests.csv "
                    "(paired t and Wilcoxon tests over held-out samples) and report.yaml (mean ± std).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="unlearned_model folders (or their parents)")
    p.add_argument("--group-by", default="model,method",
                   help="comma-separated settings that define a group (model, or a key of run_report.yaml's "
                        "Training/Model/Dataset); every other setting except the seed must agree inside a group")
    p.add_argument("--baseline", default=None,
                   help="a method (or a group name): also test each group's nll_after against that group's, per held-out sample")
    p.add_argument("--n-boot", type=int, default=10000, help="bootstrap resamples for the 95%% CI over seeds")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--outdir", default="outputs/aggregate", help="where summary.csv, tests.csv and report.yaml go")
    return p


def run(a: argparse.Namespace) -> dict:
    if a.n_boot < 1:
        raise UsageError("--n-boot must be >= 1")
    keys = [k.strip() for k in a.group_by.split(",") if k.strip()]
    if not keys or len(set(keys)) != len(keys):
        raise UsageError(f"--group-by {a.group_by!r} must list distinct settings, e.g. model,method")
    if "seed" in keys:
        raise UsageError("--group-by seed would put every run in a group of its own; seeds are what is aggregated")
    outdir = check_outdir(a.outdir, "report.yaml", owned=("summary.csv", "tests.csv", "report.yaml"))
    runs = [read_run(d) for d in a.run_dirs]
    groups = make_groups(runs, keys)
    summary = summarise(groups, a.n_boot, a.seed)
    tests = paired_tests(groups, keys, a.baseline)
    report = report_yaml(groups, summary, a.n_boot)
    files = {outdir / "summary.csv": to_csv(summary), outdir / "tests.csv": to_csv(tests),
             outdir / "report.yaml": report}
    write_atomically(files)
    print(table(groups, summary, tests))
    for n, rs in groups.items():
        if len(rs) == 1:
            print(f"warning: group {n} has a single run: no std and no confidence interval", file=sys.stderr)
    print(f"wrote {', '.join(str(p) for p in files)}")
    return {"summary": summary, "tests": tests, "groups": groups}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool(lambda: run(args), kept="nothing was written")


if __name__ == "__main__":
    sys.exit(main())
