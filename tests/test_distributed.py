"""DDP and FSDP correctness on CPU with gloo: the real init_distributed, wrapping and train_step, two processes
against one."""

import dataclasses
import os

import pytest
import torch
import torch.multiprocessing as mp

import dataset as data
import tokenizer as tok
from config import parse_config
from distributed import DistInfo, barrier, destroy_distributed, init_distributed, run_on_main
from helpers import join_as_rank, spawn_ranks
from model import ModelConfig, Transformer
import parallel
from runtime import make_autocast
from optimization import train_step

STEPS, GLOBAL_BATCH = 3, 8
CFG = parse_config(["--dropout", "0", "--lr", "0.003", "--grad_clip", "0.5"])


def global_batches() -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Examples of varied lengths, so ranks and micro-steps hold different numbers of target tokens."""
    g = torch.Generator().manual_seed(0)
    steps = []
    for _ in range(STEPS):
        examples = []
        for _ in range(GLOBAL_BATCH):
            s, t = int(torch.randint(2, 9, (1,), generator=g)), int(torch.randint(2, 12, (1,), generator=g))
            src = torch.cat([torch.randint(4, 40, (s,), generator=g), torch.tensor([tok.EOS_ID])])
            tgt = torch.cat([torch.tensor([tok.BOS_ID]), torch.randint(4, 40, (t,), generator=g),
                             torch.tensor([tok.EOS_ID])])
            examples.append((src, tgt))
        steps.append(examples)
    return steps


def micro_batches(examples, rank: int, world: int, accum: int) -> list[dict]:
    share = examples[rank * len(examples) // world:(rank + 1) * len(examples) // world]
    size = len(share) // accum
    return [data.collate(share[i * size:(i + 1) * size], 128) for i in range(accum)]


def train_a_few_steps(info: DistInfo, accum: int, poison_rank: int | None = None,
                      strategy: str = "ddp", compile_model: bool = False) -> tuple[dict, list[bool]]:
    torch.manual_seed(0)
    model_cfg = ModelConfig(src_vocab_size=40, tgt_vocab_size=40, d_model=32, num_heads=2, num_layers=1, d_ff=64,
                            dropout=0.0, max_len=32)
    # The trainer's own building and wrapping: DDP, with a static graph when there is no gradient accumulation; or
    # FSDP2, built on the meta device and materialized shard by shard.
    cfg = dataclasses.replace(CFG, grad_accum_steps=accum, strategy=strategy)
    if strategy == "fsdp":
        raw = parallel.build_sharded(model_cfg, cfg, "fp32", info.device)
    else:
        raw = Transformer(model_cfg)
    if poison_rank == info.rank:  # this rank alone produces a NaN loss
        raw.register_forward_hook(lambda module, inputs, output: output * float("nan"))
    model = parallel.wrap(raw, cfg, info.world_size, info.device, compile_model=compile_model)
    # Fused AdamW as in training (it skips a step on the device, also over FSDP's sharded parameters), with an eps
    # so large that float noise in zero-gradient parameters (the key bias, to which softmax is invariant) is not
    # blown up to full-size updates, as Adam's normalisation would: the comparison stays near linear in the gradients.
    optimizer = torch.optim.AdamW(raw.parameters(), lr=0.5, eps=1.0, weight_decay=0.0, fused=True)
    skipped = []
    for examples in global_batches():
        batches = micro_batches(examples, info.rank, info.world_size, accum)
        result = train_step(model, raw, optimizer, None, batches, cfg, info, make_autocast("fp32", info.device))
        skipped.append(bool(result.skipped))
    full = raw.state_dict()  # each rank's replica under DDP; under FSDP, gathered from every rank's shard:
    if parallel.is_sharded(raw):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(raw, options=StateDictOptions(full_state_dict=True))
    return {k: v.detach().clone() for k, v in full.items()}, skipped


SINGLE = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))

# What two ranks train, each in the same pair of processes (one start-up for all): strategy, gradient accumulation
# steps, compiled layers, the rank whose loss is made NaN.
TWO_RANK_RUNS = {
    "ddp-1": ("ddp", 1, False, None), "ddp-2": ("ddp", 2, False, None), "fsdp-2": ("fsdp", 2, False, None),
    "ddp-1-compiled": ("ddp", 1, True, None),  # compiled layers under DDP's static graph: the default on GPUs
    "fsdp-1-compiled": ("fsdp", 1, True, None),  # compiled layers under FSDP2's per-layer hooks
    "ddp-nan-on-rank-1": ("ddp", 1, False, 1), "fsdp-nan-on-rank-1": ("fsdp", 1, False, 1),
}


def _two_ranks(rank: int, port: int, out_dir: str):
    """Every run of TWO_RANK_RUNS, then FSDP's building and evaluation copies, and last a crash in rank 0's part:
    each rank's report of them all."""
    import torch._dynamo

    join_as_rank(port, rank, 2)
    info = init_distributed(timeout_s=600.0)
    try:
        report = {}
        for name, (strategy, accum, compile_model, poison_rank) in TWO_RANK_RUNS.items():
            if compile_model:
                torch._dynamo.reset()  # each compiled run compiles as in a process of its own
            state, skipped = train_a_few_steps(info, accum, poison_rank, strategy, compile_model)
            report[name] = {"state": state, "skipped": skipped}
        report["fsdp-build"] = fsdp_build_report(info)
        try:
            run_on_main(lambda: 1 / 0)  # a bug or a damaged file in rank 0's part
            report["crash"] = "returned"
        except Exception as e:
            report["crash"] = f"{type(e).__name__}: {e}"
        torch.save(report, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        destroy_distributed()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    """The reports of `_two_ranks`, by rank: one start-up of two processes for all these tests."""
    out = tmp_path_factory.mktemp("two_ranks")
    spawn_ranks(_two_ranks, 2, str(out))
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


def assert_same_parameters(a: dict, b: dict):
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.e2e
@pytest.mark.parametrize("run", ["ddp-1", "ddp-2", "fsdp-2", "ddp-1-compiled", "fsdp-1-compiled"])
def test_two_ranks_on_half_batches_match_one_process_on_the_whole(two_ranks, run):
    ranks = [report[run] for report in two_ranks]
    single, _ = train_a_few_steps(SINGLE, accum=1)
    assert_same_parameters(ranks[0]["state"], ranks[1]["state"])
    assert_same_parameters(ranks[0]["state"], single)
    initial = Transformer(ModelConfig(src_vocab_size=40, tgt_vocab_size=40, d_model=32, num_heads=2,
                                      num_layers=1, d_ff=64, dropout=0.0, max_len=32)).state_dict()
    assert not torch.allclose(single["encoder_layers.0.ff.up.weight"], initial["encoder_layers.0.ff.up.weight"])


def test_gradient_accumulation_matches_one_step_on_the_full_batch():
    accumulated, _ = train_a_few_steps(SINGLE, accum=2)
    whole, _ = train_a_few_steps(SINGLE, accum=1)
    assert_same_parameters(accumulated, whole)
    four, _ = train_a_few_steps(SINGLE, accum=4)
    assert_same_parameters(four, whole)


@pytest.mark.e2e
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_non_finite_loss_on_one_rank_skips_the_step_on_all(two_ranks, strategy):
    ranks = [report[f"{strategy}-nan-on-rank-1"] for report in two_ranks]
    assert ranks[0]["skipped"] == ranks[1]["skipped"] == [True] * STEPS
    torch.manual_seed(0)
    untouched = Transformer(ModelConfig(src_vocab_size=40, tgt_vocab_size=40, d_model=32, num_heads=2,
                                        num_layers=1, d_ff=64, dropout=0.0, max_len=32)).state_dict()
    for state in (ranks[0]["state"], ranks[1]["state"]):
        for name, value in untouched.items():
            assert torch.equal(state[name], value), name


# One vocabulary for both sides, shared by the encoder, the decoder and the output layer: three names, one tensor.
SHARED_CFG = ModelConfig(src_vocab_size=40, tgt_vocab_size=40, d_model=32, num_heads=2, num_layers=2, d_ff=64,
                         dropout=0.0, max_len=32, share_embeddings=True)


def fsdp_build_report(info: DistInfo) -> dict:
    built_on = []  # where each Transformer that parallel builds holds its parameters when built

    class Recorded(Transformer):
        def __init__(self, config):
            super().__init__(config)
            built_on.append(self.output.weight.device.type)

    parallel.Transformer = Recorded
    try:
        torch.manual_seed(0)
        raw = parallel.build_sharded(SHARED_CFG, dataclasses.replace(CFG, strategy="fsdp"), "fp32", info.device)
        local_sizes = {name: p.to_local().numel() for name, p in raw.named_parameters()}
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(raw, options=StateDictOptions(full_state_dict=True))
        copies = {precision: parallel.evaluation_model(raw, precision, info.device) for precision in ("fp32", "bf16")}
    finally:
        parallel.Transformer = Transformer
    shared = {precision: len({p.data_ptr() for p in (copy.src_embed.weight, copy.tgt_embed.weight,
                                                       copy.output.weight)})
              for precision, copy in copies.items()}
    return {"built_on": built_on, "local_sizes": local_sizes, "full": full, "shared": shared,
            "copies": {precision: copy.state_dict() for precision, copy in copies.items()},
            "positions": copies["bf16"].positions}


@pytest.mark.e2e
def test_fsdp_builds_on_the_meta_device_and_evaluates_a_copy_in_the_compute_dtype(two_ranks):
    """No rank ever holds the whole fp32 model: it is built on the meta device and each rank draws and keeps its
    own shards only (the same values as the model built whole from the same seed, shared weights still shared), and
    evaluation gathers a copy with its matrices in the dtype the forward computes in (bf16: half the bytes of fp32)
    and nothing else."""
    ranks = [report["fsdp-build"] for report in two_ranks]
    torch.manual_seed(0)
    whole = Transformer(SHARED_CFG)
    expected = whole.state_dict()
    for rank in ranks:
        assert rank["built_on"] == ["meta"] * 3  # the sharded model and both evaluation copies
        for name, param in whole.named_parameters():  # each rank materialized about half of every tensor
            assert rank["local_sizes"][name] == pytest.approx(param.numel() / 2, abs=param.shape[1:].numel())
        for name, value in expected.items():
            assert torch.equal(rank["full"][name], value), name
            assert torch.equal(rank["copies"]["fp32"][name], value), name
            compute_dtype = torch.bfloat16 if value.dim() >= 2 else torch.float32  # norms and biases: fp32
            assert rank["copies"]["bf16"][name].dtype == compute_dtype, name
            assert torch.equal(rank["copies"]["bf16"][name], value.to(compute_dtype)), name
        assert rank["shared"] == {"fp32": 1, "bf16": 1}
        assert torch.equal(rank["positions"], whole.positions)  # the constant table, fp32, rebuilt


def _timeout_worker(rank: int, port: int, out_dir: str, rank0_done):
    join_as_rank(port, rank, 2)
    init_distributed(timeout_s=2.0)
    try:
        if rank == 0:  # rank 1 never joins this barrier: rank 0 must fail after --dist_timeout, not hang
            try:
                barrier()
                outcome = "returned"
            except RuntimeError as e:
                outcome = f"raised: {e}"
            with open(os.path.join(out_dir, "outcome.txt"), "w") as f:
                f.write(outcome)
            rank0_done.set()
        else:
            rank0_done.wait()
    finally:
        destroy_distributed()


@pytest.mark.e2e
def test_dist_timeout_bounds_a_collective_that_a_rank_never_joins(tmp_path):
    rank0_done = mp.get_context("spawn").Event()
    spawn_ranks(_timeout_worker, 2, str(tmp_path), rank0_done)
    outcome = (tmp_path / "outcome.txt").read_text()
    assert outcome.startswith("raised") and "timed out" in outcome.lower(), outcome


def test_each_torchrun_round_gets_a_store_free_of_the_keys_of_dead_rounds(monkeypatch):
    """torchrun's agent store outlives a round; a new round must not read a dead round's published port."""
    import socket
    import threading
    from datetime import timedelta

    import torch.distributed as dist

    import distributed

    agent = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=30))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(agent.port))
    with socket.create_server(("127.0.0.1", 0)) as dead_round:  # accepts once, then hangs up like a dead store
        agent.set(distributed.ROUND_STORE_KEY, str(dead_round.getsockname()[1]))
        agent.set("rank_1_address", "of a dead process")
        stores = {}
        rank1 = threading.Thread(target=lambda: stores.update(
            {1: distributed._store_of_this_round(1, 2, timedelta(seconds=30))}))
        rank1.start()
        connection, _ = dead_round.accept()  # rank 1 read the stale port and tried it
        connection.close()
    stores[0] = distributed._store_of_this_round(0, 2, timedelta(seconds=30))
    rank1.join()
    stores[0].set("from rank 0", "fresh")
    assert stores[1].get("from rank 0") == b"fresh"
    assert not stores[1].check(["rank_1_address"])  # the dead round's keys are not in this round's store


@pytest.mark.e2e
def test_a_crash_in_rank_0s_part_stops_every_rank_instead_of_leaving_them_waiting(two_ranks):
    assert two_ranks[0]["crash"].startswith("ZeroDivisionError")
    assert two_ranks[1]["crash"].startswith("RuntimeError: global rank 0 failed: ZeroDivisionError")
