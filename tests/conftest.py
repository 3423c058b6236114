"""Shared test fixtures: an offline environment, free ports, tiny corpora and a way to launch train.py."""

import json
import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from monitor import setup_logging  # noqa: E402

# No test touches the network: W&B offline or off, the Hugging Face hub unreachable by configuration.
OFFLINE_ENV = {"WANDB_MODE": "disabled", "WANDB_ERROR_REPORTING": "false", "WANDB_SILENT": "true",
               "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

# A tiny model: end-to-end runs take seconds on a laptop CPU.
# fp32: the same numbers on every machine (--precision auto is bf16 on CPUs that compute it natively), so runs under
# different strategies and world sizes can be compared closely.
TINY_MODEL = ["--d_model", "32", "--num_layers", "1", "--num_heads", "2", "--d_ff", "64", "--vocab_size", "400",
              "--batch_size", "16", "--eval_max_sentences", "16", "--log_every", "2", "--warmup_steps", "2",
              "--precision", "fp32"]


@pytest.fixture(autouse=True)
def offline_env(monkeypatch, tmp_path_factory):
    setup_logging(rank=0)  # as the programs log: information to stdout, warnings to stderr
    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_cache")))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path_factory.mktemp("wandb_dir")))
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "WANDB_API_KEY"):
        monkeypatch.delenv(key, raising=False)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_jsonl(path, pairs, src="en", tgt="it") -> str:
    with open(path, "w", encoding="utf-8") as f:
        for i, (a, b) in enumerate(pairs):
            f.write(json.dumps({"id": str(i), "translation": {src: a, tgt: b}}, ensure_ascii=False) + "\n")
    return str(path)


def toy_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """A small learnable corpus in two languages (noun-adjective order swaps)."""
    import random

    rng = random.Random(seed)
    nouns = [("cat", "gatto"), ("dog", "cane"), ("book", "libro"), ("boy", "ragazzo"), ("tree", "albero"),
             ("horse", "cavallo"), ("friend", "amico"), ("garden", "giardino")]
    adjectives = [("red", "rosso"), ("big", "grande"), ("new", "nuovo"), ("old", "vecchio"), ("small", "piccolo")]
    verbs = [("sees", "vede"), ("eats", "mangia"), ("has", "ha"), ("wants", "vuole")]
    pairs = []
    while len(pairs) < n:  # distinct pairs: the loader drops duplicates
        (n1, i1), (a1, j1), (v, w), (n2, i2) = (rng.choice(nouns), rng.choice(adjectives), rng.choice(verbs),
                                                rng.choice(nouns))
        pair = (f"The {a1} {n1} {v} the {n2}.", f"Il {i1} {j1} {w} il {i2}.")
        if pair not in pairs:
            pairs.append(pair)
    return pairs


def child_env(extra: dict | None = None) -> dict:
    """The environment of a launched process: offline, and without the handle of a W&B service that an in-process
    run started in this pytest process (children would share it, and a killed child's run would stay open there)."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return {**env, **OFFLINE_ENV, **(extra or {})}


def launch(args: list[str], env: dict | None = None, timeout: float = 240,
           stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run a command from the repository root with the offline environment; output captured as text."""
    return subprocess.run(args, cwd=ROOT, env=child_env(env), capture_output=True, text=True, timeout=timeout,
                          input=stdin)


def torchrun(nproc: int, train_args: list[str], extra: list[str] | None = None, **kwargs):
    return launch([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", *(extra or []),
                   "train.py", *train_args], **kwargs)
