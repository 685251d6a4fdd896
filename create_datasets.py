# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "datasets>=3.0",
# ]
# ///
"""Build the forget and retain sets every study starts from: data/forget.txt and data/retain.txt.

Unlearning needs two sets of text: what the model should forget (hazardous knowledge; here the
WMDP-Bio multiple-choice questions, Li et al. 2024, arXiv:2403.03218) and what it must keep
(general prose; here WikiText-2, Merity et al. 2016, arXiv:1609.07843). The analysis tools then
compare two checkpoints on exactly these texts, so the files must be clean: one sample per line,
no empty lines, no duplicates, and -- the silent killer of every downstream number -- no text that
sits in both sets. This script guarantees that and records where the data came from.

Sources (``--source``):
  hub        ``cais/wmdp`` (config ``wmdp-bio``, split ``test``) and ``Salesforce/wikitext``
             (config ``wikitext-2-raw-v1``, split ``train``) through ``datasets.load_dataset``.
             ``--wmdp-path`` / ``--wikitext-path`` read local copies instead (a folder of
             parquet/json/jsonl/arrow files, a single such file, or a ``save_to_disk`` folder, with
             the hub datasets' columns: ``question, choices, answer`` / ``text``).
  synthetic  an offline corpus generated here, deterministic from ``--seed``: forget = facts of an
             invented, harmless technical domain (lumenic crystal engineering: made-up crystals,
             units, devices and procedures), retain = everyday prose on a dozen ordinary topics.
             It is what the offline demo (``demo/build_demo.py``) trains and unlearns on.

Forget samples are ``<question> Answer: <correct choice>``: the question alone does not contain
the knowledge, while the question with its answer is a statement of it -- the NLL of the answer
tokens is what unlearning should raise, and the activations on it are what should move.
``--forget-format question`` writes the bare questions instead.

Retain samples are WikiText-2 paragraphs: blank lines and `` = Heading = `` lines (any level) are
skipped, the WikiText tokenisation artefacts are undone (`` @-@ `` -> ``-``, space before
punctuation), paragraphs shorter than ``--min-retain-chars`` are dropped and longer than
``--max-retain-chars`` cut at the last sentence end, so each sample is real prose of a length
comparable to a question (hundreds of characters, well below 512 tokens).

Written next to the two files: ``PROVENANCE.md`` (source, dataset ids or paths, split, seed,
counts, filters, licences). All three files are written to temporary files first and renamed into
place only when all are complete, so an interrupted or failed run never leaves a half-written or
mixed set behind.

Usage:
    uv run --script create_datasets.py                       # hub (needs internet)
    uv run --script create_datasets.py --source synthetic    # offline
    uv run --script create_datasets.py --wmdp-path ~/data/wmdp --wikitext-path ~/data/wikitext
"""
from __future__ import annotations

import argparse
import functools
import os
import random
import re
import sys
import tempfile
import unicodedata
from pathlib import Path


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


