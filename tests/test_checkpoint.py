"""The checkpoint commit protocol, recovery from damaged files, retries, pruning, and a folder lost mid-run."""

import builtins
import contextlib
import errno
import json
import os
import shutil
import subprocess
import unittest.mock

import pytest
import torch

import checkpoint
import storage
import train
from helpers import TINY_MODEL


def state(step: int) -> dict:
    return {"model": {"w": torch.full((3,), float(step))}, "optimizer": {}, "scheduler": {}, "step": step,
            "epoch": 0, "epoch_sample": step, "config": {}, "rng": [], "tokenizers": {}}


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(checkpoint, "RETRY_DELAYS_S", (0.0, 0.0))


def test_commit_writes_data_then_marker_and_leaves_no_temporaries(tmp_path):
    path = checkpoint.save_checkpoint(str(tmp_path), 5, state(5), keep_last=2)
    assert path == str(tmp_path / "ckpt_00000005.pt")
    assert sorted(os.listdir(tmp_path)) == ["best", "ckpt_00000005.done", "ckpt_00000005.pt", "latest"]
    assert json.loads((tmp_path / "ckpt_00000005.done").read_text())["bytes"] == os.path.getsize(path)
    assert checkpoint.read_preload(str(tmp_path), "latest")["step"] == 5


