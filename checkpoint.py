"""Checkpoint files in the model folder: written atomically by rank 0, found and loaded safely on resume.

The commit protocol works on local disks, NFS and CIFS: write under a unique temporary name in the target folder,
flush and fsync, rename to a new step-numbered name (never over an existing file: CIFS refuses that while another
node holds it open), then write a small completion marker the same way. A checkpoint counts only once its marker
exists and names its exact size, so a crash at any moment leaves the previous checkpoints as they were. Loading
uses `weights_only=True`: a file that carries pickled code is refused instead of run.
"""

import json
import logging
import os
import pickle
import re
import time
import uuid

import torch

import faults
from progress import progress
from errors import UserError, described, first_line
from storage import fsync_folder, replace_text, write_new_file

log = logging.getLogger("translation")

CHECKPOINT_NAME = re.compile(r"^ckpt_(\d{8})\.pt$")
REQUIRED_KEYS = ("model", "optimizer", "scheduler", "step", "epoch", "epoch_sample", "config", "rng")
WEIGHTS_KEYS = ("model", "step", "config", "tokenizers")  # a file of weights only (averaged): enough to translate
POINTERS = ("latest", "best")  # files naming the newest checkpoint and the best by validation BLEU, as DeepSpeed's
RETRY_DELAYS_S = (1.0, 4.0, 16.0)  # transient network-drive errors usually pass within seconds
STOPPED = "stopped"  # the exit status of a run stopped by a signal, for the shell that ran torchrun


def checkpoint_path(folder: str, step: int) -> str:
    return os.path.join(folder, f"ckpt_{step:08d}.pt")


def _marker_path(path: str) -> str:
    return path[:-len(".pt")] + ".done"


def _is_complete(path: str) -> bool:
    try:
        with open(_marker_path(path)) as f:
            return json.load(f)["bytes"] == os.path.getsize(path)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def list_checkpoints(folder: str, report_incomplete: bool = False) -> list[tuple[int, str]]:
    """(step, path) of every complete checkpoint in the folder, oldest first."""
    if not os.path.isdir(folder):
        return []
    found = []
    for name in sorted(os.listdir(folder)):
        if m := CHECKPOINT_NAME.match(name):
            path = os.path.join(folder, name)
            if _is_complete(path):
                found.append((int(m.group(1)), path))
            elif report_incomplete:
                log.warning(f"skipping {path}: incomplete (no completion marker, or its size differs)")
    return found


def check_writable(folder: str) -> None:
    """A clear error before training when the model folder cannot be created or written. Creates nothing: a start
    refused later leaves no trace (the folder is made by the first write, once every check has passed)."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    try:
        if not os.path.isdir(existing):
            raise NotADirectoryError(f"{existing} is a file")
        if existing != os.path.abspath(folder):  # to be created: its nearest existing parent must take it
            if not os.access(existing, os.W_OK | os.X_OK):
                raise PermissionError(f"{existing} cannot be written")
            return
        probe = os.path.join(folder, f".write-test-{uuid.uuid4().hex}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UserError(f"--model_folder {folder!r} is not writable ({e.strerror or e}): "
                        f"fix its permissions or choose another folder") from None


def _commit(folder: str, step: int, state: dict) -> str:
    final = checkpoint_path(folder, step)
    if os.path.exists(final):
        os.remove(final)  # an uncommitted leftover of a crashed save of this very step
    write_new_file(final, lambda f: torch.save(state, f))
    faults.pause_in_save(step)
    marker = json.dumps({"step": step, "bytes": os.path.getsize(final)}).encode()
    write_new_file(_marker_path(final), lambda f: f.write(marker))
    fsync_folder(folder)
    return final


def _prune(folder: str, keep_last: int, keep_step: int | None) -> None:
    """Remove all but the newest `keep_last` complete checkpoints and the best one; never the newest."""
    for step, path in list_checkpoints(folder)[:-keep_last]:
        if step != keep_step:
            try:
                os.remove(_marker_path(path))  # marker first: a half-pruned checkpoint is merely incomplete
                os.remove(path)
            except OSError as e:
                log.warning(f"could not remove old checkpoint {path}: {e}")


def save_checkpoint(folder: str, step: int, state: dict, keep_last: int, best_step: int | None = None) -> str | None:
    """Rank 0 only. Commit `state` as the checkpoint of `step` and prune old ones. Transient OSErrors are retried
    with backoff; a save that still fails is reported and returns None, leaving earlier checkpoints intact, so
    that training goes on."""
    final = checkpoint_path(folder, step)
    if _is_complete(final):
        return final
    for attempt, delay in enumerate((0.0, *RETRY_DELAYS_S)):
        time.sleep(delay)
        try:
            path = _commit(folder, step, state)
            _prune(folder, keep_last, best_step)
            _point(folder, step, best_step)
            return path
        except OSError as e:
            error = e
            if attempt < len(RETRY_DELAYS_S):
                log.warning(f"saving checkpoint of step {step} failed ({e}); retrying in "
                            f"{RETRY_DELAYS_S[attempt]:.0f} s")
    log.warning(f"CHECKPOINT OF STEP {step} NOT SAVED after {len(RETRY_DELAYS_S) + 1} attempts ({error}); training "
                f"goes on and earlier checkpoints are intact: free space or fix permissions in {folder}")
    return None


def _point(folder: str, step: int, best_step: int | None) -> None:
    """The `latest` and `best` files: the name of the newest checkpoint, and of the best one by validation BLEU
    (the newest until a validation has run), for people and tools; resume and translate.py read the checkpoints."""
    best = checkpoint_path(folder, best_step) if best_step is not None else None
    for pointer, path in zip(POINTERS, (checkpoint_path(folder, step), best if best and os.path.exists(best) else
                                        checkpoint_path(folder, step))):
        replace_text(os.path.join(folder, pointer), os.path.basename(path) + "\n")


def mark_stopped(folder: str, status: int) -> None:
    """Rank 0, once the checkpoint of a stop is committed: `stopped` holds the run's exit status (143 for SIGTERM).
    torchrun exits 1 when it is itself signalled, whatever its workers return; a wrapper reads the status here."""
    try:
        replace_text(os.path.join(folder, STOPPED), f"{status}\n")
    except OSError as e:
        log.warning(f"could not write {os.path.join(folder, STOPPED)}: {e}")


def clear_stopped(folder: str) -> None:
    """Rank 0, at the start of a run: an earlier stop's `stopped` file no longer describes the folder."""
    try:
        os.remove(os.path.join(folder, STOPPED))
    except FileNotFoundError:
        pass