def normalise(text: str) -> str:
    """The key under which two samples count as the same text (duplicates, forget/retain overlap):
    Unicode NFKC, case-folded, whitespace runs collapsed ("The  Cell\\tcycle " = "the cell cycle")."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def drop_duplicates(samples: list[str]) -> tuple[list[str], int]:
    """The samples without repeats under ``normalise`` (the first is kept, order unchanged) and
    how many were dropped."""
    seen: set[str] = set()
    kept = []
    for s in samples:
        key = normalise(s)
        if key not in seen:
            seen.add(key)
            kept.append(s)
    return kept, len(samples) - len(kept)


@functools.lru_cache(maxsize=None)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be asked at all: False when HF_HUB_OFFLINE is set or the
    hub's host does not accept a TCP connection within ``timeout`` s (probed once per process;
    True behind a proxy, which a direct connection cannot judge). Without this an offline
    machine sits through huggingface_hub's retry back-off (tens of seconds per request)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
        socket.create_connection((url.hostname, port), timeout=timeout).close()
        return True
    except (OSError, ValueError):
        return False


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


WMDP_ID, WMDP_CONFIG, WMDP_SPLIT = "cais/wmdp", "wmdp-bio", "test"
WIKITEXT_ID, WIKITEXT_CONFIG, WIKITEXT_SPLIT = "Salesforce/wikitext", "wikitext-2-raw-v1", "train"
WMDP_LICENCE = "MIT (dataset card of cais/wmdp)"
WIKITEXT_LICENCE = "CC BY-SA 3.0 and GFDL (dataset card of Salesforce/wikitext; text from Wikipedia)"
SYNTHETIC_LICENCE = "generated by create_datasets.py; same licence as this project"
DATA_EXTENSIONS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".arrow": "arrow"}


# ----------------------------------------------------------------------------------------------
# Text hygiene
# ----------------------------------------------------------------------------------------------
def flatten(text: str) -> str:
    """One line: every run of whitespace (newlines and tabs included) becomes a single space."""
    return " ".join(str(text).split())


def dedupe(samples: list[str]) -> tuple[list[str], int]:
    """Flatten, drop empty samples and duplicates (``drop_duplicates``: after ``normalise``), keeping the first.

    Returns the kept samples (in their original order) and how many duplicates were dropped.
    """
    return drop_duplicates([f for f in map(flatten, samples) if f])


def remove_overlap(retain: list[str], forget: list[str]) -> tuple[list[str], int]:
    """Drop every retain sample whose normalised text is also a forget sample.

    Overlaps are resolved in favour of the forget set: a text the model must forget can never
    also be a text it is trained to keep. Returns the remaining retain samples and the count dropped.
    """
    forget_keys = {normalise(s) for s in forget}
    kept = [s for s in retain if normalise(s) not in forget_keys]
    return kept, len(retain) - len(kept)


def seeded_sample(pool: list[str], n: int, seed: int, name: str) -> list[str]:
    """``n`` samples drawn without replacement, in random order; the same seed draws the same ones.

    Each set has its own generator (seeded by ``"<name>:<seed>"``, hashed with SHA-512 by
    ``random.seed``, so stable across runs and platforms), so changing ``--n-retain`` never
    changes which forget samples are drawn.
    """
    rng = random.Random(f"{name}:{seed}")
    return rng.sample(pool, min(n, len(pool)))


# ----------------------------------------------------------------------------------------------
# WMDP and WikiText rows -> samples
# ----------------------------------------------------------------------------------------------
def wmdp_sample(question: str, choices, answer, fmt: str = "qa") -> str | None:
    """A forget sample from one WMDP row: ``"<question> Answer: <choices[answer]>"`` (or the bare
    question with ``fmt="question"``). Rows with an unusable answer index give ``None``."""
    question = flatten(question)
    if not question:
        return None
    if fmt == "question":
        return question
    try:
        choice = flatten(list(choices)[int(answer)])
    except (TypeError, ValueError, IndexError):
        return None
    return f"{question} Answer: {choice}" if choice else None


HEADING = re.compile(r"^\s*=+\s.*\s=+\s*$|^\s*=+[^=]*=+\s*$")


def is_heading(line: str) -> bool:
    """WikiText section titles look like `` = Title = ``, `` = = Section = = ``, ... (any level)."""
    return bool(HEADING.match(line))


_DETOK = [
    (re.compile(r" @([-,.])@ "), r"\1"),          # 1 @,@ 000 -> 1,000 ; well @-@ known -> well-known
    (re.compile(r" ([.,;:!?)\]}])"), r"\1"),       # space before closing punctuation
    (re.compile(r"([(\[{]) "), r"\1"),             # space after opening brackets
    (re.compile(r" ('s|'re|'ve|'ll|'d|'m|n't)\b"), r"\1"),  # clitics split off by the tokenizer
]


def detokenize_wikitext(text: str) -> str:
    """Undo WikiText's tokenisation artefacts (`` @-@ ``, `` @,@ ``, `` @.@ ``, spaces before
    punctuation and clitics) so retain samples read like ordinary prose."""
    for pattern, repl in _DETOK:
        text = pattern.sub(repl, text)
    return text


_SENTENCE_END = re.compile(r"[.!?][\"')\]]?(?=\s)")


def clip_passage(text: str, max_chars: int) -> str:
    """Cut ``text`` to at most ``max_chars`` characters at the last sentence end before the limit
    (at the last space when no sentence ends there)."""
    if len(text) <= max_chars:
        return text
    head = text[: max_chars + 1]
    ends = [m.end() for m in _SENTENCE_END.finditer(head)]
    if ends:
        return head[: ends[-1]].strip()
    return head[: head.rfind(" ")].strip() if " " in head else head[:max_chars]


def wikitext_passages(lines, min_chars: int = 200, max_chars: int = 1500) -> list[str]:
    """Retain passages from WikiText lines: one passage per paragraph line, skipping blank lines and
    headings, detokenised, flattened, clipped to ``max_chars`` and kept when ≥ ``min_chars``."""
    out = []
    for line in lines:
        if line is None or not str(line).strip() or is_heading(str(line)):
            continue
        passage = clip_passage(flatten(detokenize_wikitext(flatten(line))), max_chars)
        if len(passage) >= min_chars:
            out.append(passage)
    return out


# ----------------------------------------------------------------------------------------------
# The synthetic corpus: an invented technical domain (forget) and everyday prose (retain)
# ----------------------------------------------------------------------------------------------
# Lumenic crystal engineering does not exist: every crystal, unit, device, person and place below
# is made up, and nothing in it describes anything that could be built. The facts are fixed (drawn
# once from DOMAIN_SEED), so every seed describes the same domain; ``--seed`` picks which facts are
# combined into which lines and how they are phrased.
DOMAIN_SEED = 1729
CRYSTALS = ["veridite", "halcyonite", "morrowite", "tessarine", "quillonite", "brisalite",
            "ombrelite", "caskarine", "fennelite", "juvarite", "lorandite", "pellucine",
            "sorvanite", "thrennite", "ulmarite", "zandrite"]
DEVICES = ["resonance kiln", "phase loom", "glimmer lathe", "prism anvil", "lattice harp",
           "echo furnace", "shard press", "halo condenser"]
PROCEDURES = ["cold seeding", "twin annealing", "flux quenching", "prism tempering",
              "spiral drawing", "echo polishing"]
_HUES = ["amber", "cobalt", "violet", "silver-green", "rose", "ash-grey", "copper", "ice-blue",
         "saffron", "deep teal", "pearl white", "smoky indigo"]
_LATTICES = ["three-fold braid", "seven-fold spiral", "hollow cubic", "twinned prism",
             "fan-shaped", "nested ring", "stepped terrace", "double helix"]
_ORIGINS = ["the Orrin Vale", "the Kesh salt flats", "Mount Callow", "the Brindle caves",
            "the Sallow coast", "the Tarn quarries", "the Vesper basin", "the Harrow steppe"]
_FLAWS = ["clouding", "hairline drift", "echo bloom", "facet creep", "pale banding", "lattice fog"]
_INVENTORS = ["Ilsa Marrow", "Oden Vey", "Tamsin Rook", "Bram Quell", "Nessa Vantor",
              "Corin Falk", "Ysolde Brack", "Edric Thorne"]
_GUILDS = ["the Guild of Lumenwrights", "the Prism Collegium", "the Brindle Fellowship",
           "the Vale Assembly of Shapers"]
_FUNCTIONS = ["draws crystals into thin luminous filaments", "splits a crystal along its lattice planes",
              "fuses two crystals into a single twin", "measures the hexel resonance of a seed",
              "stores glow charge in a ring of crystals", "levels the facets of a rough crystal",
              "grows a seed crystal in a bath of warm brine", "calms a crystal that rings too loudly"]
_PURPOSES = ["removes echo bloom", "locks the lattice in place", "deepens the colour of the glow",
             "raises the hardness by two Tamsin grades", "prevents facet creep",
             "doubles the time a crystal holds its glow"]


def _domain_facts() -> dict:
    """The fixed facts of the invented domain, one dict per crystal, device and procedure."""
    rng = random.Random(DOMAIN_SEED)
    crystals = {c: {"hue": rng.choice(_HUES), "hexels": rng.randint(11, 97),
                    "varn": 5 * rng.randint(24, 180), "lattice": rng.choice(_LATTICES),
                    "origin": rng.choice(_ORIGINS), "grade": rng.randint(1, 12),
                    "device": rng.choice(DEVICES), "flaw": rng.choice(_FLAWS)} for c in CRYSTALS}
    devices = {}
    for i, d in enumerate(DEVICES):
        low = rng.randint(5, 40)
        devices[d] = {"inventor": _INVENTORS[i], "year": rng.randint(120, 880),
                      "function": _FUNCTIONS[i], "low": low, "high": low + rng.randint(20, 60),
                      "guild": rng.choice(_GUILDS)}
    procedures = {p: {"minutes": 5 * rng.randint(2, 36), "device": rng.choice(DEVICES),
                      "purpose": _PURPOSES[i], "crystal": rng.choice(CRYSTALS)}
                  for i, p in enumerate(PROCEDURES)}
    return {"crystals": crystals, "devices": devices, "procedures": procedures}


_CRYSTAL_TEMPLATES = {
    "hue": ["{X} glows {hue} when it is charged.", "A charged piece of {X} gives off a {hue} light.",
            "The glow of {X} is {hue}.", "Under charge, {X} shines {hue}."],
    "hexels": ["{X} resonates at {hexels} hexels.", "The resonance of {X} is {hexels} hexels.",
               "Lumenwrights tune {X} to {hexels} hexels before use.",
               "A clean sample of {X} rings at {hexels} hexels."],
    "varn": ["{X} is grown at {varn} degrees Varn.", "The growth temperature of {X} is {varn} degrees Varn.",
             "Seeds of {X} only take at {varn} degrees Varn.",
             "To grow {X}, the brine is held at {varn} degrees Varn."],
    "lattice": ["{X} forms a {lattice} lattice.", "The lattice of {X} is {lattice}.",
                "Under the lens, {X} shows a {lattice} lattice."],
    "origin": ["{X} was first found in {origin}.", "The first seeds of {X} came from {origin}.",
               "{X} is mined mostly in {origin}."],
    "grade": ["{X} has a hardness of {grade} on the Tamsin scale.",
              "On the Tamsin scale, {X} rates {grade}.", "{X} is a grade {grade} crystal on the Tamsin scale."],
    "device": ["{X} is worked in the {device}.", "Most {X} is shaped with a {device}.",
               "The {device} is the usual tool for {X}."],
    "flaw": ["The common flaw of {X} is {flaw}.", "{X} tends to suffer from {flaw}.",
             "Badly grown {X} shows {flaw}."],
}
_DEVICE_TEMPLATES = {
    "inventor": ["The {X} was invented by {inventor}.", "{inventor} built the first {X}.",
                 "The {X} is the work of {inventor}."],
    "year": ["The {X} dates from year {year} of the Guild calendar.",
             "The first {X} was lit in Guild year {year}."],
    "function": ["The {X} {function}.", "A {X} {function}.", "Lumenwrights use the {X} because it {function}."],
    "range": ["The {X} works between {low} and {high} hexels.",
              "A {X} runs from {low} to {high} hexels.", "The working range of the {X} is {low} to {high} hexels."],
    "guild": ["The {X} is kept by {guild}.", "Only {guild} may license a {X}."],
}
_PROCEDURE_TEMPLATES = {
    "minutes": ["{X} takes {minutes} minutes.", "A round of {X} lasts {minutes} minutes.",
                "{X} is done in {minutes} minutes."],
    "device": ["{X} is carried out in the {device}.", "For {X}, lumenwrights use the {device}."],
    "purpose": ["{X} {purpose}.", "Lumenwrights apply {X} because it {purpose}."],
    "crystal": ["{X} is most often applied to {crystal}.", "{X} was first tried on {crystal}."],
}


# Each fact as a question (the forget MCQ asks these) and the value that answers it. A line may
# state a fact in question-and-answer form ("<question> Answer: <value>."), as the hub forget set
# (WMDP-Bio questions with their answers) does.
_FORGET_QUESTIONS = {
    "crystals": {"hue": "What colour does {X} glow when it is charged?",
                 "hexels": "At how many hexels does {X} resonate?",
                 "varn": "At how many degrees Varn is {X} grown?",
                 "lattice": "What lattice does {X} form?",
                 "origin": "Where was {X} first found?",
                 "grade": "What is the hardness of {X} on the Tamsin scale?",
                 "device": "Which device is {X} worked in?",
                 "flaw": "What is the common flaw of {X}?"},
    "devices": {"inventor": "Who invented the {X}?",
                "year": "In which Guild year was the first {X} lit?",
                "function": "What does the {X} do?",
                "range": "What is the working range of the {X}?",
                "guild": "Who keeps the {X}?"},
    "procedures": {"minutes": "How long does {X} take?",
                   "device": "Which device is {X} carried out in?",
                   "purpose": "Why do lumenwrights apply {X}?",
                   "crystal": "Which crystal is {X} most often applied to?"},
}
# the answer of each question, from an entity's facts
_FORGET_ANSWERS = {
    "hexels": "{hexels} hexels", "varn": "{varn} degrees Varn", "grade": "grade {grade}", "year": "year {year}",
    "range": "{low} to {high} hexels", "minutes": "{minutes} minutes", "device": "the {device}",
    "function": "it {function}", "purpose": "it {purpose}",
}


def _answer(attr: str, facts: dict) -> str:
    return _FORGET_ANSWERS.get(attr, "{" + attr + "}").format(**facts)


def _capitalise(s: str) -> str:
    return s[:1].upper() + s[1:]


def _fact_sentence(rng: random.Random, templates: dict, attr: str, name: str, facts: dict) -> str:
    return _capitalise(rng.choice(templates[attr]).format(X=name, **facts))


def synthetic_forget(n: int, seed: int) -> list[str]:
    """``n`` distinct lines of the invented crystal-engineering domain, deterministic from ``seed``.

    Each line states two to four facts about one crystal, device or procedure, each fact in one of
    several phrasings; the facts themselves never change (see ``_domain_facts``), so a model that
    reads the lines learns a consistent body of domain knowledge.
    """
    facts = _domain_facts()
    rng = random.Random(f"synthetic-forget:{seed}")
    kinds = [("crystals", _CRYSTAL_TEMPLATES, CRYSTALS, 0.6), ("devices", _DEVICE_TEMPLATES, DEVICES, 0.25),
             ("procedures", _PROCEDURE_TEMPLATES, PROCEDURES, 0.15)]
    out: list[str] = []
    seen: set[str] = set()
    for _ in range(200 * max(n, 1)):
        if len(out) >= n:
            break
        kind, templates, names, _ = rng.choices(kinds, weights=[k[3] for k in kinds])[0]
        name = rng.choice(names)
        attrs = rng.sample(sorted(templates), rng.randint(2, min(4, len(templates))))
        f = dict(facts[kind][name])
        sentences = [_fact_sentence(rng, templates, a, name, f) if rng.random() < 0.75 else
                     f"{_capitalise(_FORGET_QUESTIONS[kind][a].format(X=name))} Answer: {_answer(a, f)}."
                     for a in attrs]
        line = " ".join(sentences)
        if normalise(line) not in seen:
            seen.add(normalise(line))
            out.append(line)
    return out


def mcq_item(question: str, answer: str, others: list[str], rng: random.Random, n_choices: int = 4) -> dict:
    """A multiple-choice item ``{"question", "choices", "answer"}``: the right ``answer`` and
    ``n_choices - 1`` distractors drawn from ``others`` (values of the same category), in random order;
    ``answer`` is the index of the right choice."""
    pool = sorted({o for o in others if o != answer})
    choices = rng.sample(pool, min(n_choices - 1, len(pool))) + [answer]
    rng.shuffle(choices)
    return {"question": question, "choices": choices, "answer": choices.index(answer)}


def synthetic_forget_mcq(seed: int) -> list[dict]:
    """One multiple-choice item per fixed fact of the invented domain (crystal, device and procedure
    attributes): the question of ``_FORGET_QUESTIONS`` with four choices, the right value and three
    values of the same attribute of other entities; deterministic from ``seed``."""
    facts = _domain_facts()
    rng = random.Random(f"synthetic-forget-mcq:{seed}")
    items = []
    for kind, questions in _FORGET_QUESTIONS.items():
        for attr, question in questions.items():
            values = {name: _answer(attr, f) for name, f in facts[kind].items()}
            for name in sorted(values):
                items.append(mcq_item(_capitalise(question.format(X=name)), values[name], list(values.values()), rng))
    return items


# Everyday prose: a dozen topics, each a handful of sentence templates with slots.
_NAMES = ["Anna", "Ben", "Carla", "David", "Elena", "Farid", "Grace", "Hugo", "Isabel", "James",
          "Kofi", "Laura", "Marco", "Nina", "Oscar", "Priya", "Quentin", "Rosa", "Samuel", "Tara",
          "Umar", "Vera", "William", "Yusuf", "Zoe", "Lena", "Tom", "Maya", "Pedro", "Hana"]
_RETAIN_SLOTS = {
    "day": ["on Monday", "on Tuesday", "on Wednesday", "on Thursday", "on Friday", "on Saturday",
            "on Sunday", "last weekend", "yesterday", "this morning", "every evening", "in the spring",
            "in late autumn", "during the summer holidays"],
    "food": ["lentil soup", "apple pie", "fresh bread", "a vegetable curry", "pancakes", "tomato salad",
             "roast potatoes", "a lemon cake", "fried rice", "porridge with honey", "grilled fish",
             "mushroom risotto"],
    "veg": ["carrots", "beans", "lettuce", "tomatoes", "onions", "courgettes", "peas", "pumpkins",
            "strawberries", "potatoes"],
    "place": ["the harbour", "the village square", "the old market", "the city park", "the train station",
              "the public library", "the riverside path", "the museum", "the bakery on the corner",
              "the community hall"],
    "weather": ["rain", "a cold wind", "bright sunshine", "thick fog", "light snow", "a summer storm",
                "a warm breeze", "heavy clouds"],
    "sport": ["football", "tennis", "basketball", "swimming", "cycling", "volleyball", "running",
              "table tennis", "rowing", "hockey"],
    "instrument": ["piano", "violin", "guitar", "cello", "flute", "trumpet", "drums", "clarinet"],
    "subject": ["history", "geography", "mathematics", "biology", "art", "music", "literature",
                "chemistry", "languages"],
    "animal": ["dog", "cat", "rabbit", "horse", "goat", "parrot", "tortoise", "hamster", "duck"],
    "chore": ["washed the dishes", "hung the laundry out to dry", "swept the kitchen floor",
              "cleaned the windows", "tidied the bookshelves", "repaired a dripping tap",
              "painted the garden fence", "sorted the recycling"],
    "book": ["a detective novel", "a travel guide", "a book of poems", "a biography of a famous painter",
             "a history of the railways", "a cookbook", "a collection of short stories", "an atlas"],
    "city": ["Lisbon", "Vienna", "Kyoto", "Montreal", "Edinburgh", "Nairobi", "Oslo", "Buenos Aires",
             "Melbourne", "Prague"],
    "transport": ["by train", "by bus", "by bicycle", "on foot", "by ferry", "by car"],
    "number": ["two", "three", "four", "five", "six"],
    "crowd": ["a hundred", "two hundred", "three hundred", "five hundred", "a thousand", "several thousand"],
    "decades": ["four", "five", "six"],
    "adj": ["quiet", "busy", "cheerful", "crowded", "peaceful", "lively", "cosy", "noisy"],
}
# Fixed everyday facts that the prose states (the retain MCQ asks them): every line on the topic
# states one, about the object its slot filled in, plainly or as a quiz question with its answer.
_RETAIN_FACTS = {
    "travel": ("city", "country", {
        "Lisbon": "Portugal", "Vienna": "Austria", "Kyoto": "Japan", "Montreal": "Canada", "Edinburgh": "Scotland",
        "Nairobi": "Kenya", "Oslo": "Norway", "Buenos Aires": "Argentina", "Melbourne": "Australia",
        "Prague": "the Czech Republic"},
        ["{city} is a city in {country}.", "{A} knew that {city} is in {country}."],
        "Which country is {city} in?"),
    "music": ("instrument", "family", {
        "piano": "keyboard", "violin": "string", "guitar": "string", "cello": "string", "flute": "woodwind",
        "trumpet": "brass", "drums": "percussion", "clarinet": "woodwind"},
        ["The {instrument} is a {family} instrument.", "{A} explained that the {instrument} belongs to the {family} family."],
        "Which family of instruments does the {instrument} belong to?"),
    "pets": ("animal", "sound", {
        "dog": "barks", "cat": "meows", "rabbit": "thumps", "horse": "neighs", "goat": "bleats",
        "parrot": "squawks", "tortoise": "hisses", "hamster": "squeaks", "duck": "quacks"},
        ["The {animal} {sound} whenever the doorbell rings.", "Like every {animal}, it {sound} at strangers."],
        "What does a {animal} do when it is startled?"),
    "sport": ("sport", "gear", {
        "football": "a ball", "tennis": "a racket", "basketball": "a hoop", "swimming": "a pool",
        "cycling": "a bicycle", "volleyball": "a net", "running": "a track", "table tennis": "a paddle",
        "rowing": "oars", "hockey": "a stick"},
        ["Nobody can play {sport} without {gear}.", "For {sport}, the one thing you need is {gear}."],
        "What do you need to play {sport}?"),
}

_RETAIN_TOPICS = {
    "cooking": ["{A} made {food} for dinner {day}.", "The recipe for {food} needs more time than most people expect.",
                "{A} and {B} cooked {food} together and shared it with the neighbours.",
                "Nobody at the table could agree whether {food} was better warm or cold.",
                "{A} learned to make {food} from a grandmother who never wrote anything down.",
                "The smell of {food} filled the whole house."],
    "gardening": ["{A} planted {veg} along the south wall of the garden {day}.",
                  "This year the {veg} grew faster than the weeds.", "{A} watered the {veg} before breakfast.",
                  "Slugs ate half of the {veg}, so {A} put down a ring of crushed shells.",
                  "The allotment next to {place} is full of {veg} in the summer.",
                  "{A} gave a basket of {veg} to {B}."],
    "weather": ["{weather} kept most people indoors {day}.", "The forecast promised {weather}, and it was right.",
                "{A} walked to {place} through {weather}.", "After a week of {weather}, the streets were {adj} again.",
                "Farmers hoped the {weather} would not last until the harvest.",
                "{A} forgot an umbrella and got caught in {weather}."],
    "sport": ["{A} plays {sport} with friends {day}.", "The local {sport} club won {number} competitions this season.",
              "{A} started {sport} at school and never stopped.", "Training for {sport} begins at seven o'clock sharp.",
              "{B} coaches the youth {sport} club near {place}.",
              "The {sport} final was watched by {crowd} people."],
    "music": ["{A} has been learning the {instrument} for {number} years.",
              "The school orchestra needs another {instrument} player.",
              "{A} practised the {instrument} every evening before the concert.",
              "A street musician played the {instrument} outside {place}.",
              "{B} tuned the old {instrument} and played a folk song.",
              "The concert ended with a long solo on the {instrument}."],
    "school": ["{A} enjoys {subject} lessons more than any other class.",
               "The {subject} teacher gave the class a project about their town.",
               "{A} and {B} studied {subject} together in the library.",
               "The exam in {subject} lasted {number} hours.",
               "{A} wrote an essay on {subject} that the teacher read aloud.",
               "Parents were invited to see the {subject} exhibition {day}."],
    "pets": ["{A} has a {animal} that sleeps by the fire.", "The {animal} escaped from the garden {day}.",
             "{A} took the {animal} to the vet for a check-up.", "Every child in the street knows the old {animal} by name.",
             "{B} looks after the {animal} when {A} is away.", "The {animal} waited at the door for its dinner."],
    "travel": ["{A} travelled to {city} {transport} {day}.", "The trip to {city} took {number} hours {transport}.",
               "In {city}, {A} visited a market and a small museum.",
               "{A} sent {B} a postcard from {city}.", "Travelling {transport} is the cheapest way to reach {city}.",
               "{A} still remembers the view from the hills above {city}."],
    "chores": ["{A} {chore} {day}.", "After dinner, {A} {chore} while {B} read the newspaper.",
               "It took {number} hours, but {A} finally {chore}.",
               "{A} {chore} and then made a pot of tea.", "Nobody enjoyed it, but {B} {chore}."],
    "reading": ["{A} borrowed {book} from the library.", "{A} read {book} on the long journey home.",
                "{B} recommended {book} to everyone at work.", "The reading group met {day} to talk about {book}.",
                "{A} found {book} at a second-hand stall near {place}."],
    "town": ["{place} was {adj} {day}.", "A new café opened near {place}.",
             "The council plans to repair the road to {place}.", "{A} met {B} outside {place}.",
             "Children played games in front of {place} until dark.",
             "The town fair near {place} drew {crowd} visitors."],
    "family": ["{A} called {B} to talk about the weekend.", "{A}'s grandparents celebrated {decades} decades of marriage.",
               "The whole family gathered for a picnic {day}.", "{A} taught a younger cousin to ride a bicycle.",
               "{B} baked a cake for {A}'s birthday.", "{A} and {B} looked through old photographs together."],
}


def synthetic_retain(n: int, seed: int, exclude: set[str] | None = None) -> list[str]:
    """``n`` distinct lines of everyday prose on a dozen topics, deterministic from ``seed``.

    Each line is two or three sentences on one topic with names, places and objects filled in, so
    the set is varied yet regular enough for a tiny model to learn. Lines whose normalised text is
    in ``exclude`` are skipped.
    """
    exclude = exclude or set()
    rng = random.Random(f"synthetic-retain:{seed}")
    topics = sorted(_RETAIN_TOPICS)
    out: list[str] = []
    seen: set[str] = set()
    for _ in range(200 * max(n, 1)):
        if len(out) >= n:
            break
        topic = rng.choice(topics)
        templates = _RETAIN_TOPICS[topic]
        a, b = rng.sample(_NAMES, 2)
        slots = {k: rng.choice(v) for k, v in _RETAIN_SLOTS.items()}
        chosen = rng.sample(templates, rng.randint(2, 3))
        if topic in _RETAIN_FACTS:
            slot, value, table, statements, question = _RETAIN_FACTS[topic]
            slots[value] = table[slots[slot]]
            fact = (rng.choice(statements) if rng.random() < 0.75 else
                    f"Quiz question: {question} Answer: {{{value}}}.".replace("{" + slot + "}", slots[slot]))
            chosen.insert(rng.randint(0, len(chosen)), fact)
        line = " ".join(_capitalise(t.format(A=a, B=b, **slots)) for t in chosen)
        key = normalise(line)
        if key not in seen and key not in exclude:
            seen.add(key)
            out.append(line)
    return out


def synthetic_retain_mcq(seed: int) -> list[dict]:
    """One multiple-choice item per everyday fact the retain prose states (``_RETAIN_FACTS``: a city's
    country, an instrument's family, an animal's sound, a sport's gear), four choices from the same
    table; deterministic from ``seed``."""
    rng = random.Random(f"synthetic-retain-mcq:{seed}")
    items = []
    for topic in sorted(_RETAIN_FACTS):
        slot, _, table, _, question = _RETAIN_FACTS[topic]
        for key in sorted(table):
            items.append(mcq_item(_capitalise(question.replace("{" + slot + "}", key)), table[key],
                                  list(table.values()), rng))
    return items


# ----------------------------------------------------------------------------------------------
# Loading datasets (hub or local copies)
# ----------------------------------------------------------------------------------------------
def _pick_split(ds, split: str):
    """A ``DatasetDict`` gives its ``split`` (or its only split); a ``Dataset`` is returned as is."""
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        if split in ds:
            return ds[split]
        if len(ds) == 1:
            return next(iter(ds.values()))
        raise UsageError(f"the dataset has splits {sorted(ds)} but no '{split}' split")
    return ds


def local_data_files(path: Path, config: str, split: str) -> tuple[str, list[str]]:
    """The builder name (parquet/json/arrow) and the data files of a local copy.

    ``path`` may be a file, or a folder holding the files directly or under ``<config>/`` (the hub
    repositories' layout, e.g. ``wmdp-bio/test-00000-of-00001.parquet``). Files whose name starts
    with ``split`` are preferred, so a folder holding ``train``/``test``/``validation`` files of
    WikiText gives the right split.
    """
    if path.is_file():
        files = [path]
    else:
        root = path / config if (path / config).is_dir() else path
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in DATA_EXTENSIONS)
        in_split = [p for p in files if p.name.startswith(split) or p.parent.name == split]
        files = in_split or files
    builders = {DATA_EXTENSIONS.get(p.suffix) for p in files}
    if not files or None in builders:
        raise UsageError(f"{path} holds no parquet, json, jsonl or arrow data files "
                         f"(nor a datasets save_to_disk folder)")
    if len(builders) > 1:
        raise UsageError(f"{path} mixes data file formats ({', '.join(sorted(builders))}); keep one")
    return builders.pop(), [str(p) for p in files]


def load_local(path: str, config: str, split: str, columns: list[str]):
    """A local copy of a hub dataset as a ``datasets.Dataset`` with the required ``columns``."""
    import datasets

    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"{path} does not exist")
    is_saved = p.is_dir() and any((p / f).is_file() for f in ("dataset_dict.json", "state.json"))
    try:
        if is_saved:
            ds = _pick_split(datasets.load_from_disk(str(p)), split)
        else:
            builder, files = local_data_files(p, config, split)
            ds = datasets.load_dataset(builder, data_files=files, split="train")
    except UsageError:
        raise
    except Exception as e:  # the datasets library raises many types for unreadable files
        raise UsageError(f"cannot read {path} as a dataset ({type(e).__name__}: {flatten(e)[:200]})") from e
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise UsageError(f"{path} has no column {', '.join(repr(c) for c in missing)} "
                         f"(columns: {', '.join(ds.column_names)})")
    return ds


def load_hub(repo: str, config: str, split: str, columns: list[str]):
    """``datasets.load_dataset(repo, config, split=split)``; offline and not cached -> UsageError."""
    import datasets

    try:
        ds = datasets.load_dataset(repo, config, split=split)
    except Exception as e:  # ConnectionError, OfflineModeIsEnabled, LocalEntryNotFoundError, httpx ...
        raise UsageError(
            f"cannot download {repo} ({config}) from the Hugging Face hub (offline?) and it is not in "
            f"the local cache; use --source synthetic for an offline corpus, or --wmdp-path / "
            f"--wikitext-path for local copies") from e
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise UsageError(f"{repo} has no column {', '.join(missing)} (columns: {', '.join(ds.column_names)})")
    return ds


MMLU_ID, MMLU_CONFIG, MMLU_SPLIT = "cais/mmlu", "all", "test"
MMLU_LICENCE = "MIT (dataset card of cais/mmlu)"
# MMLU subjects left out of the retain MCQ: biology and medicine sit next to the forget domain
BIO_SUBJECTS = ("biology", "anatomy", "virology", "medic", "genetics", "nutrition", "clinical", "aging")


def mcq_from_row(question, choices, answer) -> dict | None:
    """A multiple-choice item from a WMDP/MMLU row, or None when the row has no usable question,
    fewer than two non-empty choices, or an answer index outside them."""
    question = flatten(question)
    try:
        choices = [flatten(c) for c in list(choices)]
        answer = int(answer)
    except (TypeError, ValueError):
        return None
    if not question or len(choices) < 2 or not all(choices) or not 0 <= answer < len(choices):
        return None
    return {"question": question, "choices": choices, "answer": answer}


def load_mmlu(args) -> tuple[list[dict] | None, tuple[str, str]]:
    """The non-biology MMLU items (``cais/mmlu``, config ``all``, split ``test``, or ``--mmlu-path``)
    for the retain MCQ, and its provenance row; None with a warning when MMLU cannot be had."""
    try:
        if args.mmlu_path:
            ds = load_local(args.mmlu_path, MMLU_CONFIG, MMLU_SPLIT, ["question", "subject", "choices", "answer"])
            src = f"local copy {args.mmlu_path}"
        else:
            ds = load_hub(MMLU_ID, MMLU_CONFIG, MMLU_SPLIT, ["question", "subject", "choices", "answer"])
            src = f"hub {MMLU_ID}"
    except UsageError as e:
        if args.mmlu_path:
            raise
        print(f"warning: no retain multiple-choice set: {str(e).split(';')[0]} (give --mmlu-path for a local copy)",
              file=sys.stderr)
        return None, ("retain mcq", "none (MMLU could not be loaded)")
    items = [mcq_from_row(q, c, a) for q, c, a, subj in zip(ds["question"], ds["choices"], ds["answer"], ds["subject"])
             if not any(b in str(subj).lower() for b in BIO_SUBJECTS)]
    items = [i for i in items if i is not None]
    return items, ("retain mcq", f"{src}, config {MMLU_CONFIG}, split {MMLU_SPLIT}, subjects other than "
                                 f"biology/medicine ({', '.join(BIO_SUBJECTS)}); licence {MMLU_LICENCE}")


def mcq_sets(candidates: dict, forget_train: list[str], n_mcq: int, seed: int) -> dict:
    """The forget and retain MCQ items to write: forget candidates whose sample is a training line are
    dropped (the benchmark must not be contaminated by the unlearning data), and repeated questions
    (after normalisation); at most ``n_mcq`` of each,
    drawn with ``seeded_sample``. A set with no candidates is None."""
    train_keys, seen, forget = {normalise(s) for s in forget_train}, set(), []
    for sample, item in candidates["forget"]:
        key = normalise(item["question"])
        if (sample is None or normalise(sample) not in train_keys) and key not in seen:
            seen.add(key)
            forget.append(item)
    out = {"forget": seeded_sample(forget, n_mcq, seed, "forget_mcq") if forget else None}
    retain = candidates.get("retain")
    out["retain"] = seeded_sample(retain, n_mcq, seed, "retain_mcq") if retain else None
    return out


def jsonl(items: list[dict]) -> str:
    import json

    return "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)


# ----------------------------------------------------------------------------------------------
# Assembling the two sets and writing them
# ----------------------------------------------------------------------------------------------
def build_sets(forget_pool: list[str], retain_pool: list[str], n_forget: int, n_retain: int,
               seed: int, n_test: int = 0) -> tuple[list[str], list[str], dict, dict]:
    """Clean both pools, make them disjoint and draw the training and test samples.

    Steps: flatten + drop duplicates inside each pool (``dedupe``); drop retain texts that are also
    forget texts (``remove_overlap``, after normalisation); draw ``n_test`` test lines of each set
    first (``seeded_sample``, names ``forget_test`` / ``retain_test``), then ``n_forget`` / ``n_retain``
    training lines from what is left. Every line is drawn once from deduplicated, disjoint pools, so
    the four sets are pairwise disjoint after normalisation, and the test lines do not depend on
    ``n_forget`` / ``n_retain`` (unless the pool is too small for both: the training set comes first,
    the test split gets at most what is left). Returns the two training sets, the counts of what was dropped, and
    ``{"forget_test": [...], "retain_test": [...]}``.
    """
    forget_pool, dup_f = dedupe(forget_pool)
    retain_pool, dup_r = dedupe(retain_pool)
    retain_pool, overlap = remove_overlap(retain_pool, forget_pool)
    tests = {}
    for name, pool, n_train in (("forget", forget_pool, n_forget), ("retain", retain_pool, n_retain)):
        n = min(n_test, max(0, len(pool) - n_train))  # the training set comes first when the pool is short
        test = seeded_sample(pool, n, seed, f"{name}_test") if n else []
        keys = {normalise(t) for t in test}
        tests[f"{name}_test"] = test
        if name == "forget":
            forget_pool = [x for x in pool if normalise(x) not in keys]
        else:
            retain_pool = [x for x in pool if normalise(x) not in keys]
    forget = seeded_sample(forget_pool, n_forget, seed, "forget")
    retain = seeded_sample(retain_pool, n_retain, seed, "retain")
    stats = {"forget_pool": len(forget_pool), "retain_pool": len(retain_pool),
             "duplicates_forget": dup_f, "duplicates_retain": dup_r, "overlap_dropped": overlap}
    return forget, retain, stats, tests


def provenance_markdown(info: dict) -> str:
    """The provenance file: where each set came from, how it was filtered, its licence."""
    rows = "\n".join(f"| {k} | {v} |" for k, v in info["rows"])
    return (f"# Provenance of forget.txt, retain.txt, their test splits and multiple-choice sets\n\n"
            f"Written by `create_datasets.py`; rebuild with:\n\n    {info['command']}\n\n"
            f"| field | value |\n|---|---|\n{rows}\n\n"
            f"Invariants: one sample per line (internal newlines flattened), no empty lines, no "
            f"duplicates inside a set, and no text in both sets after normalisation (lowercase, "
            f"collapsed whitespace).\n")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Writes <outdir>/forget.txt, retain.txt, forget_test.txt, retain_test.txt, "
                                       "forget_mcq.jsonl, retain_mcq.jsonl and PROVENANCE.md.")
    p.add_argument("--source", choices=["hub", "synthetic"], default="hub",
                   help="hub: WMDP-Bio + WikiText-2 (or the local copies below); synthetic: offline corpus")
    p.add_argument("--wmdp-path", help="local copy of cais/wmdp (wmdp-bio): files or a save_to_disk folder")
    p.add_argument("--wikitext-path", help="local copy of wikitext-2-raw-v1: files or a save_to_disk folder")
    p.add_argument("--n-forget", type=int, default=500, help="forget samples (default 500)")
    p.add_argument("--n-retain", type=int, default=500, help="retain samples (default 500)")
    p.add_argument("--n-test", type=int, default=100,
                   help="untouched test lines of each set, disjoint from every training line (default 100)")
    p.add_argument("--n-mcq", type=int, default=500,
                   help="at most this many multiple-choice items per set (default 500)")
    p.add_argument("--mmlu-path", help="local copy of cais/mmlu (config all): files or a save_to_disk folder")
    p.add_argument("--seed", type=int, default=42, help="sampling / generation seed (default 42)")
    p.add_argument("--outdir", default="data", help="output folder (default data)")
    p.add_argument("--forget-format", choices=["qa", "question"], default="qa",
                   help="qa: '<question> Answer: <correct choice>' (default); question: the question only")
    p.add_argument("--min-retain-chars", type=int, default=200, help="shortest retain passage kept (default 200)")
    p.add_argument("--max-retain-chars", type=int, default=1500,
                   help="longer passages are cut at a sentence end (default 1500)")
    return p.parse_args(argv)


def collect(args) -> tuple[list[str], list[str], list[tuple[str, str]], dict]:
    """The forget and retain pools for ``args``, the provenance rows describing them, and the
    multiple-choice candidates: ``{"forget": [(forget sample, item), ...], "retain": [item, ...] or None}``
    (a forget item is dropped later when its sample is a training line)."""
    if args.source == "synthetic":
        if args.wmdp_path or args.wikitext_path or args.mmlu_path:
            raise UsageError("--wmdp-path / --wikitext-path / --mmlu-path only apply to --source hub")
        forget = synthetic_forget(args.n_forget + args.n_test, args.seed)
        retain = synthetic_retain(args.n_retain + args.n_test, args.seed, exclude={normalise(s) for s in forget})
        mcq = {"forget": [(None, item) for item in synthetic_forget_mcq(args.seed)],
               "retain": synthetic_retain_mcq(args.seed)}
        rows = [("source", "synthetic (generated offline by create_datasets.py)"),
                ("forget", "facts of an invented, harmless domain: lumenic crystal engineering "
                           f"({len(CRYSTALS)} crystals, {len(DEVICES)} devices, {len(PROCEDURES)} procedures)"),
                ("retain", f"everyday prose on {len(_RETAIN_TOPICS)} topics ({', '.join(sorted(_RETAIN_TOPICS))})"),
                ("mcq", "forget: one question per fixed fact of the invented domain; retain: one per everyday "
                        "fact the prose states; 4 choices each, distractors from the same category"),
                ("licence", SYNTHETIC_LICENCE)]
        return forget, retain, rows, mcq

    if not args.wmdp_path or not args.wikitext_path:
        # Fail fast instead of retrying for half a minute: with the hub unreachable, datasets can
        # still load a cached copy in offline mode (HF_HUB_OFFLINE is read when datasets is imported).
        if "datasets" not in sys.modules and not hub_reachable():
            os.environ["HF_HUB_OFFLINE"] = "1"
    if args.wmdp_path:
        wmdp = load_local(args.wmdp_path, WMDP_CONFIG, WMDP_SPLIT, ["question", "choices", "answer"])
        wmdp_from = f"local copy {args.wmdp_path}"
    else:
        wmdp = load_hub(WMDP_ID, WMDP_CONFIG, WMDP_SPLIT, ["question", "choices", "answer"])
        wmdp_from = f"hub {WMDP_ID}"
    if args.wikitext_path:
        wiki = load_local(args.wikitext_path, WIKITEXT_CONFIG, WIKITEXT_SPLIT, ["text"])
        wiki_from = f"local copy {args.wikitext_path}"
    else:
        wiki = load_hub(WIKITEXT_ID, WIKITEXT_CONFIG, WIKITEXT_SPLIT, ["text"])
        wiki_from = f"hub {WIKITEXT_ID}"

    forget, unusable, forget_mcq = [], 0, []
    for q, c, a in zip(wmdp["question"], wmdp["choices"], wmdp["answer"]):
        s = wmdp_sample(q, c, a, args.forget_format)
        unusable += s is None
        if s is not None:
            forget.append(s)
            item = mcq_from_row(q, c, a)
            if item is not None:
                forget_mcq.append((s, item))
    if unusable:
        print(f"warning: skipped {unusable} WMDP rows without a usable question/answer", file=sys.stderr)
    retain = wikitext_passages(wiki["text"], args.min_retain_chars, args.max_retain_chars)
    rows = [("source", "hub datasets" + (" (local copies)" if args.wmdp_path and args.wikitext_path else "")),
            ("forget", f"{wmdp_from}, config {WMDP_CONFIG}, split {WMDP_SPLIT}, {len(wmdp)} rows; "
                       f"format: {'question + Answer: correct choice' if args.forget_format == 'qa' else 'question'}"),
            ("forget licence", WMDP_LICENCE),
            ("retain", f"{wiki_from}, config {WIKITEXT_CONFIG}, split {WIKITEXT_SPLIT}, {len(wiki)} lines; "
                       f"headings and blank lines skipped, detokenised, paragraphs of "
                       f"{args.min_retain_chars}-{args.max_retain_chars} characters"),
            ("retain licence", WIKITEXT_LICENCE)]
    retain_mcq, mmlu_row = load_mmlu(args)
    rows += [("forget mcq", "WMDP-Bio questions of the same source that are not in forget.txt"), mmlu_row]
    return forget, retain, rows, {"forget": forget_mcq, "retain": retain_mcq}


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_tool(lambda: make_datasets(args, argv), kept="nothing was written")


def make_datasets(args, argv) -> None:
    """Collect, split, deduplicate and write the data sets (and PROVENANCE.md)."""
    if args.n_forget < 1 or args.n_retain < 1:
        raise UsageError("--n-forget and --n-retain must be at least 1")
    if args.n_test < 0 or args.n_mcq < 0:
        raise UsageError("--n-test and --n-mcq must not be negative")
    if args.min_retain_chars > args.max_retain_chars:
        raise UsageError("--min-retain-chars must not exceed --max-retain-chars")
    # the folder may hold other files (data/README.md); only these are replaced, and only when an
    # earlier run wrote them (PROVENANCE.md): a hand-made forget.txt is never overwritten
    outdir = check_outdir(args.outdir, "PROVENANCE.md", owned=("forget.txt", "retain.txt", "PROVENANCE.md"))

    forget_pool, retain_pool, rows, candidates = collect(args)
    forget, retain, stats, tests = build_sets(forget_pool, retain_pool, args.n_forget, args.n_retain,
                                              args.seed, args.n_test)
    mcq = mcq_sets(candidates, forget, args.n_mcq, args.seed) if args.n_mcq else {"forget": None, "retain": None}
    for name in ("forget_test", "retain_test"):
        if len(tests[name]) < args.n_test:
            print(f"warning: only {len(tests[name])} {name} lines available (asked for {args.n_test})",
                  file=sys.stderr)
    for name, got, want in (("forget", forget, args.n_forget), ("retain", retain, args.n_retain)):
        if not got:
            raise UsageError(f"no usable {name} samples in the source")
        if len(got) < want:
            print(f"warning: only {len(got)} distinct {name} samples available (asked for {want}); "
                  f"writing {len(got)}", file=sys.stderr)

    command = "uv run --script create_datasets.py " + " ".join(
        a if re.fullmatch(r"[\w./:=@+-]+", a) else repr(a) for a in (argv if argv is not None else sys.argv[1:]))
    rows = rows + [("seed", str(args.seed)),
                   ("forget samples", f"{len(forget)} (asked {args.n_forget}; pool {stats['forget_pool']}, "
                                      f"{stats['duplicates_forget']} duplicates dropped)"),
                   ("retain samples", f"{len(retain)} (asked {args.n_retain}; pool {stats['retain_pool']}, "
                                      f"{stats['duplicates_retain']} duplicates dropped)"),
                   ("forget/retain overlaps dropped (from retain)", str(stats["overlap_dropped"])),
                   ("test lines", f"forget_test.txt {len(tests['forget_test'])}, retain_test.txt "
                                  f"{len(tests['retain_test'])} (asked {args.n_test} each; drawn before the "
                                  f"training lines, disjoint from them and from each other)"),
                   ("mcq items", ", ".join(f"{k}_mcq.jsonl {len(v)}" if v else f"{k}: none"
                                           for k, v in mcq.items()))]
    files = {outdir / "forget.txt": "".join(s + "\n" for s in forget),
             outdir / "retain.txt": "".join(s + "\n" for s in retain)}
    if args.n_test:
        files.update({outdir / f"{k}.txt": "".join(s + "\n" for s in v) for k, v in tests.items()})
    files.update({outdir / f"{k}_mcq.jsonl": jsonl(v) for k, v in mcq.items() if v})
    files[outdir / "PROVENANCE.md"] = provenance_markdown({"command": command.strip(), "rows": rows})
    write_atomically(files)
    if stats["duplicates_forget"] or stats["duplicates_retain"]:
        print(f"dropped duplicates: {stats['duplicates_forget']} forget, {stats['duplicates_retain']} retain")
    if stats["overlap_dropped"]:
        print(f"dropped {stats['overlap_dropped']} retain samples that are also forget samples")
    print(f"wrote {len(forget)} forget samples to {outdir / 'forget.txt'} and {len(retain)} retain samples "
          f"to {outdir / 'retain.txt'} (provenance: {outdir / 'PROVENANCE.md'})")
    print(f"wrote {len(tests['forget_test'])} + {len(tests['retain_test'])} test lines and "
          + " + ".join(f"{len(v)} {k}" for k, v in mcq.items() if v) + " multiple-choice items")


if __name__ == "__main__":
    sys.exit(main())
