"""Process-group setup and teardown, and the few collectives the trainer needs, with names that say what they do.

The same code runs under `python train.py` (world size 1, no process group) and under `torchrun` (RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT set by the launcher). On GPUs one process group with two backends,
`cpu:gloo,cuda:nccl`: CUDA tensors go through NCCL, CPU tensors through gloo (the gradient norm of FSDP's CPU-offloaded
shards, the small host-side agreements, and the object collectives, which then never sit in an NCCL kernel that
its watchdog may abort). gloo alone on CPUs.
"""

import datetime
import gc
import os
import socket
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

import runtime
from errors import UserError


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


def init_distributed(timeout_s: float = 1800.0, device: str = "auto") -> DistInfo:
    """This process's place in the job and its device (`device`: --device), with the process group set up when
    launched by torchrun."""
    if "RANK" not in os.environ:
        chosen = runtime.choose_device(device)
        runtime.check_gpu_supported(chosen)
        return DistInfo(rank=0, local_rank=0, world_size=1, device=chosen)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    if runtime.choose_device(device, local_rank).type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs on this node: "
                            f"lower --nproc_per_node")
        device, backend = torch.device("cuda", local_rank), "cpu:gloo,cuda:nccl"
        runtime.check_gpu_supported(device)  # on every rank, before any kernel or collective
        # Before init_process_group, so NCCL binds this process to its own GPU.
        torch.cuda.set_device(local_rank)
    else:
        device, backend = torch.device("cpu"), "gloo"
    gloo_interface_from_nccl(os.environ)
    timeout = datetime.timedelta(seconds=timeout_s)
    store = {}
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        store = {"store": _store_of_this_round(rank, world_size, timeout), "rank": rank, "world_size": world_size}
    dist.init_process_group(backend=backend, timeout=timeout, **store,
                            **({"device_id": device} if device.type == "cuda" else {}))
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def gloo_interface_from_nccl(environ) -> None:
    """gloo finds its network interface by resolving the host name, which on many images gives 127.0.1.1 (start-up
    then fails or hangs across nodes). Users who name the interface for NCCL (NCCL_SOCKET_IFNAME) mean the same one
    for gloo: GLOO_SOCKET_IFNAME is set from it unless given. NCCL's value is a list of name prefixes ("eth", "ens"),
    exact names ("=eth0") or exclusions ("^docker", which gloo cannot express: left alone); gloo wants exact names,
    so a prefix becomes the first interface of this machine that starts with it."""
    wanted = environ.get("NCCL_SOCKET_IFNAME", "")
    if environ.get("GLOO_SOCKET_IFNAME") or not wanted or wanted.startswith("^"):
        return
    if wanted.startswith("="):
        names = wanted[1:].split(",")
    else:
        present = [name for _, name in socket.if_nameindex()]
        names = [next((name for name in present if name.startswith(prefix)), None) for prefix in wanted.split(",")]
        names = [name for name in names if name]
    if names:
        environ["GLOO_SOCKET_IFNAME"] = names[0]


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


