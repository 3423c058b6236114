"""What multi-node GPU runs need from distributed.py, shown with gloo on CPU and, where NCCL is involved, with the
GPU and process-group creation mocked: the two-backend group, gloo's interface, rank-0 work waited for on the
store (per node for caches), and checkpoints broadcast tensor by tensor."""

import os
import pickle
import time

import pytest
import torch

import distributed
from helpers import CUDA13_BUILD, fake_gpu, join_as_rank, spawn_ranks


def test_a_gpu_run_has_one_group_with_gloo_for_cpu_tensors_and_nccl_for_cuda_ones(monkeypatch):
    """FSDP2 with --cpu_offload clips CPU gradient shards: their all-reduce needs gloo beside NCCL."""
    fake_gpu(monkeypatch, (9, 0), CUDA13_BUILD, name="NVIDIA H100")
    calls = []
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **kwargs: calls.append(kwargs))
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(key, value)
    info = distributed.init_distributed()
    assert calls[0]["backend"] == "cpu:gloo,cuda:nccl" and calls[0]["device_id"] == info.device
    assert info.device == torch.device("cuda", 0)


def test_gloo_takes_its_interface_from_nccls_when_only_that_is_given():
    present = [name for _, name in __import__("socket").if_nameindex()]  # "lo" on any Linux machine
    assert "lo" in present
    cases = [({"NCCL_SOCKET_IFNAME": "lo"}, "lo"),      # a prefix, matched against this machine's interfaces
             ({"NCCL_SOCKET_IFNAME": "l"}, "lo"),
             ({"NCCL_SOCKET_IFNAME": "=lo"}, "lo"),     # an exact name
             ({"NCCL_SOCKET_IFNAME": "nosuch,lo"}, "lo"),
             ({"NCCL_SOCKET_IFNAME": "^docker"}, None),  # exclusions: gloo has no such syntax, left alone
             ({"NCCL_SOCKET_IFNAME": "nosuch"}, None),
             ({"NCCL_SOCKET_IFNAME": "lo", "GLOO_SOCKET_IFNAME": "eth9"}, "eth9"),  # the user's own choice stays
             ({}, None)]
    for environ, expected in cases:
        environ = dict(environ)
        distributed.gloo_interface_from_nccl(environ)
        assert environ.get("GLOO_SOCKET_IFNAME") == expected, environ


def _four_ranks_on_two_nodes(rank: int, port: int, out_dir: str):
    join_as_rank(port, rank, 4, local_rank=rank % 2)
    os.environ["NCCL_SOCKET_IFNAME"] = "lo"
    os.environ.pop("GLOO_SOCKET_IFNAME", None)
    info = distributed.init_distributed(timeout_s=3.0)  # collectives give up after 3 s
    try:
        report = {"gloo_interface": os.environ.get("GLOO_SOCKET_IFNAME")}

        def long_work():  # longer than --dist_timeout: a WMT-sized tokenizer, a big checkpoint on a slow drive
            time.sleep(5)
            return "tokenizers"

        report["run_on_main"] = distributed.run_on_main(long_work)

        def prepare():  # which preparations had ended when this rank's began
            seen = sorted(name for name in os.listdir(out_dir) if name.startswith("prepared-"))
            with open(os.path.join(out_dir, f"prepared-{rank}"), "w") as f:
                f.write("done")
            return seen

        report["seen_before_preparing"] = distributed.main_first(prepare)

        checkpoint = {"model": {"w": torch.arange(250_000, dtype=torch.float32),
                                "b": torch.ones(3, dtype=torch.bfloat16)},
                      "rng": [torch.ByteTensor([1, 2, 3]), 7, "text"], "step": (5, None)}
        sizes = []
        original = distributed.dist.broadcast_object_list
        distributed.dist.broadcast_object_list = lambda objects, **kw: (
            sizes.append(len(pickle.dumps(objects))), original(objects, **kw))[1]
        received = distributed.broadcast_tensors_from_main(checkpoint if rank == 0 else None, info.device)
        distributed.dist.broadcast_object_list = original
        report["checkpoint_equal"] = (torch.equal(received["model"]["w"], checkpoint["model"]["w"])
                                      and torch.equal(received["model"]["b"], checkpoint["model"]["b"])
                                      and received["model"]["b"].dtype == torch.bfloat16
                                      and torch.equal(received["rng"][0], checkpoint["rng"][0])
                                      and received["rng"][1:] == [7, "text"] and received["step"] == (5, None))
        report["largest_object_broadcast"] = max(sizes)
        torch.save(report, os.path.join(out_dir, f"report{rank}.pt"))
    finally:
        distributed.destroy_distributed()


@pytest.mark.e2e
def test_rank_0_work_outlasts_dist_timeout_caches_fill_per_node_and_checkpoints_travel_tensor_by_tensor(tmp_path):
    spawn_ranks(_four_ranks_on_two_nodes, 4, str(tmp_path))
    reports = [torch.load(tmp_path / f"report{rank}.pt") for rank in range(4)]
    assert all(r["gloo_interface"] == "lo" for r in reports)
    assert all(r["run_on_main"] == "tokenizers" for r in reports)  # 5 s of rank-0 work under a 3 s timeout
    # What main_first promises: rank 0 first; then node 1's local rank 0 (rank 2), and each node's other ranks after
    # their node's first (rank 1 after rank 0, rank 3 after rank 2). Nothing orders rank 1 against node 1's ranks.
    seen = [set(r["seen_before_preparing"]) for r in reports]
    assert seen[0] == set()
    assert "prepared-0" in seen[1]
    assert "prepared-0" in seen[2] and "prepared-3" not in seen[2]
    assert {"prepared-0", "prepared-2"} <= seen[3]
    assert all(r["checkpoint_equal"] for r in reports)
    assert all(r["largest_object_broadcast"] < 4096 for r in reports)  # the 1 MB of tensors did not go pickled
