"""tamper_attack.progress: in a log (stderr not a terminal) a line after the first item, then at least
every 60 s while items finish, and at the end, each with the ETA of a constant rate."""
from __future__ import annotations

import tamper_attack as ta


def test_progress_lines_in_a_log(capsys):
    times = iter([0.0, 10.0, 50.0, 75.0, 100.0, 110.0])
    items = list(ta.progress(range(5), "m step 0 evaluation, forget test", clock=lambda: next(times)))
    assert items == [0, 1, 2, 3, 4]
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["m step 0 evaluation, forget test: 1/5 (10 s, ETA 40 s)",
                     "m step 0 evaluation, forget test: 3/5 (75 s, ETA 50 s)",
                     "m step 0 evaluation, forget test: 5/5 (110 s, ETA 0 s)"]
