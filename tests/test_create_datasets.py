"""create_datasets.py: local copies shaped like the hub datasets, the synthetic source, the
invariants of the written files, and the offline error path."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import create_datasets as cd

ROOT = Path(__file__).resolve().parents[1]

HEADINGS = [" = Valkyria Chronicles III = \n", " = = Gameplay = = \n", " = = = Plot summary = = = \n",
            " = = = = A deep heading = = = = \n"]


def _norm(s: str) -> str:  # independent of cd.normalise
    return " ".join(s.lower().split())


def _wmdp_rows(n: int = 40) -> dict:
    questions = [f"Which enzyme number {i} is discussed in the  fictional\nreport?" for i in range(n)]
    choices = [[f"alpha {i}", f"beta {i}", f"gamma {i}", f"delta {i}"] for i in range(n)]
    answers = [i % 4 for i in range(n)]
    # a duplicate after normalisation (case, whitespace) and a blank question
    questions += [questions[0].upper().replace(" ", "\t"), "   "]
    choices += [[c.upper() for c in choices[0]], choices[1]]
    answers += [answers[0], 0]
    return {"question": questions, "choices": choices, "answer": answers}


def _paragraph(i: int, words: int = 45) -> str:
    body = " ".join(f"word{i}x{j}" for j in range(words))
    return f" The river number {i} is well @-@ known , with 1 @,@ 000 boats ( and more ) . {body} .\n"


def _wikitext_lines(n: int = 60) -> list[str]:
    lines = []
    for i in range(n):
        lines += [HEADINGS[i % len(HEADINGS)], "", _paragraph(i), " A short line .\n"]
    lines.append(_paragraph(0))  # a duplicate paragraph
    return lines


@pytest.fixture(scope="module")
def local_copies(tmp_path_factory):
    """The two datasets as parquet (hub layout), jsonl, and save_to_disk folders."""
    import datasets

    root = tmp_path_factory.mktemp("copies")
    wmdp = datasets.Dataset.from_dict(_wmdp_rows())
    wiki_train = datasets.Dataset.from_dict({"text": _wikitext_lines()})
    wiki_test = datasets.Dataset.from_dict({"text": [_paragraph(1000 + i) for i in range(30)]})

    (root / "pq" / "wmdp" / "wmdp-bio").mkdir(parents=True)
    wmdp.to_parquet(root / "pq" / "wmdp" / "wmdp-bio" / "test-00000-of-00001.parquet")
    (root / "pq" / "wikitext" / "wikitext-2-raw-v1").mkdir(parents=True)
    wiki_train.to_parquet(root / "pq" / "wikitext" / "wikitext-2-raw-v1" / "train-00000-of-00001.parquet")
    wiki_test.to_parquet(root / "pq" / "wikitext" / "wikitext-2-raw-v1" / "test-00000-of-00001.parquet")

    (root / "js" / "wmdp").mkdir(parents=True)
    wmdp.to_json(root / "js" / "wmdp" / "data.jsonl")
    (root / "js" / "wikitext").mkdir(parents=True)
    wiki_train.to_json(root / "js" / "wikitext" / "train.jsonl")

    datasets.DatasetDict({"test": wmdp}).save_to_disk(str(root / "disk" / "wmdp"))
    datasets.DatasetDict({"train": wiki_train, "test": wiki_test}).save_to_disk(str(root / "disk" / "wikitext"))
    return root


def run(outdir, *args) -> int:
    return cd.main(["--outdir", str(outdir), *map(str, args)])


def read_lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n") and "\r" not in text
    return text[:-1].split("\n")


def check_invariants(outdir: Path):
    forget, retain = read_lines(outdir / "forget.txt"), read_lines(outdir / "retain.txt")
    for lines in (forget, retain):
        assert all(line.strip() and line == line.strip() for line in lines)  # no empty lines
        assert len({_norm(s) for s in lines}) == len(lines)  # no duplicates
    assert not {_norm(s) for s in forget} & {_norm(s) for s in retain}  # disjoint
    return forget, retain


# ----------------------------------------------------------------------------------------------
def test_heading_and_text_helpers():
    assert all(cd.is_heading(h) for h in HEADINGS)
    assert not cd.is_heading(" The score was 2 = 2 at half time .")
    assert not cd.is_heading(" x = y and y = z ")
    assert cd.detokenize_wikitext("well @-@ known , 1 @,@ 000 and 3 @.@ 5 ( big ) . He 's here") == \
        "well-known, 1,000 and 3.5 (big). He's here"
    assert cd.flatten(" a\n\tb  \r\n c ") == "a b c"
    assert cd.clip_passage("One two. Three four. Five six seven.", 22) == "One two. Three four."
    assert cd.wmdp_sample("Q?\n", ["x", "y"], 1) == "Q? Answer: y"
    assert cd.wmdp_sample("Q?", ["x", "y"], 5) is None
    assert cd.wmdp_sample("Q?", ["x", "y"], 5, fmt="question") == "Q?"


def test_wikitext_passages_skip_headings_blank_and_short_lines():
    passages = cd.wikitext_passages(_wikitext_lines(5), min_chars=200, max_chars=1500)
    assert len(passages) == 6  # 5 paragraphs + the duplicate (dropped later by dedupe)
    assert all(len(p) >= 200 and "=" not in p and "@" not in p and " ," not in p for p in passages)
    assert passages[0].startswith("The river number 0 is well-known, with 1,000 boats (and more).")
    clipped = cd.wikitext_passages([_paragraph(1, words=400)], min_chars=20, max_chars=300)
    assert clipped == ["The river number 1 is well-known, with 1,000 boats (and more)."]  # cut at a sentence end
    assert cd.wikitext_passages([_paragraph(1, words=400)], min_chars=200, max_chars=300) == []  # then too short


@pytest.mark.parametrize("fmt", ["pq", "js", "disk"])
def test_local_copies_counts_headings_and_provenance(local_copies, tmp_path, fmt, capsys):
    out = tmp_path / "data"
    rc = run(out, "--wmdp-path", local_copies / fmt / "wmdp", "--wikitext-path", local_copies / fmt / "wikitext",
             "--n-forget", 25, "--n-retain", 30, "--seed", 7)
    assert rc == 0
    forget, retain = check_invariants(out)
    assert (len(forget), len(retain)) == (25, 30)
    rows = _wmdp_rows()
    by_question = {" ".join(q.split()): c[a] for q, c, a in zip(rows["question"], rows["choices"], rows["answer"])}
    for s in forget:  # "<question> Answer: <correct choice>"
        q, answer = s.split(" Answer: ")
        assert by_question[q] == answer
    assert all(r.startswith("The river number ") and "word" in r and len(r) >= 200 for r in retain)
    assert not any(int(r.split()[3]) >= 1000 for r in retain)  # the train split, not the test split
    prov = (out / "PROVENANCE.md").read_text()
    assert "MIT" in prov and "CC BY-SA 3.0" in prov and "seed | 7" in prov and "wmdp-bio" in prov
    assert "wrote 25 forget samples" in capsys.readouterr().out


def test_local_formats_give_identical_sets(local_copies, tmp_path):
    outputs = []
    for fmt in ("pq", "js", "disk"):
        out = tmp_path / fmt
        assert run(out, "--wmdp-path", local_copies / fmt / "wmdp", "--wikitext-path",
                   local_copies / fmt / "wikitext", "--n-forget", 10, "--n-retain", 10) == 0
        outputs.append(((out / "forget.txt").read_bytes(), (out / "retain.txt").read_bytes()))
    assert outputs[0] == outputs[1] == outputs[2]


def test_overlap_between_sets_is_dropped_from_retain_and_reported(tmp_path, capsys):
    import datasets

    shared = [f"The   shared passage {i} " + " ".join(f"tok{i}_{j}" for j in range(40)) for i in range(5)]
    wmdp = datasets.Dataset.from_dict({"question": shared + ["Unrelated question one?", "Unrelated question two?"],
                                       "choices": [["a", "b"]] * 7, "answer": [0] * 7})
    wiki = datasets.Dataset.from_dict({"text": [s.upper() + "\n" for s in shared] + [_paragraph(i) for i in range(8)]})
    wmdp.to_parquet(tmp_path / "wmdp.parquet")
    wiki.to_parquet(tmp_path / "train.parquet")
    out = tmp_path / "data"
    rc = run(out, "--wmdp-path", tmp_path / "wmdp.parquet", "--wikitext-path", tmp_path / "train.parquet",
             "--forget-format", "question", "--n-forget", 7, "--n-retain", 8)
    assert rc == 0
    forget, retain = check_invariants(out)
    assert len(forget) == 7 and len(retain) == 8
    assert "dropped 5 retain samples that are also forget samples" in capsys.readouterr().out
    assert "overlaps dropped (from retain) | 5" in (out / "PROVENANCE.md").read_text()


def test_too_few_samples_warns_and_writes_what_exists(local_copies, tmp_path, capsys):
    out = tmp_path / "data"
    assert run(out, "--wmdp-path", local_copies / "pq" / "wmdp", "--wikitext-path", local_copies / "pq" / "wikitext",
               "--n-forget", 1000, "--n-retain", 5) == 0
    assert len(read_lines(out / "forget.txt")) == 40  # 40 usable rows: one duplicate, one blank question
    assert "only 40 distinct forget samples available (asked for 1000)" in capsys.readouterr().err


def test_bad_local_path_is_one_error_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run(tmp_path / "d", "--wmdp-path", tmp_path / "nope", "--wikitext-path", tmp_path / "empty") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "nope" in err[0]
    assert not (tmp_path / "d").exists()


# ----------------------------------------------------------------------------------------------
def test_synthetic_counts_disjoint_and_deterministic(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert run(a, "--source", "synthetic") == 0
    assert run(b, "--source", "synthetic") == 0
    assert run(c, "--source", "synthetic", "--seed", 43) == 0
    forget, retain = check_invariants(a)
    assert (len(forget), len(retain)) == (500, 500)
    for name in ("forget.txt", "retain.txt"):
        assert (a / name).read_bytes() == (b / name).read_bytes()  # same seed -> same bytes
    assert (a / "PROVENANCE.md").read_text().replace(str(a), "X") == (b / "PROVENANCE.md").read_text().replace(str(b), "X")
    assert (a / "forget.txt").read_bytes() != (c / "forget.txt").read_bytes()
    assert (a / "retain.txt").read_bytes() != (c / "retain.txt").read_bytes()
    check_invariants(c)


def test_synthetic_domains_are_separate_and_consistent():
    forget = cd.synthetic_forget(300, seed=1)
    retain = cd.synthetic_retain(300, seed=1)
    domain_words = {w for name in cd.CRYSTALS + cd.DEVICES + cd.PROCEDURES for w in name.split()} | {"hexels", "varn"}
    domain_words -= {"press", "drawing", "seeding", "cold"}  # ordinary words inside a few device names
    retain_words = {w.strip(".,'").lower() for line in retain for w in line.split()}
    assert not domain_words & retain_words
    assert sum(any(c in line.lower() for c in cd.CRYSTALS) for line in forget) > 150
    # every statement of a crystal's resonance gives the same number of hexels
    facts = cd._domain_facts()["crystals"]
    for line in forget:
        for sentence in line.split(". "):
            words = sentence.lower().rstrip(".").split()
            if "hexels" in words and (names := [w for w in words if w in facts]):
                assert str(facts[names[0]]["hexels"]) in words
    assert len(set(retain)) == 300 and len({line.split()[0] for line in retain}) > 20


def test_sampling_is_stable_when_the_other_count_changes():
    pool = [f"sample {i}" for i in range(100)]
    assert cd.seeded_sample(pool, 10, 42, "forget") == cd.seeded_sample(pool, 10, 42, "forget")
    assert cd.seeded_sample(pool, 10, 42, "forget") != cd.seeded_sample(pool, 10, 42, "retain")
    f1, _, _ = cd.build_sets(pool, [f"other {i}" for i in range(50)], 10, 5, seed=3)
    f2, _, _ = cd.build_sets(pool, [f"other {i}" for i in range(50)], 10, 40, seed=3)
    assert f1 == f2


# ----------------------------------------------------------------------------------------------
def test_offline_hub_is_one_sentence_and_leaves_files_intact(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    before = {name: f"old {name}\n".encode() for name in ("forget.txt", "retain.txt", "PROVENANCE.md")}
    for name, data in before.items():
        (out / name).write_bytes(data)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run([sys.executable, str(ROOT / "create_datasets.py"), "--source", "hub", "--outdir", str(out)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "Traceback" not in proc.stderr
    assert "--source synthetic" in err[0] and "--wmdp-path" in err[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched, no temp files left


def test_atomic_write_keeps_old_files_when_a_write_fails(tmp_path):
    (tmp_path / "forget.txt").write_text("old\n")
    (tmp_path / "blocker").write_text("a file where a folder should be")
    with pytest.raises(cd.UsageError, match="cannot write"):   # an OSError, as one line
        cd.write_atomically({tmp_path / "forget.txt": "new\n", tmp_path / "blocker" / "retain.txt": "new\n"})
    assert (tmp_path / "forget.txt").read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "forget.txt"]
