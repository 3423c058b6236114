"""Checkpoint files in the model folder: written atomically by rank 0, found and loaded safely on resume.

A checkpoint is written under a temporary name in the target folder, flushed and fsynced, then renamed to a new
step-numbered name (never over an existing file: CIFS refuses that while another node holds it open). A reader
therefore sees either a whole checkpoint or none. Loading uses `weights_only=True`, so a file that carries
pickled code is refused instead of run.
"""

import os
import pickle
import re
import uuid

import torch

from config import UserError

CHECKPOINT_NAME = re.compile(r"^ckpt_(\d{8})\.pt$")


def checkpoint_path(folder: str, step: int) -> str:
    return os.path.join(folder, f"ckpt_{step:08d}.pt")


def list_checkpoints(folder: str) -> list[tuple[int, str]]:
    """(step, path) of every complete checkpoint in the folder, oldest first."""
    if not os.path.isdir(folder):
        return []
    found = [(int(m.group(1)), os.path.join(folder, name))
             for name in os.listdir(folder) if (m := CHECKPOINT_NAME.match(name))]
    return sorted(found)


def check_writable(folder: str) -> None:
    """A clear error before training when the model folder cannot be created or written."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".write-test-{uuid.uuid4().hex}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UserError(f"--model_folder {folder!r} is not writable ({e.strerror or e}): "
                        f"fix its permissions or choose another folder") from None


def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some network filesystems cannot open folders; the file itself was fsynced
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(folder: str, step: int, state: dict, keep_last: int) -> str:
    """Rank 0 only. Write `state` as the checkpoint of `step`, then prune all but the newest `keep_last`."""
    final = checkpoint_path(folder, step)
    if os.path.exists(final):
        return final  # this step is already saved (e.g. --save_every landed on the last step)
    tmp = os.path.join(folder, f".ckpt_{step:08d}.pt.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_folder(folder)
    for _, old in list_checkpoints(folder)[:-keep_last]:
        os.remove(old)
    return final


def load_checkpoint(path: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"refusing to load {path}: it holds objects beyond tensors and plain data, which could run "
                        f"code ({str(e).splitlines()[0]})") from None


def resolve_preload(folder: str, preload: str) -> str | None:
    """The checkpoint path that --preload names, or None for a fresh start."""
    if preload == "none":
        return None
    if preload == "latest":
        found = list_checkpoints(folder)
        return found[-1][1] if found else None
    if preload.isdigit():
        path = checkpoint_path(folder, int(preload))
        if not os.path.isfile(path):
            steps = ", ".join(str(s) for s, _ in list_checkpoints(folder)) or "none"
            raise UserError(f"--preload {preload}: no checkpoint of that step in {folder} (steps there: {steps})")
        return path
    if not os.path.isfile(preload):
        raise UserError(f"--preload {preload!r}: no such file; use 'latest', 'none', a step number or a path")
    return preload


def read_preload(folder: str, preload: str) -> dict | None:
    """The checkpoint --preload names, loaded; None for a fresh start."""
    path = resolve_preload(folder, preload)
    return load_checkpoint(path) if path else None
