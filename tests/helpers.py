"""What the tests share besides fixtures: the offline environment, the tiny model, toy corpora, ways to launch
train.py, and stores and rendezvous on ports that their users bind themselves."""

import datetime
import json
import os
import random
import subprocess
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import checkpoint
from model import ModelConfig, Transformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


def write_jsonl(path, pairs, src="en", tgt="it") -> str:
    with open(path, "w", encoding="utf-8") as f:
        for i, (a, b) in enumerate(pairs):
            f.write(json.dumps({"id": str(i), "translation": {src: a, tgt: b}}, ensure_ascii=False) + "\n")
    return str(path)


def toy_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """A small learnable corpus in two languages (noun-adjective order swaps)."""
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


def failure_report(result: subprocess.CompletedProcess) -> str:
    """What a failed launch printed, for an assertion message: the first fatal error or traceback (with the
    stacks faulthandler dumps on a crash) and the end of stderr and stdout, without faulthandler's long list of
    extension modules, which otherwise fills the end of stderr."""
    stderr = "\n".join(line for line in result.stderr.splitlines() if not line.startswith("Extension modules:"))
    starts = [i for i in (stderr.find("Fatal Python error"), stderr.find("Traceback")) if i >= 0]
    first = stderr[min(starts):min(starts) + 4000] if starts else ""
    return (f"exit status {result.returncode}\n--- first error ---\n{first}\n--- end of stderr ---\n"
            f"{stderr[-3000:]}\n--- end of stdout ---\n{result.stdout[-1500:]}")


def torchrun(nproc: int, train_args: list[str], extra: list[str] | None = None, **kwargs):
    return launch([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", *(extra or []),
                   "train.py", *train_args], **kwargs)


# --- Ports: whoever uses a port binds it (port 0: the system picks a free one), so no other process can take it
# between the choice and the use.

def host_store() -> dist.TCPStore:
    """A TCP store served by this (the test's) process on a port it has bound, for as long as the object lives."""
    return dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                         timeout=datetime.timedelta(seconds=300))


def c10d_rendezvous(store: dist.TCPStore, run_id: str, nnodes: int = 2) -> list[str]:
    """torchrun flags for agents that meet in a c10d rendezvous on `store` (see `host_store`): every agent is only a
    client of it (is_host=false), so none tries to bind its port."""
    return [f"--nnodes={nnodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{store.port}",
            f"--rdzv_id={run_id}", "--rdzv_conf=is_host=false"]


def two_agents(run_id: str, train_args: list[list[str]], timeout: float = 240) -> list[subprocess.CompletedProcess]:
    """Two torchrun agents of one worker each, as on two nodes, meeting in a c10d rendezvous served here; the
    worker of each runs train.py with the arguments given for that agent."""
    store = host_store()
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *c10d_rendezvous(store, run_id),
                                "--nproc_per_node=1", "train.py", *args],
                               cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for args in train_args]
    try:
        outputs = [agent.communicate(timeout=timeout) for agent in agents]
    finally:
        for agent in agents:  # only left running when the other failed to end in time
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    return [subprocess.CompletedProcess(agent.args, agent.returncode, out, err)
            for agent, (out, err) in zip(agents, outputs)]


def spawn_ranks(worker, nprocs: int, *args) -> None:
    """`worker(rank, port, *args)` in `nprocs` spawned processes that call `join_as_rank(port, ...)` first. The store
    they meet on is served here until all have ended."""
    store = host_store()
    mp.start_processes(worker, args=(store.port, *args), nprocs=nprocs, start_method="spawn")


def join_as_rank(port: int, rank: int, world_size: int, local_rank: int | None = None) -> None:
    """In a spawned process: the environment torchrun gives a worker, with the store of `spawn_ranks` as the agent's
    store (distributed.init_distributed then has rank 0 serve a store of its own, on a port it binds itself).
    Returns once every rank has got here, so that a short --dist_timeout times the collectives, not how long each
    process took to start."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank if local_rank is None else local_rank),
                      WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      TORCHELASTIC_USE_AGENT_STORE="True")
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=datetime.timedelta(seconds=300))
    store.set(f"tests/arrived/{rank}", "1")
    store.wait([f"tests/arrived/{r}" for r in range(world_size)])


# --- A small network, untrained, for what the model and decoding must do whatever the weights.

def tiny_model(dropout=0.0, **overrides) -> Transformer:
    torch.manual_seed(0)
    cfg = dict(src_vocab_size=50, tgt_vocab_size=60, d_model=32, num_heads=4, num_layers=2, d_ff=64,
               dropout=dropout, max_len=64, pad_id=0)
    cfg.update(overrides)
    return Transformer(ModelConfig(**cfg)).eval()


def random_tokens(batch, length, vocab=50, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, vocab, (batch, length), generator=g)


# --- A GPU, mocked: torch.cuda answers as on a machine with one, and nothing may run a kernel or join a group.

# torch.cuda.get_arch_list() of the PyPI build (CUDA 13) and of the CUDA 12.6 build.
CUDA13_BUILD = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]
CUDA126_BUILD = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]


def fake_gpu(monkeypatch, capability, arch_list, name="Quadro P4000") -> list[str]:
    """What was touched that would run a kernel or join a process group."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: arch_list)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    touched = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: touched.append("set_device"))
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: touched.append("process group"))
    return touched


# --- What a run left in its model folder.

def checkpoint_steps(folder) -> list[int]:
    return [step for step, _ in checkpoint.list_checkpoints(str(folder))]


def metrics(folder) -> list[dict]:
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]
