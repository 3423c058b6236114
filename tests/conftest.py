"""Fixtures shared by the tests: the offline environment, the toy corpus, and a tiny model trained once."""

import contextlib
import io

import pytest
import torch

from helpers import OFFLINE_ENV, toy_pairs, write_jsonl
from monitor import setup_logging

# Set by torchrun or by a user's shell; a test that needs them sets its own.
LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "WANDB_API_KEY",
                      "TORCHELASTIC_USE_AGENT_STORE")


@pytest.fixture(scope="session", autouse=True)
def offline_session(tmp_path_factory):
    """Offline from the start, with caches in temporary folders: session-scoped fixtures are set up before any
    test's own, and train with this environment too. One thread for torch here, as OMP_NUM_THREADS=1 gives every
    launched process: runs in this process compute as launched ones do, and a busy core does not stall them."""
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as monkeypatch:
        for key, value in OFFLINE_ENV.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_cache")))
        monkeypatch.setenv("WANDB_DIR", str(tmp_path_factory.mktemp("wandb_dir")))
        for key in LAUNCHER_VARIABLES:
            monkeypatch.delenv(key, raising=False)
        yield


@pytest.fixture(autouse=True)
def offline_env(monkeypatch, tmp_path_factory):
    """Each test: caches of its own, and the log as the programs set it up (information to stdout, warnings to
    stderr)."""
    setup_logging(rank=0)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_cache")))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path_factory.mktemp("wandb_dir")))
    for key in LAUNCHER_VARIABLES:
        monkeypatch.delenv(key, raising=False)


@pytest.fixture(scope="session")
def toy_corpus(tmp_path_factory) -> str:
    """The toy corpus as a jsonl file, read by many runs and written by none: 400 pairs; with --valid_size 20 and
    --test_size 20, 360 train: 23 steps an epoch in batches of 16 on one rank, 12 on two."""
    return write_jsonl(tmp_path_factory.mktemp("toy_corpus") / "toy.jsonl", toy_pairs(400))


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """(model folder, training's output) of a tiny model that translates the toy corpus fairly well: 600 pairs, 8
    epochs, trained in this process in a few seconds; the test split is 40 pairs, scored with beam 4 at the end, and
    the last 3 checkpoints are averaged. Read it; a test that writes to it works on a copy."""
    import train

    root = tmp_path_factory.mktemp("trained")
    corpus = write_jsonl(root / "toy.jsonl", toy_pairs(600))
    flags = ["--d_model", "64", "--num_layers", "1", "--num_heads", "2", "--d_ff", "128", "--vocab_size", "400",
             "--batch_size", "32", "--lr", "3e-3", "--warmup_steps", "20", "--num_epochs", "8", "--eval_every",
             "1000", "--save_every", "25", "--keep_last", "3", "--average_last", "3", "--eval_max_sentences", "40",
             "--log_every", "50", "--valid_size", "40", "--test_size", "40", "--wandb_mode", "disabled"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # the log looks sys.stdout up at every line
        train.main([*flags, "--data_files", corpus, "--model_folder", str(root / "w")])
    return root / "w", out.getvalue()