def load_checkpoint(path: str, weights_will_do: bool = False) -> dict:
    """A checkpoint (or, where `weights_will_do`, a file of weights only, as averaging writes). Raises UserError
    for a file that holds code, or that holds weights only where a checkpoint to resume is needed; other failures
    (truncated, corrupt) propagate."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"refusing to load {path}: it holds objects beyond tensors and plain data, which could run "
                        f"code ({first_line(e)})") from None
    if isinstance(state, dict) and "averaged_from" in state and not weights_will_do:
        raise UserError(f"{path} holds averaged weights only, no optimizer state to resume from: resume from a "
                        f"ckpt_*.pt file")
    required = WEIGHTS_KEYS if weights_will_do else REQUIRED_KEYS
    missing = [k for k in required if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"not a checkpoint of this trainer (missing {', '.join(missing)})")
    return state


def _load_latest_valid(folder: str) -> dict | None:
    for _, path in reversed(list_checkpoints(folder, report_incomplete=True)):
        try:
            return load_checkpoint(path)
        except UserError:
            raise
        except Exception as e:  # truncated or corrupt: fall back to the previous checkpoint
            log.warning(f"skipping {path}: it fails to load ({described(e)})")
            try:
                os.remove(_marker_path(path))  # uncommitted from now on, so a save of its step replaces it
            except OSError:
                pass
    return None


def read_preload(folder: str, preload: str) -> dict | None:
    """The checkpoint that --preload names, loaded; None for a fresh start. 'latest' is the newest checkpoint that
    is complete and loads; an explicitly named one that fails to load is an error."""
    if preload == "latest":
        return _load_latest_valid(folder)
    state = None if preload == "none" else _load_named(folder, preload)
    start = state["step"] if state else 0
    newer = [step for step, _ in list_checkpoints(folder) if step > start]
    if newer:
        raise UserError(f"--preload {preload}: {folder} already holds later checkpoints (steps "
                        f"{', '.join(map(str, newer))}) that this run would mix with; move them away or choose "
                        f"another --model_folder")
    return state


def named_path(folder: str, choice: str, flag: str, keywords: str) -> str:
    """The checkpoint that `--flag choice` names: a step number (a complete checkpoint of that step in `folder`)
    or a file path; `keywords` are the flag's other accepted values, for the error."""
    if choice.isdigit():
        path = checkpoint_path(folder, int(choice))
        if not _is_complete(path):
            steps = ", ".join(str(s) for s, _ in list_checkpoints(folder)) or "none"
            raise UserError(f"--{flag} {choice}: no complete checkpoint of that step in {folder} "
                            f"(steps there: {steps})")
        return path
    if os.path.isfile(choice):
        return choice
    raise UserError(f"--{flag} {choice!r}: no such file; use {keywords}, a step number or a path")


def _load_named(folder: str, preload: str) -> dict:
    path = named_path(folder, preload, "preload", "'latest', 'none'")
    try:
        return load_checkpoint(path)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"--preload {preload}: {path} fails to load ({first_line(e)})") from None


