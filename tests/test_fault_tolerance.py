"""Runs that are stopped, killed or restarted end exactly where an uninterrupted run ends: bit for bit.

Every run here trains the same small model with dropout on, for STEPS steps over more than two epochs of a toy
corpus, on two gloo ranks; a checkpoint every 2 steps. The interrupted runs are compared with one reference run.
"""

import os
import selectors
import signal
import subprocess
import sys

import pytest
import torch

import checkpoint
from conftest import ROOT, TINY_MODEL, child_env, free_port, toy_pairs, write_jsonl

STEPS = 30
MODEL = [*TINY_MODEL, "--d_model", "64", "--d_ff", "128", "--dropout", "0.2", "--log_every", "1",
         "--save_every", "2", "--eval_every", "1000", "--valid_size", "20", "--test_size", "20",
         "--max_steps", str(STEPS)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "toy.jsonl", toy_pairs(400))


def start(folder, corpus, nproc=2, launcher=("--standalone",), env=None, extra=(), script="train.py",
          python_only=False) -> subprocess.Popen:
    """torchrun (or, with python_only, plain python) running `script` in a process group of its own, as a job
    started from a shell is: a signal to the group reaches what a Ctrl-C or `kill -- -PGID` would."""
    launch = [] if python_only else ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", *launcher]
    command = [sys.executable, *launch, script, *MODEL, "--data_files", corpus, "--model_folder", str(folder), *extra]
    return subprocess.Popen(command, cwd=ROOT, env=child_env(env), text=True, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_line(process: subprocess.Popen, prefix: str) -> list[str]:
    """Read rank 0's output until a line starts with `prefix`; the lines read so far."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"the run ended before printing {prefix!r}: {''.join(lines)[-2000:]}")


def finish(process: subprocess.Popen, timeout=240) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # stop the whole job, workers in their own sessions too, and show where it was
        for pid in [process.pid, *descendants(process.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out, err = process.communicate()
        raise AssertionError(f"no end within {timeout} s:\n{out[-3000:]}\n{err[-5000:]}") from None
    return process.returncode, out, err


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, grandchildren, ...), from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError):
            continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def worker_pid(agent: subprocess.Popen, rank: int) -> int:
    """The pid of the worker of global rank `rank` among the agent's children."""
    with open(f"/proc/{agent.pid}/task/{agent.pid}/children") as f:
        children = [int(p) for p in f.read().split()]
    for pid in children:
        with open(f"/proc/{pid}/environ", "rb") as f:
            if f"RANK={rank}".encode() in f.read().split(b"\0"):
                return pid
    raise AssertionError(f"no worker of rank {rank} among {children}")


def first_to_print(processes: list[subprocess.Popen], prefix: str) -> subprocess.Popen:
    """The process whose output first has a line starting with `prefix`, read straight from the pipes as it comes."""
    selector = selectors.DefaultSelector()
    for process in processes:
        selector.register(process.stdout.fileno(), selectors.EVENT_READ, [process, b""])
    with selector:
        while selector.get_map():
            for key, _ in selector.select():
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                key.data[1] += chunk
                if f"\n{prefix}".encode() in b"\n" + key.data[1]:
                    return key.data[0]
    raise AssertionError(f"no process printed {prefix!r}")


def final_parameters(folder) -> dict:
    steps = checkpoint.list_checkpoints(str(folder))
    assert steps[-1][0] == STEPS, steps
    return checkpoint.load_checkpoint(steps[-1][1])


def assert_bit_identical(a: dict, b: dict):
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert (a["epoch"], a["epoch_sample"]) == (b["epoch"], b["epoch_sample"])
    moments = [(s["exp_avg"], t["exp_avg"]) for s, t in zip(a["optimizer"]["state"].values(),
                                                            b["optimizer"]["state"].values())]
    assert moments and all(torch.equal(x, y) for x, y in moments)


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    code, out, err = finish(start(folder, corpus))
    assert code == 0, err[-3000:]
    return final_parameters(folder)


def test_sigterm_to_one_rank_stops_all_cleanly_and_resume_is_bit_identical(tmp_path, corpus, reference):
    run = start(tmp_path, corpus)
    wait_for_line(run, "step 3 |")
    os.kill(worker_pid(run, 1), signal.SIGTERM)  # rank 1 alone is told: rank 0 must learn it through the group
    code, out, err = finish(run, timeout=60)
    assert code == 0, err[-3000:]
    assert "stop requested (on another rank)" in out
    stopped_at = checkpoint.list_checkpoints(str(tmp_path))[-1][0]
    assert 3 <= stopped_at < STEPS and f"saved {tmp_path}/ckpt_{stopped_at:08d}.pt" in out
    code, out, err = finish(start(tmp_path, corpus))
    assert code == 0 and f"resumed from step {stopped_at}" in out, err[-3000:]
    assert_bit_identical(final_parameters(tmp_path), reference)


def test_worker_killed_under_max_restarts_resumes_by_itself_bit_identical(tmp_path, corpus, reference):
    run = start(tmp_path, corpus, launcher=("--standalone", "--max-restarts=2"))
    wait_for_line(run, "step 7 |")
    os.kill(worker_pid(run, 1), signal.SIGKILL)
    code, out, err = finish(run)
    assert code == 0, err[-3000:]
    assert "resumed from step" in out
    assert_bit_identical(final_parameters(tmp_path), reference)


def test_two_agents_restart_together_after_a_worker_dies_and_end_bit_identical(tmp_path, corpus, reference):
    """Two torchrun agents (c10d rendezvous) as on two nodes: one worker is killed, both agents start a new round,
    and each new worker resumes by itself."""
    port = free_port()
    launcher = ("--nnodes=2", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=two-nodes",
                "--max-restarts=2")
    agents = [start(tmp_path, corpus, nproc=1, launcher=launcher) for _ in range(2)]
    holder = first_to_print(agents, "step 7 |")  # the agent of global rank 0, which alone prints
    other = agents[1 - agents.index(holder)]
    os.kill(worker_pid(other, 1), signal.SIGKILL)
    results = [finish(agent) for agent in agents]
    assert all(code == 0 for code, _, _ in results), results[0][2][-3000:] + results[1][2][-3000:]
    assert "resumed from step" in "".join(out for _, out, _ in results)
    assert_bit_identical(final_parameters(tmp_path), reference)


def test_writer_killed_mid_save_resumes_from_the_previous_checkpoint_bit_identical(tmp_path, corpus, reference):
    folder = tmp_path / "w"
    hook = {"TRAINER_TEST_PAUSE_IN_SAVE": f"6:{tmp_path / 'paused-once'}"}
    run = start(folder, corpus, launcher=("--standalone", "--max-restarts=1"), env=hook)
    wait_for_line(run, "paused in save of step 6")
    assert (folder / "ckpt_00000006.pt").exists() and not (folder / "ckpt_00000006.done").exists()
    os.kill(worker_pid(run, 0), signal.SIGKILL)
    code, out, err = finish(run)
    assert code == 0, err[-3000:]
    assert "resumed from step 4" in out and "ckpt_00000006.pt: incomplete" in err
    assert_bit_identical(final_parameters(folder), reference)


def test_resume_with_fewer_ranks_continues_at_the_same_global_sample(tmp_path, corpus):
    code, _, err = finish(start(tmp_path, corpus, extra=["--max_steps", "4"]))
    assert code == 0, err[-3000:]
    before = checkpoint.load_checkpoint(checkpoint.list_checkpoints(str(tmp_path))[-1][1])
    assert (before["step"], before["epoch_sample"]) == (4, 4 * 2 * 16)
    code, out, err = finish(start(tmp_path, corpus, nproc=1, extra=["--max_steps", "6"]))
    assert code == 0, err[-3000:]
    assert "world size 1" in out and "resumed from step 4 (epoch 0, 128 samples into it)" in out
    after = checkpoint.load_checkpoint(checkpoint.list_checkpoints(str(tmp_path))[-1][1])
    assert (after["step"], after["epoch_sample"]) == (6, 128 + 2 * 16)  # one rank: 16 samples a step


def test_nodes_with_different_folders_resume_through_rank_0_or_stop_clearly(tmp_path, corpus):
    """Two agents with static ranks, each given its own --model_folder as if the drive were not shared."""
    a, b = tmp_path / "a", tmp_path / "b"

    def two_nodes(folder_of_rank0, folder_of_rank1, max_steps):
        port = free_port()
        agents = [start(folder, corpus, nproc=1, extra=["--max_steps", str(max_steps)],
                        launcher=("--nnodes=2", f"--node_rank={rank}", "--master_addr=127.0.0.1",
                                  f"--master_port={port}"))
                  for rank, folder in enumerate((folder_of_rank0, folder_of_rank1))]
        return [finish(agent) for agent in agents]

    results = two_nodes(a, b, 4)
    assert all(code == 0 for code, _, _ in results), results[1][2][-3000:]
    assert [s for s, _ in checkpoint.list_checkpoints(str(a))] == [2, 4] and not b.exists()

    results = two_nodes(b, a, 6)  # rank 0 now sees an empty folder, rank 1 sees step 4
    assert all(code != 0 for code, _, _ in results)
    for _, _, err in results:
        assert "error: --model_folder" in err and "sees checkpoint step 4 but global rank 0 sees none" in err
    assert [s for s, _ in checkpoint.list_checkpoints(str(a))] == [2, 4] and not b.exists()  # nothing written

    results = two_nodes(a, b, 6)  # rank 0 reads its folder and broadcasts: rank 1 needs none
    assert all(code == 0 for code, _, _ in results), results[1][2][-3000:]
    assert "resumed from step 4" in results[0][1]
    assert [s for s, _ in checkpoint.list_checkpoints(str(a))][-1] == 6


@pytest.mark.parametrize("signal_to_group", [signal.SIGTERM, signal.SIGINT])
def test_torchrun_stopped_by_a_signal_with_data_workers_saves_every_rank_exits_0_and_resumes_bit_identical(
        tmp_path, corpus, reference, signal_to_group):
    """SIGTERM to torchrun's process group (spot preemption, docker stop, `kill -- -PGID`), or Ctrl-C: torchrun
    forwards SIGTERM to each worker's process group, DataLoader workers included."""
    folder, statuses = tmp_path / "w", tmp_path / "statuses"
    statuses.mkdir()
    run = start(folder, corpus, extra=["--num_workers", "2"], script="tests/exit_status.py",
                env={"EXIT_STATUS_DIR": str(statuses)})
    wait_for_line(run, "step 3 |")
    os.killpg(run.pid, signal_to_group)
    _, out, err = finish(run, timeout=60)
    assert sorted(os.listdir(statuses)) == ["rank0", "rank1"], err[-3000:]
    assert [(statuses / f"rank{r}").read_text() for r in (0, 1)] == ["0", "0"], err[-3000:]
    assert "DataLoader worker" not in err and f"stop requested ({signal_to_group.name})" in out
    stopped_at = checkpoint.list_checkpoints(str(folder))[-1][0]
    assert 3 <= stopped_at < STEPS and f"checkpoint of step {stopped_at} committed" in out
    if signal_to_group == signal.SIGTERM:
        code, out, err = finish(start(folder, corpus, extra=["--num_workers", "2"]))
        assert code == 0 and f"resumed from step {stopped_at}" in out, err[-3000:]
        assert_bit_identical(final_parameters(folder), reference)


def stop_python_run(folder, corpus, extra: list[str], when: str, sig: signal.Signals) -> tuple[str, int]:
    """A `python train.py` run signalled, with its whole process group, once it prints a line starting with `when`:
    its output and the step it saved, after checking it exited 0."""
    run = start(folder, corpus, extra=extra, python_only=True)
    wait_for_line(run, when)
    os.killpg(run.pid, sig)
    code, out, err = finish(run, timeout=60)
    assert code == 0, err[-3000:]
    stopped_at = checkpoint.list_checkpoints(str(folder))[-1][0]
    assert f"stop requested ({sig.name})" in out and f"checkpoint of step {stopped_at} committed" in out
    return out, stopped_at


def test_ctrl_c_on_a_python_run_with_data_workers_saves_and_exits_0(tmp_path, corpus):
    """Without torchrun, a Ctrl-C reaches the trainer and its DataLoader workers at once."""
    stop_python_run(tmp_path, corpus, ["--num_workers", "2"], "step 3 |", signal.SIGINT)


def test_a_stop_skips_a_due_evaluation_and_goes_straight_to_the_checkpoint(tmp_path, corpus):
    """Every step is an evaluation step here: after the signal, none runs before the checkpoint."""
    out, stopped_at = stop_python_run(tmp_path, corpus, ["--eval_every", "1"], "step 3 | val loss", signal.SIGTERM)
    lines = out.splitlines()
    stop = next(i for i, line in enumerate(lines) if line.startswith("stop requested (SIGTERM)"))
    assert f"step {stopped_at} | val loss" not in out  # the step the stop was agreed at was not evaluated
    assert not any("val loss" in line for line in lines[stop:])