def destroy_distributed() -> None:
    """Frees what still holds the process group, then the group. FSDP's state, hooks and DTensors form reference
    cycles that keep buffers and pending work of its collectives after the run returns; left to the cyclic
    collector, they could be freed during interpreter shutdown, after the group is gone, where gloo aborts the
    process. Collected here, while everything they refer to is whole."""
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """Whether there are other ranks to talk to: a process group of one (torchrun --nproc_per_node=1) has none, so
    every collective below returns at once."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


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
    dist.all_reduce(t, op=dist.ReduceOp.MAX)  # a CPU tensor: gloo
    return bool(t.item())


class LateAgreement:
    """Values that only grow (a stop flag, the share of a time budget spent), agreed by every rank one step late
    without waiting: each call starts an all-reduce (MAX, of a CPU tensor: gloo) of this rank's values and returns
    the result of the previous call's, which has long arrived (zeros at the first call). Every rank gets the same
    answer at the same step. In one process the values come back at once."""

    def __init__(self):
        self.pending = None

    def __call__(self, values: list[float]) -> list[float]:
        if not is_distributed():
            return list(values)
        mine = torch.tensor(values, dtype=torch.float64)
        work = dist.all_reduce(mine, op=dist.ReduceOp.MAX, async_op=True)  # a CPU tensor: gloo
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


@dataclass(frozen=True)
class _TensorSlot:
    shape: tuple
    dtype: torch.dtype


def _map_leaves(fn, value):
    """`value` (dicts, lists and tuples of leaves) with `fn` applied to every leaf, in a fixed depth-first order."""
    if isinstance(value, dict):
        return {k: _map_leaves(fn, v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_map_leaves(fn, v) for v in value)
    return fn(value)


def broadcast_tensors_from_main(obj, device: torch.device):
    """Rank 0's `obj` (dicts, lists and tuples of tensors and small values: a checkpoint) on every rank, with the
    tensors sent one by one through `device` (NCCL on GPUs, gloo on CPUs) and kept in CPU memory. A checkpoint
    pickled whole would be one byte tensor of its full size on every GPU plus two or three host copies per rank;
    here one tensor is in flight at a time and each rank holds one host copy."""
    if not is_distributed():
        return obj
    if dist.get_rank() == 0:  # the structure first, each tensor replaced by its shape; then the tensors in order
        broadcast_from_main(_map_leaves(
            lambda v: _TensorSlot(tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else v, obj))
        _map_leaves(lambda v: dist.broadcast(v.to(device).contiguous(), src=0) if isinstance(v, torch.Tensor)
                    else None, obj)
        return obj

    def receive(value):
        if not isinstance(value, _TensorSlot):
            return value
        buffer = torch.empty(value.shape, dtype=value.dtype, device=device)
        dist.broadcast(buffer, src=0)
        return buffer.cpu()

    return _map_leaves(receive, broadcast_from_main(None))


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


# How long ranks wait for rank-0 work (hub download and preparation, tokenizer training, checkpoint reads and
# averaging). They wait on the store, a TCP key lookup, not inside a collective: --dist_timeout and NCCL's watchdog
# do not apply. If the rank doing the work dies, torchrun stops the job.
LONG_WORK_WAIT = datetime.timedelta(hours=6)
_long_waits = 0  # numbers the waits alike on every rank, which all make them in the same order


def _after(work, key: str, is_worker: bool, is_waiter: bool):
    """`work()` where `is_worker`; where `is_waiter`, first block on the store until the worker has set `key`."""
    store = dist.distributed_c10d._get_default_store()
    if is_waiter:
        store.wait([key], LONG_WORK_WAIT)
    if not is_worker:
        return None
    try:
        return work()
    finally:
        store.set(key, "done")


def on_main_only(fn):
    """Collective. `fn()` on rank 0 (None elsewhere), the other ranks waiting on the store meanwhile. Whatever it
    raises there is raised on every rank, so no rank is left waiting alone in the next collective: a UserError as
    itself, anything else as a RuntimeError naming it."""
    global _long_waits
    result, failure, error = None, None, None
    if not is_distributed():
        return fn()
    _long_waits += 1
    main = dist.get_rank() == 0
    try:
        result = _after(fn, f"transformer-translation/main-done/{_long_waits}", is_worker=main, is_waiter=not main)
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
    return broadcast_from_main(on_main_only(fn))


def main_first(fn):
    """Run `fn` on rank 0, then on local rank 0 of every other node, then on the remaining ranks, each waiting on the
    store for the one before: a download or dataset preparation lands in a node's cache once, whether the cache is
    shared by all nodes or local to each. A UserError on any rank is raised on all of them."""
    global _long_waits
    result = on_main_only(fn)
    if not is_distributed():
        return result
    _long_waits += 1
    prefix = f"transformer-translation/main-first/{_long_waits}"
    rank, local_rank = dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    node_first = rank - local_rank  # torchrun numbers the ranks of a node consecutively
    store, error = dist.distributed_c10d._get_default_store(), None
    try:
        work = (lambda: result) if rank == 0 else fn  # rank 0 has prepared already
        node_result = _after(work, f"{prefix}/node/{node_first}", is_worker=local_rank == 0,
                             is_waiter=local_rank != 0)
        result = node_result if local_rank == 0 else fn()
    except UserError as e:
        error = str(e)
    finally:  # the slowest node may take as long as rank 0 did: wait for it on the store, not in a collective
        store.set(f"{prefix}/finished/{rank}", "done")
        store.wait([f"{prefix}/finished/{r}" for r in range(dist.get_world_size())], LONG_WORK_WAIT)
    raise_if_any_failed(error)
    return result
