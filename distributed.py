"""Process-group setup and teardown, and the few collectives the trainer needs, with names that say what they do.

The same code runs under `python train.py` (world size 1, no process group) and under `torchrun` (RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT set by the launcher). NCCL when CUDA is available, gloo otherwise.
"""

import datetime
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

import runtime
from config import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Global rank 0: the only process that writes files, checkpoints and W&B."""
        return self.rank == 0


def init_distributed(timeout_s: float = 1800.0) -> DistInfo:
    if "RANK" not in os.environ:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        runtime.check_gpu_supported(device)
        return DistInfo(rank=0, local_rank=0, world_size=1, device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs on this node: "
                            f"lower --nproc_per_node")
        device, backend = torch.device("cuda", local_rank), "nccl"
        runtime.check_gpu_supported(device)  # on every rank, before any kernel or collective
        # Before init_process_group, so NCCL binds this process to its own GPU.
        torch.cuda.set_device(local_rank)
    else:
        device, backend = torch.device("cpu"), "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    store = {}
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        store = {"store": _store_of_this_round(rank, world_size, timeout), "rank": rank, "world_size": world_size}
    dist.init_process_group(backend=backend, timeout=timeout, **store,
                            **({"device_id": device} if backend == "nccl" else {}))
    global _cpu_group
    _cpu_group = dist.new_group(backend="gloo", timeout=timeout) if backend == "nccl" else None
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


ROUND_STORE_KEY = "transformer-translation/round-store-port"


def _store_of_this_round(rank: int, world_size: int, timeout: datetime.timedelta) -> dist.Store:
    """A key-value store that no earlier round of this torchrun job has written to.

    torchrun hands its workers the agent's store (MASTER_ADDR:MASTER_PORT) and keeps that same store across
    --max-restarts rounds. The process group's connection keys of a killed round stay in it, so a worker of the
    next round can read a dead peer's address and fail to connect (pytorch/pytorch#135712). Instead, global
    rank 0 of each round serves a fresh store and publishes its port in the agent's store; the other ranks keep
    reading that key until the port it names answers, since a stale one belongs to a process that is gone."""
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent_store = dist.TCPStore(host, port, is_master=False, timeout=timeout)
    if rank == 0:
        own = dist.TCPStore(host, 0, world_size, is_master=True, timeout=timeout, wait_for_workers=False)
        agent_store.set(ROUND_STORE_KEY, str(own.port))
        return own
    deadline = time.monotonic() + timeout.total_seconds()
    while True:
        round_port = int(agent_store.get(ROUND_STORE_KEY))  # waits until some round has published one
        try:
            store = dist.TCPStore(host, round_port, world_size, is_master=False,
                                  timeout=datetime.timedelta(seconds=2))
            store.set_timeout(timeout)
            return store
        except (RuntimeError, dist.DistError) as e:
            if time.monotonic() > deadline:
                raise RuntimeError(f"global rank 0 published no reachable store at {host} within "
                                   f"{timeout.total_seconds():.0f} s: {e}") from None
            time.sleep(0.2)  # the port of a previous round: rank 0 of this round has not published yet


# A gloo group beside NCCL for small host-side agreements: asking it never waits for the GPU to finish its queue.
_cpu_group = None


def destroy_distributed() -> None:
    global _cpu_group
    _cpu_group = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _all_reduce(values: list[float], op, device: torch.device) -> list[float]:
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op)
    return t.tolist()


def dist_sum(values: list[float], device: torch.device) -> list[float]:
    return _all_reduce(values, dist.ReduceOp.SUM, device)


def dist_max(values: list[float], device: torch.device) -> list[float]:
    return _all_reduce(values, dist.ReduceOp.MAX, device)


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over ranks in place, on its device: the result stays there, so the host does not wait for it."""
    if is_distributed():
        dist.all_reduce(t)
    return t


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any rank; on the CPU (gloo), so the host never waits for the GPU."""
    if not is_distributed():
        return flag
    t = torch.tensor([float(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_cpu_group)
    return bool(t.item())


class LateAgreement:
    """Values that only grow (a stop flag, the share of a time budget spent), agreed by every rank one step late
    without waiting: each call starts an all-reduce (MAX, on the CPU gloo group) of this rank's values and returns
    the result of the previous call's, which has long arrived (zeros at the first call). Every rank gets the same
    answer at the same step. In one process the values come back at once."""

    def __init__(self):
        self.pending = None

    def __call__(self, values: list[float]) -> list[float]:
        if not is_distributed():
            return list(values)
        mine = torch.tensor(values, dtype=torch.float64)
        work = dist.all_reduce(mine, op=dist.ReduceOp.MAX, group=_cpu_group, async_op=True)
        previous, self.pending = self.pending, (work, mine)
        if previous is None:
            return [0.0] * len(values)
        previous[0].wait()
        return previous[1].tolist()

    def close(self) -> None:
        """Wait for the last all-reduce: none may be left in flight when the process group goes."""
        if self.pending is not None:
            self.pending[0].wait()
            self.pending = None


def broadcast_from_main(obj):
    """Rank 0's `obj` on every rank (any picklable object)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_to_main(obj) -> list | None:
    """Every rank's `obj`, in rank order, on rank 0; None elsewhere."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def raise_if_any_failed(error: str | None) -> None:
    """Collective: every rank raises UserError if any rank reported an error, so none is left waiting alone.

    Call it at every start-up step that can fail on some ranks only (files seen by one node, rank-0-only work)."""
    errors = [error]
    if is_distributed():
        errors = [None] * dist.get_world_size()
        dist.all_gather_object(errors, error)
    for rank, message in enumerate(errors):
        if message is not None:
            raise UserError(message if len(errors) == 1 else f"{message} (on rank {rank})")


def _on_main_first(fn):
    """`fn()` on rank 0 (None elsewhere). Whatever it raises there is raised on every rank, so no rank is left
    waiting alone in the next collective: a UserError as itself, anything else as a RuntimeError naming it."""
    result, failure, error = None, None, None
    if not is_distributed() or dist.get_rank() == 0:
        try:
            result = fn()
        except UserError as e:
            error = ("user", str(e))
        except Exception as e:
            failure, error = e, ("crash", f"{type(e).__name__}: {e}")
    error = broadcast_from_main(error)
    if failure is not None:
        raise failure  # rank 0 keeps its own traceback
    if error is not None:
        kind, message = error
        raise UserError(message) if kind == "user" else RuntimeError(f"global rank 0 failed: {message}")
    return result


def run_on_main(fn):
    """Run `fn` on rank 0 only and hand its result to every rank; a UserError raised there is raised on all ranks."""
    return broadcast_from_main(_on_main_first(fn))


def main_first(fn):
    """Run `fn` on rank 0, then on every other rank (so a download lands in the cache once); a UserError on any rank
    is raised on all of them."""
    result, error = _on_main_first(fn), None
    if is_distributed() and dist.get_rank() != 0:
        try:
            result = fn()
        except UserError as e:
            error = str(e)
    raise_if_any_failed(error)
    return result
