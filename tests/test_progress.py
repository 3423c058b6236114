"""Long work shows its progress on rank 0 only: a bar on a terminal, a line every tenth of the way in a log file."""

import sys

from monitor import setup_logging
from progress import progress


def test_without_a_terminal_progress_is_a_log_line_every_tenth_of_the_way(capsys):
    assert list(progress(range(50), 50, "translating")) == list(range(50))
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"translating: {done}/50" for done in range(1, 50, 5)]
    assert list(progress(range(5), 5, "short")) == list(range(5)) and not capsys.readouterr().out  # too short to say


def test_on_a_terminal_a_bar_and_on_other_ranks_nothing(capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert list(progress(range(30), 30, "averaging checkpoints")) == list(range(30))
    captured = capsys.readouterr()
    assert "averaging checkpoints:" in captured.err and "/30 [" in captured.err and not captured.out  # a tqdm bar
    setup_logging(rank=1)
    assert list(progress(range(30), 30, "averaging checkpoints")) == list(range(30))
    captured = capsys.readouterr()
    assert not captured.err and not captured.out