def average_checkpoints(paths: list[str]) -> dict:
    """The mean of the model parameters of the checkpoints at `paths` (summed in float64, one file in memory at a
    time), with what translating needs of the last one (its step, settings and tokenizers), and no optimizer
    state: `averaged_from` lists the steps."""
    total, state, steps = {}, None, []
    for path in progress(paths, len(paths), "averaging checkpoints"):
        state = load_checkpoint(path)
        steps.append(state["step"])
        for name, value in state["model"].items():
            if value.is_floating_point():
                total[name] = total.get(name, 0) + value.double()
    model = {name: (total[name] / len(paths)).to(value.dtype) if name in total else value
             for name, value in state["model"].items()}
    return {**{key: state[key] for key in WEIGHTS_KEYS}, "model": model, "averaged_from": steps}


def write_average_of_last(folder: str, n: int) -> str | None:
    """Rank 0: average the newest `n` complete checkpoints into averaged_<first>-<last>.pt, committed like a
    checkpoint (resume never picks it). None when fewer than two checkpoints exist or the write fails."""
    found = list_checkpoints(folder)[-n:]
    if len(found) < 2:
        return None
    return _write_weights_file(os.path.join(folder, f"averaged_{found[0][0]:08d}-{found[-1][0]:08d}.pt"),
                               [path for _, path in found])


def _write_weights_file(path: str, sources: list[str]) -> str | None:
    """The averaged weights of the checkpoints `sources` written to `path` (over an earlier one); None, with a
    warning, when a checkpoint is damaged or the write fails: the run's own checkpoints stay as they are."""
    try:
        state = average_checkpoints(sources)
        if os.path.exists(path):
            os.remove(path)
        write_new_file(path, lambda f: torch.save(state, f))
    except Exception as e:
        log.warning(f"could not write the weights of {', '.join(map(os.path.basename, sources))} to {path}: "
                    f"{described(e)}")
        return None
    return path


def write_weights(folder: str, step: int) -> str | None:
    """Rank 0: the weights of the checkpoint of `step` alone, as averaging writes them, in weights_<step>.pt."""
    return _write_weights_file(os.path.join(folder, f"weights_{step:08d}.pt"), [checkpoint_path(folder, step)])


def load_model_weights(path: str) -> dict | None:
    """The model parameters of the checkpoint at `path`; None, with a warning, when it is gone or fails to load."""
    try:
        return load_checkpoint(path)["model"]
    except Exception as e:
        log.warning(f"cannot use {path}: {described(e)}")
        return None


def read_weights_source(path: str) -> dict:
    """--init_from: {"model", "config", "path", "step", "folder" (where its tokenizers are), "tokenizers" (their
    fingerprints, where recorded)} of a checkpoint or weights file; of a model folder (the checkpoint its `best`
    file names, else its newest) or of its `latest` or `best` file; or of an export.py folder (model.safetensors,
    config.json and the tokenizers). Rank 0 reads it; any fault is a UserError naming it."""
    if os.path.isfile(os.path.join(path, "model.safetensors")):
        return _read_export(path)
    folder, file = (path, "best") if os.path.isdir(path) else os.path.split(path)
    if file in POINTERS and os.path.isfile(os.path.join(folder, file)):
        with open(os.path.join(folder, file)) as f:
            path = os.path.join(folder, f.read().strip())
    elif os.path.isdir(path) and list_checkpoints(path):
        path = list_checkpoints(path)[-1][1]
    if not os.path.isfile(path):
        raise UserError(f"--init_from {path}: no such file, and no folder with a complete checkpoint or a "
                        f"model.safetensors")
    try:
        state = load_checkpoint(path, weights_will_do=True)
    except UserError as e:
        raise UserError(f"--init_from: {e}") from None
    except Exception as e:
        raise UserError(f"--init_from {path}: cannot read it ({first_line(e)}); give a checkpoint file, a model "
                        f"folder or an export.py folder") from None
    return {"model": state["model"], "config": state["config"], "path": path, "step": state["step"],
            "folder": os.path.dirname(path), "tokenizers": state.get("tokenizers")}


def _read_export(folder: str) -> dict:
    from safetensors.torch import load_file

    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            exported = json.load(f)
        config, model = exported["settings"], load_file(os.path.join(folder, "model.safetensors"))
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"--init_from {folder}: not an export.py folder that loads ({described(e)})") from None
    return {"model": model, "config": config, "path": folder, "step": exported.get("step", 0), "folder": folder,
            "tokenizers": None}


def newest_step(folder: str) -> int:
    """The newest complete checkpoint's step in this process's view of the folder; -1 if none."""
    found = list_checkpoints(folder)
    return found[-1][0] if found else -1
