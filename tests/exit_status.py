"""Tests only: launched by torchrun in place of train.py, runs train.py's main with the same arguments and writes
this rank's exit status to $EXIT_STATUS_DIR/rank<RANK>. torchrun does not report its workers' statuses when it is
itself stopped by a signal (it exits 1), and "every rank exits with the stop's status, 128 + the signal" is what the
preemption tests must see."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train  # noqa: E402

status = 1  # an exception escaping main
try:
    train.main(sys.argv[1:])
    status = 0
except SystemExit as e:
    status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
finally:
    with open(os.path.join(os.environ["EXIT_STATUS_DIR"], f"rank{os.environ.get('RANK', '0')}"), "w") as f:
        f.write(str(status))
sys.exit(status)
