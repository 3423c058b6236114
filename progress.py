"""Progress of work that can take more than a few seconds (validation decoding, test scoring, translating a file,
averaging checkpoints, training tokenizers): a tqdm bar on a terminal, a log line every tenth of the way in a log
file, and nothing on ranks other than 0 (the log is at WARNING there)."""

import logging
import sys

log = logging.getLogger("translation")

LOG_EVERY_SHARE = 0.1  # without a terminal: a line each time this share more of the work is done


def shown() -> bool:
    """Whether this process reports progress at all: rank 0 (the log is at INFO there)."""
    return log.isEnabledFor(logging.INFO)


def on_terminal() -> bool:
    """Whether a bar can be drawn: rank 0, with stderr (where tqdm draws) a terminal."""
    return shown() and sys.stderr.isatty()


def progress(iterable, total: int, desc: str):
    """`iterable`, reporting how much of `total` items has been taken."""
    if on_terminal():
        from tqdm import tqdm

        yield from tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, leave=False)
        return
    step, next_line = max(1, int(total * LOG_EVERY_SHARE)), None
    for done, item in enumerate(iterable, start=1):
        yield item
        if shown() and total >= 10 and done < total and (next_line is None or done >= next_line):
            log.info(f"{desc}: {done}/{total}")
            next_line = done + step
