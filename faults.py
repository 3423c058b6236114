"""Faults injected on purpose, for the tests and gpu_check.sh only: every hook the code has, in one place.

Each hook is an environment variable that ordinary runs never set:
- TRAINER_TEST_PAUSE_IN_SAVE=STEP:FLAG_FILE: the save of STEP announces itself on stdout once its data is written
  but before it is committed, and blocks (once: FLAG_FILE marks it done), so a test can kill the writer there.
- TRAINER_TEST_OVERFLOW_AT_STEP=N: step N's loss is made infinite, as an fp16 overflow makes it.
"""

import os
import time

PAUSE_IN_SAVE = "TRAINER_TEST_PAUSE_IN_SAVE"
OVERFLOW_AT_STEP = "TRAINER_TEST_OVERFLOW_AT_STEP"


def pause_in_save(step: int) -> None:
    hook = os.environ.get(PAUSE_IN_SAVE)
    if not hook:
        return
    hook_step, flag = hook.split(":", 1)
    if int(hook_step) == step and not os.path.exists(flag):
        open(flag, "w").close()
        print(f"paused in save of step {step}", flush=True)  # the test's cue, read from the trainer's stdout
        while True:
            time.sleep(3600)


def overflow_step() -> int:
    """The step whose loss is made infinite; 0 for none."""
    return int(os.environ.get(OVERFLOW_AT_STEP, "0"))
