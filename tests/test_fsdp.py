"""--strategy fsdp: the same training as DDP and as one process, exact resume, checkpoints that cross strategies and
world sizes, and two torchrun agents where global rank 0 alone writes."""

import gc
import json
import os
import shutil

import pytest
import torch

import checkpoint
import train
from helpers import TINY_MODEL, failure_report, host_store, torchrun, two_agents
from model import Transformer
from translate import Translator

pytestmark = pytest.mark.e2e  # every test here trains through torchrun

# Dropout off, so that ranks and processes see the same computation; two micro-steps per step (accumulation) and
# clipping at a norm the first steps exceed, so both are exercised.
MODEL = [*TINY_MODEL, "--dropout", "0", "--grad_accum_steps", "2", "--grad_clip", "0.5", "--log_every", "1",
         "--eval_every", "1000", "--save_every", "3", "--valid_size", "20", "--test_size", "20",
         "--eval_max_sentences", "8", "--beam_size", "1"]


def losses(folder) -> list[float]:
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return [m["train/loss"] for m in map(json.loads, f) if "train/loss" in m]


def run(folder, corpus, nproc: int, batch_size: int, max_steps: int, *extra: str) -> str:
    args = [*MODEL, "--data_files", corpus, "--model_folder", str(folder), "--batch_size", str(batch_size),
            "--max_steps", str(max_steps), *extra]
    result = torchrun(nproc, args, extra=["--standalone"])
    assert result.returncode == 0, failure_report(result)
    return result.stdout


def models_alive() -> int:
    return sum(type(o) is Transformer for o in gc.get_objects())  # type(): no lookup on objects that warn


def run_alone_in_process(folder, corpus, batch_size: int, max_steps: int, *extra: str, monkeypatch, capsys) -> str:
    """train.py in this process as torchrun's only worker: a process group of one (FSDP shards over a group),
    on a store served here, as torchrun's agent serves its own. The model is freed before the process group is
    destroyed (FSDP's reference cycles, collected at teardown rather than in interpreter shutdown)."""
    store = host_store()
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(store.port), "TORCHELASTIC_USE_AGENT_STORE": "True"}.items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    gc.collect()
    models_before = models_alive()
    gc.disable()  # only the teardown's own collection may free the run's model
    try:
        train.main([*MODEL, "--data_files", corpus, "--model_folder", str(folder), "--batch_size", str(batch_size),
                    "--max_steps", str(max_steps), *extra])
        assert models_alive() == models_before, "the run's model outlived its teardown"
    finally:
        gc.enable()
    return capsys.readouterr().out


def copy_checkpoint(source, step: int, to) -> None:
    """A folder holding `source`'s checkpoint of `step` and its tokenizers, as if a run had stopped there."""
    to.mkdir()
    for name in (f"ckpt_{step:08d}.pt", f"ckpt_{step:08d}.done", "tokenizer_en.json", "tokenizer_it.json"):
        shutil.copy(source / name, to / name)


def test_fsdp_resumes_exactly_and_checkpoints_cross_strategies_world_sizes_and_translate(tmp_path, toy_corpus,
                                                                                          monkeypatch, capsys):
    """(That FSDP, DDP and one process compute the same steps is tests/test_distributed.py's, on parameters.)"""
    out = run(tmp_path / "fsdp", toy_corpus, 2, 8, 6, "--strategy", "fsdp")
    assert "strategy fsdp" in out
    reference = losses(tmp_path / "fsdp")
    assert len(reference) == 6 and reference[-1] < reference[0]

    # Stopped at step 3 (its checkpoint there) and resumed under FSDP with CPU offload: bit for bit the
    # uninterrupted run.
    copy_checkpoint(tmp_path / "fsdp", 3, tmp_path / "fsdp-resumed")
    out = run(tmp_path / "fsdp-resumed", toy_corpus, 2, 8, 6, "--strategy", "fsdp", "--cpu_offload")
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
    copy_checkpoint(tmp_path / "fsdp", 3, crossing)
    out = run(crossing, toy_corpus, 2, 8, 5)
    assert "resumed from step 3" in out and "strategy ddp" in out
    out = run_alone_in_process(crossing, toy_corpus, 16, 6, "--strategy", "fsdp", monkeypatch=monkeypatch,
                               capsys=capsys)
    assert "resumed from step 5" in out and "world size 1" in out and "strategy fsdp" in out
    assert losses(crossing) == pytest.approx(reference[3:], rel=1e-4)

    # translate.py reads an FSDP-written folder on one CPU.
    translator = Translator(str(tmp_path / "fsdp"), "6", torch.device("cpu"))
    for name, tensor in translator.model.state_dict().items():
        assert torch.equal(tensor, uninterrupted["model"][name]), name
    (translation,) = translator.translate(["The red cat sees the dog."], 2, 1.0, 8)
    assert isinstance(translation, str)


def test_fsdp_on_two_agents_with_c10d_rendezvous_only_global_rank_0_writes(tmp_path, toy_corpus):
    """Two torchrun agents as on two nodes, each given its own --model_folder: one folder (global rank 0's) gets
    the checkpoints, tokenizers and metrics; the other stays untouched. In bf16: parameters gathered in bf16."""
    folders = [tmp_path / "node0", tmp_path / "node1"]
    agents = two_agents("fsdp-two-nodes", [[*MODEL, "--data_files", toy_corpus, "--model_folder", str(folder),
                                            "--batch_size", "8", "--max_steps", "3", "--strategy", "fsdp",
                                            "--precision", "bf16"] for folder in folders])
    assert all(agent.returncode == 0 for agent in agents), failure_report(agents[0]) + failure_report(agents[1])
    written = [folder for folder in folders if folder.exists()]
    assert len(written) == 1, "exactly one node's folder is written"
    assert sum("world size 2, device cpu, precision bf16" in agent.stdout for agent in agents) == 1  # rank 0 alone
    assert [step for step, _ in checkpoint.list_checkpoints(str(written[0]))] == [3]
    assert {"tokenizer_en.json", "tokenizer_it.json", "metrics.jsonl"} <= set(os.listdir(written[0]))
