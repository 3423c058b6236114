"""--strategy fsdp: the same training as DDP and as one process, exact resume, checkpoints that cross strategies and
world sizes, and two torchrun agents where global rank 0 alone writes."""

import json
import os
import subprocess
import sys

import pytest
import torch

import checkpoint
from conftest import ROOT, TINY_MODEL, child_env, free_port, toy_pairs, torchrun, write_jsonl
from translate import Translator

# Dropout off, so that ranks and processes see the same computation; two micro-steps per step (accumulation) and
# clipping at a norm the first steps exceed, so both are exercised.
MODEL = [*TINY_MODEL, "--dropout", "0", "--grad_accum_steps", "2", "--grad_clip", "0.5", "--log_every", "1",
         "--eval_every", "1000", "--save_every", "3", "--valid_size", "20", "--test_size", "20",
         "--eval_max_sentences", "8", "--beam_size", "1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "toy.jsonl", toy_pairs(400))


def losses(folder) -> list[float]:
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return [m["train/loss"] for m in map(json.loads, f) if "train/loss" in m]


def run(folder, corpus, nproc: int, batch_size: int, max_steps: int, *extra: str) -> str:
    args = [*MODEL, "--data_files", corpus, "--model_folder", str(folder), "--batch_size", str(batch_size),
            "--max_steps", str(max_steps), *extra]
    result = torchrun(nproc, args, extra=["--standalone"])
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_fsdp_resumes_exactly_and_checkpoints_cross_strategies_world_sizes_and_translate(tmp_path, corpus):
    """(That FSDP, DDP and one process compute the same steps is tests/test_distributed.py's, on parameters.)"""
    out = run(tmp_path / "fsdp", corpus, 2, 8, 6, "--strategy", "fsdp")
    assert "strategy fsdp" in out
    reference = losses(tmp_path / "fsdp")
    assert len(reference) == 6 and reference[-1] < reference[0]

    # Stopped at step 3 and resumed under FSDP (with CPU offload this time): bit for bit the uninterrupted run.
    run(tmp_path / "fsdp-resumed", corpus, 2, 8, 3, "--strategy", "fsdp", "--cpu_offload")
    out = run(tmp_path / "fsdp-resumed", corpus, 2, 8, 6, "--strategy", "fsdp", "--cpu_offload")
    assert "resumed from step 3" in out and "with CPU offload" in out
    uninterrupted = checkpoint.load_checkpoint(str(tmp_path / "fsdp" / "ckpt_00000006.pt"))
    resumed = checkpoint.load_checkpoint(str(tmp_path / "fsdp-resumed" / "ckpt_00000006.pt"))
    for name, tensor in uninterrupted["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    for name, state in uninterrupted["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], resumed["optimizer"]["state"][name]["exp_avg_sq"]), name

    # FSDP's step-3 checkpoint resumed by DDP on two ranks, whose checkpoint FSDP resumes on one rank (16 pairs a
    # micro-step, as two ranks of 8): the same last steps as FSDP's.
    crossing = tmp_path / "crossing"
    crossing.mkdir()
    for name in ("ckpt_00000003.pt", "ckpt_00000003.done", "tokenizer_en.json", "tokenizer_it.json"):
        (crossing / name).write_bytes((tmp_path / "fsdp" / name).read_bytes())
    out = run(crossing, corpus, 2, 8, 5)
    assert "resumed from step 3" in out and "strategy ddp" in out
    out = run(crossing, corpus, 1, 16, 6, "--strategy", "fsdp")
    assert "resumed from step 5" in out and "world size 1" in out and "strategy fsdp" in out
    assert losses(crossing) == pytest.approx(reference[3:], rel=1e-4)

    # translate.py reads an FSDP-written folder on one CPU.
    translator = Translator(str(tmp_path / "fsdp"), "6", torch.device("cpu"))
    for name, tensor in translator.model.state_dict().items():
        assert torch.equal(tensor, uninterrupted["model"][name]), name
    (translation,) = translator.translate(["The red cat sees the dog."], 2, 1.0, 8)
    assert isinstance(translation, str)


def test_fsdp_on_two_agents_with_c10d_rendezvous_only_global_rank_0_writes(tmp_path, corpus):
    """Two torchrun agents as on two nodes, each given its own --model_folder: one folder (global rank 0's) gets
    the checkpoints, tokenizers and metrics; the other stays untouched. In bf16: parameters gathered in bf16."""
    port = free_port()
    folders = [tmp_path / "node0", tmp_path / "node1"]
    agents = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--nnodes=2", "--rdzv_backend=c10d",
         f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=fsdp-two-nodes", "train.py", *MODEL, "--data_files", corpus,
         "--model_folder", str(folder), "--batch_size", "8", "--max_steps", "3", "--strategy", "fsdp",
         "--precision", "bf16"],
        cwd=ROOT, env=child_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for folder in folders]
    results = [agent.communicate(timeout=240) for agent in agents]
    assert all(agent.returncode == 0 for agent in agents), results[0][1][-3000:] + results[1][1][-3000:]
    written = [folder for folder in folders if folder.exists()]
    assert len(written) == 1, "exactly one node's folder is written"
    assert "world size 2, device cpu, precision bf16" in "".join(out for out, _ in results)
    assert [step for step, _ in checkpoint.list_checkpoints(str(written[0]))] == [3]
    assert {"tokenizer_en.json", "tokenizer_it.json", "metrics.jsonl"} <= set(os.listdir(written[0]))