def test_uncommitted_and_truncated_checkpoints_are_skipped_with_a_warning(tmp_path, capsys):
    folder = str(tmp_path)
    checkpoint.save_checkpoint(folder, 2, state(2), keep_last=5)
    checkpoint.save_checkpoint(folder, 4, state(4), keep_last=5)
    torch.save(state(6), tmp_path / "ckpt_00000006.pt")  # the writer died before the marker
    (tmp_path / ".ckpt_00000008.pt.tmp-0123abcd").write_bytes(b"half a checkpoint")  # died mid-write
    data = (tmp_path / "ckpt_00000004.pt").read_bytes()
    (tmp_path / "ckpt_00000004.pt").write_bytes(data[:len(data) // 2])  # truncated behind our back
    (tmp_path / "ckpt_00000004.done").write_text(json.dumps({"step": 4, "bytes": len(data) // 2}))
    assert checkpoint.read_preload(folder, "latest")["step"] == 2
    err = capsys.readouterr().err
    assert "skipping" in err and "ckpt_00000006.pt: incomplete" in err and "ckpt_00000004.pt: it fails to load" in err
    # The damaged step loses its marker, so saving that step again replaces it; temporaries are cleared at start.
    storage.remove_stale_temporaries(folder)
    assert not (tmp_path / ".ckpt_00000008.pt.tmp-0123abcd").exists()
    checkpoint.save_checkpoint(folder, 4, state(4), keep_last=5)
    assert checkpoint.read_preload(folder, "latest")["step"] == 4


def test_transient_errors_are_retried(tmp_path, monkeypatch, capsys):
    calls, real_save = [], torch.save

    def flaky_save(obj, f):
        calls.append(1)
        if len(calls) <= 2:
            raise OSError(5, "Input/output error")
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", flaky_save)
    assert checkpoint.save_checkpoint(str(tmp_path), 3, state(3), keep_last=2)
    assert len(calls) == 3 and "retrying" in capsys.readouterr().err
    assert checkpoint.read_preload(str(tmp_path), "latest")["step"] == 3
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def test_a_save_that_keeps_failing_is_reported_and_harms_nothing(tmp_path, monkeypatch, capsys):
    checkpoint.save_checkpoint(str(tmp_path), 1, state(1), keep_last=2)
    monkeypatch.setattr(torch, "save", lambda obj, f: (f.write(b"partial"), (_ for _ in ()).throw(
        OSError(28, "No space left on device"))))
    assert checkpoint.save_checkpoint(str(tmp_path), 2, state(2), keep_last=2) is None
    assert "CHECKPOINT OF STEP 2 NOT SAVED" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["best", "ckpt_00000001.done", "ckpt_00000001.pt", "latest"]
    assert (tmp_path / "latest").read_text() == "ckpt_00000001.pt\n"  # still naming what is there


def test_pruning_keeps_the_newest_and_the_best(tmp_path):
    for step in range(1, 7):
        checkpoint.save_checkpoint(str(tmp_path), step, state(step), keep_last=2, best_step=2)
    assert [s for s, _ in checkpoint.list_checkpoints(str(tmp_path))] == [2, 5, 6]


@contextlib.contextmanager
def read_only(folder):
    """Root ignores permission bits, so as root the folder is made immutable instead; where even that is not
    permitted (a container without CAP_LINUX_IMMUTABLE), every write below the folder fails as on a read-only drive."""
    if os.geteuid() != 0:
        os.chmod(folder, 0o555)
        try:
            yield
        finally:
            os.chmod(folder, 0o755)
    elif shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        real_open = builtins.open

        def refusing_open(file, mode="r", *args, **kwargs):
            if str(file).startswith(str(folder)) and any(flag in mode for flag in "wax+"):
                raise OSError(errno.EROFS, "Read-only file system", str(file))
            return real_open(file, mode, *args, **kwargs)

        with unittest.mock.patch("builtins.open", refusing_open):
            yield


def test_folder_lost_mid_run_training_goes_on_and_earlier_checkpoints_survive(tmp_path, toy_corpus, monkeypatch,
                                                                                capsys):
    folder = tmp_path / "w"
    real_save = checkpoint.save_checkpoint
    with contextlib.ExitStack() as stack:
        def save_then_lose_the_folder(*args, **kwargs):
            path = real_save(*args, **kwargs)
            if args[1] == 2:
                stack.enter_context(read_only(folder))
            return path

        monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_lose_the_folder)
        train.main([*TINY_MODEL, "--data_files", toy_corpus, "--valid_size", "20", "--test_size", "20",
                    "--model_folder", str(folder), "--max_steps", "6", "--save_every", "2", "--eval_every", "50"])
    out, err = capsys.readouterr()
    assert "done: 6 steps" in out
    assert "CHECKPOINT OF STEP 4 NOT SAVED" in err and "CHECKPOINT OF STEP 6 NOT SAVED" in err
    assert [s for s, _ in checkpoint.list_checkpoints(str(folder))] == [2]
    assert checkpoint.read_preload(str(folder), "latest")["step"] == 2


def test_latest_and_best_pointers_name_the_newest_checkpoint_and_the_best_one(tmp_path):
    folder = str(tmp_path)
    checkpoint.save_checkpoint(folder, 1, state(1), keep_last=2)
    assert (tmp_path / "latest").read_text() == (tmp_path / "best").read_text() == "ckpt_00000001.pt\n"
    for step in (2, 3, 4):
        checkpoint.save_checkpoint(folder, step, state(step), keep_last=2, best_step=2)
    assert (tmp_path / "latest").read_text() == "ckpt_00000004.pt\n"
    assert (tmp_path / "best").read_text() == "ckpt_00000002.pt\n" and (tmp_path / "ckpt_00000002.pt").exists()
    assert not [name for name in os.listdir(tmp_path) if ".tmp-" in name]


def test_an_average_holds_weights_only_translates_and_is_refused_as_a_resume_point(tmp_path):
    folder = str(tmp_path)
    for step in (2, 4):
        checkpoint.save_checkpoint(folder, step, state(step), keep_last=3)
    path = checkpoint.write_average_of_last(folder, 2)
    averaged = checkpoint.load_checkpoint(path, weights_will_do=True)
    assert sorted(averaged) == ["averaged_from", "config", "model", "step", "tokenizers"]  # no Adam moments
    assert torch.equal(averaged["model"]["w"], torch.full((3,), 3.0)) and averaged["averaged_from"] == [2, 4]
    with pytest.raises(checkpoint.UserError, match="averaged weights only"):
        checkpoint.read_preload(folder, path)
    assert checkpoint.read_preload(folder, "latest")["step"] == 4  # resume never picks the average


def test_init_from_names_what_it_cannot_start_from(tmp_path):
    (tmp_path / "w").mkdir()
    checkpoint.save_checkpoint(str(tmp_path / "w"), 3, state(3), keep_last=2)
    assert checkpoint.read_weights_source(str(tmp_path / "w"))["step"] == 3  # the folder's best (here, newest)
    assert checkpoint.read_weights_source(str(tmp_path / "w" / "latest"))["path"].endswith("ckpt_00000003.pt")
    (tmp_path / "empty").mkdir()
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    for path, message in ((tmp_path / "missing", "no such file, and no folder with a complete checkpoint"),
                          (tmp_path / "empty", "no such file, and no folder with a complete checkpoint"),
                          (tmp_path / "other.pt", r"cannot read it \(not a checkpoint of this trainer")):
        with pytest.raises(checkpoint.UserError, match=f"--init_from {path}: {message}"):
            checkpoint.read_weights_source(str(path))
