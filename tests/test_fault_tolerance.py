"""Runs that are stopped, killed or restarted end exactly where an uninterrupted run ends: bit for bit.

Every run here trains the same small model with dropout on, for STEPS steps over more than two epochs of a toy
corpus, on two gloo ranks; a checkpoint every 2 steps. The interrupted runs are compared with one reference run.
"""

import os
import re
import selectors
import shutil
import signal
import subprocess
import sys

import pytest
import torch

import checkpoint
import train
from helpers import ROOT, TINY_MODEL, c10d_rendezvous, checkpoint_steps, child_env, host_store

pytestmark = pytest.mark.e2e  # every test here needs runs of train.py launched, then stopped, killed or restarted

STEPS = 30
MODEL = [*TINY_MODEL, "--d_model", "64", "--d_ff", "128", "--dropout", "0.2", "--log_every", "1",
         "--save_every", "2", "--eval_every", "1000", "--valid_size", "20", "--test_size", "20",
         "--max_steps", str(STEPS)]


# The wrapper docs/fault-tolerance.md gives for torchrun, which exits 1 when it is signalled: the shell outlives
# torchrun (which stops its workers first) and exits with the status the run wrote in its model folder.
WRAPPER = ('rm -f "$FOLDER/stopped"; trap : INT TERM; "$@"; status=$?; '
           '[ -f "$FOLDER/stopped" ] && status=$(cat "$FOLDER/stopped"); exit $status')


def start(folder, corpus, nproc=2, launcher=("--standalone",), env=None, extra=(), script="train.py",
          python_only=False, wrapped=False) -> subprocess.Popen:
    """torchrun (or, with python_only, plain python; with wrapped, torchrun in WRAPPER) running `script` in a process
    group of its own, as a job started from a shell is: a signal to the group reaches what a Ctrl-C or
    `kill -- -PGID` would."""
    launch = [] if python_only else ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", *launcher]
    command = [sys.executable, *launch, script, *MODEL, "--data_files", corpus, "--model_folder", str(folder), *extra]
    if wrapped:
        command, env = ["bash", "-c", WRAPPER, "bash", *command], {**(env or {}), "FOLDER": str(folder)}
    return subprocess.Popen(command, cwd=ROOT, env=child_env(env), text=True, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_line(process: subprocess.Popen, prefix: str) -> list[str]:
    """Read rank 0's output until a line starts with `prefix`; the lines read so far."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith(prefix):
            return lines
    code, _, err = finish(process, timeout=60)  # what it said on stderr tells why
    raise AssertionError(f"the run ended (exit code {code}) before printing {prefix!r}:\n{''.join(lines)[-2000:]}\n"
                         f"stderr:\n{err[-5000:]}")


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


def worker_pid(agents: list[subprocess.Popen], rank: int) -> int:
    """The pid of the worker of global rank `rank` among the children of these agents."""
    children = []
    for agent in agents:
        with open(f"/proc/{agent.pid}/task/{agent.pid}/children") as f:
            children += [int(p) for p in f.read().split()]
    for pid in children:
        with open(f"/proc/{pid}/environ", "rb") as f:
            if f"RANK={rank}".encode() in f.read().split(b"\0"):
                return pid
    raise AssertionError(f"no worker of rank {rank} among {children}")


def first_to_print(processes: list[subprocess.Popen], prefix: str) -> str:
    """Read the processes' output straight from the pipes as it comes until one prints a line starting with
    `prefix`: all that was read from them."""
    selector, read = selectors.DefaultSelector(), [[process, b""] for process in processes]
    for entry in read:
        selector.register(entry[0].stdout.fileno(), selectors.EVENT_READ, entry)
    with selector:
        while selector.get_map():
            for key, _ in selector.select():
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                key.data[1] += chunk
                if f"\n{prefix}".encode() in b"\n" + key.data[1]:
                    return "".join(data.decode() for _, data in read)
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
def reference_folder(toy_corpus, tmp_path_factory):
    """The folder of the uninterrupted run, with every checkpoint kept; not to be written to."""
    folder = tmp_path_factory.mktemp("reference")
    code, out, err = finish(start(folder, toy_corpus, extra=["--keep_last", str(STEPS)]))
    assert code == 0, err[-3000:]
    return folder


@pytest.fixture(scope="module")
def reference(reference_folder):
    return final_parameters(reference_folder)


def stopped_after_four_steps(reference_folder, to):
    """A folder as a run of two ranks ended by --max_steps 4 leaves it: the reference run's checkpoints of steps 2
    and 4 and its tokenizers (the run computes the same steps whatever --max_steps says)."""
    to.mkdir()
    for name in ("ckpt_00000002.pt", "ckpt_00000002.done", "ckpt_00000004.pt", "ckpt_00000004.done",
                 "tokenizer_en.json", "tokenizer_it.json"):
        shutil.copy(reference_folder / name, to / name)
    return to


def test_two_agents_restart_together_after_the_writer_dies_mid_save_and_a_worker_mid_run_and_end_bit_identical(
        tmp_path, toy_corpus, reference):
    """Two torchrun agents (c10d rendezvous, --max-restarts) as on two nodes that do not share a drive: the worker
    of each is given the --model_folder of its global rank (tests/folder_of_rank.py), and global rank 0 alone writes.
    Two deaths, after each of which both agents start a new round whose workers resume by themselves, through rank
    0: the writer (rank 0) killed while its checkpoint of step 6 is written but not committed (the next round resumes
    from step 4), then rank 1 killed in the middle of a run."""
    a, b = tmp_path / "a", tmp_path / "b"
    env = {"FOLDER_OF_RANK_0": str(a), "FOLDER_OF_RANK_1": str(b),
           "TRAINER_TEST_PAUSE_IN_SAVE": f"6:{tmp_path / 'paused-once'}"}
    store = host_store()
    launcher = (*c10d_rendezvous(store, "two-nodes"), "--max-restarts=3")
    agents = [start(tmp_path / "unused", toy_corpus, nproc=1, launcher=launcher, script="tests/folder_of_rank.py",
                    env=env) for _ in range(2)]
    printed = first_to_print(agents, "paused in save of step 6")  # by global rank 0, which alone prints
    assert (a / "ckpt_00000006.pt").exists() and not (a / "ckpt_00000006.done").exists()
    os.kill(worker_pid(agents, 0), signal.SIGKILL)
    printed += first_to_print(agents, "step 7/")  # the first round never got past step 6
    os.kill(worker_pid(agents, 1), signal.SIGKILL)
    results = [finish(agent) for agent in agents]
    assert all(code == 0 for code, _, _ in results), results[0][2][-3000:] + results[1][2][-3000:]
    printed += "".join(out for _, out, _ in results)
    assert "ckpt_00000006.pt: incomplete" in "".join(err for _, _, err in results)
    resumed = sorted(int(step) for step in re.findall(r"^resumed from step (\d+)", printed, re.M))
    assert len(resumed) == 2 and resumed[0] == 4 and resumed[1] >= 6, resumed
    assert_bit_identical(final_parameters(a), reference)
    assert not b.exists() and not (tmp_path / "unused").exists()


def test_resume_with_fewer_ranks_continues_at_the_same_global_sample(tmp_path, toy_corpus, reference_folder, capsys):
    folder = stopped_after_four_steps(reference_folder, tmp_path / "w")
    before = checkpoint.load_checkpoint(checkpoint.list_checkpoints(str(folder))[-1][1])
    assert (before["step"], before["epoch_sample"]) == (4, 4 * 2 * 16)
    train.main([*MODEL, "--data_files", toy_corpus, "--model_folder", str(folder), "--max_steps", "6"])  # one rank
    out = capsys.readouterr().out
    assert "world size 1" in out and "resumed from step 4 (epoch 0, 128 samples into it)" in out
    after = checkpoint.load_checkpoint(checkpoint.list_checkpoints(str(folder))[-1][1])
    assert (after["step"], after["epoch_sample"]) == (6, 128 + 2 * 16)  # one rank: 16 samples a step
    assert tuple(after["epoch_started_by"]) == (2, 16)  # in the order of the epoch as two ranks started it


def test_nodes_with_different_folders_stop_clearly_when_rank_0_sees_no_checkpoint_where_another_does(
        tmp_path, toy_corpus, reference_folder):
    """Two agents, the worker of each given its own --model_folder by its global rank (tests/folder_of_rank.py), as
    if the drive were not shared: rank 0 sees an empty folder, rank 1 one with a checkpoint of step 4. (Resuming
    through rank 0 when rank 1 sees no checkpoint is the two-agent restart test's.)"""
    a, b = stopped_after_four_steps(reference_folder, tmp_path / "a"), tmp_path / "b"
    store = host_store()
    folders = {"FOLDER_OF_RANK_0": str(b), "FOLDER_OF_RANK_1": str(a)}
    agents = [start(tmp_path / "unused", toy_corpus, nproc=1, extra=["--max_steps", "6"],
                    launcher=c10d_rendezvous(store, "folders"), script="tests/folder_of_rank.py", env=folders)
              for _ in range(2)]
    results = [finish(agent) for agent in agents]
    assert all(code != 0 for code, _, _ in results)
    said = "".join(err for _, _, err in results)  # every rank stops, and global rank 0 alone says why
    assert said.count("error: --model_folder") == 1 and "sees checkpoint step 4 but global rank 0 sees none" in said
    assert checkpoint_steps(a) == [2, 4] and not b.exists()  # nothing written


def stopped_run(folder, corpus, statuses, when: str, stop, status: int, wrapped=False) -> tuple[str, str, int]:
    """A run of two ranks, each with two DataLoader workers (through tests/exit_status.py), given `stop(run)` once it
    prints a line starting with `when`: (stdout, stderr, the step it saved), after checking that every rank exited
    with `status` and wrote it to the model folder, and what the command returned: torchrun's 1, or, `wrapped`
    (WRAPPER), `status`."""
    statuses.mkdir()
    run = start(folder, corpus, extra=["--num_workers", "2"], script="tests/exit_status.py",
                env={"EXIT_STATUS_DIR": str(statuses)}, wrapped=wrapped)
    before = wait_for_line(run, when)
    stop(run)
    code, out, err = finish(run, timeout=60)
    out = "".join(before) + out
    assert sorted(os.listdir(statuses)) == ["rank0", "rank1"], err[-3000:]
    assert [(statuses / f"rank{r}").read_text() for r in (0, 1)] == [str(status)] * 2, err[-3000:]
    assert (folder / "stopped").read_text() == f"{status}\n" and code == (status if wrapped else 1), err[-3000:]
    return out, err, checkpoint.list_checkpoints(str(folder))[-1][0]


def test_stopped_by_sigterm_to_one_rank_or_by_signals_to_the_group_every_rank_exits_128_plus_the_signal_and_resumes(
        tmp_path, toy_corpus, reference):
    """One run stopped three times, each time resumed bit for bit: by SIGTERM to rank 1 alone (rank 0 must learn it
    through the group), then by Ctrl-C and by SIGTERM to the process group of WRAPPER's shell and torchrun (spot
    preemption, docker stop, `kill -- -PGID`: torchrun forwards SIGTERM to each worker's process group, DataLoader
    workers included). Every rank exits 143 after SIGTERM, 130 after SIGINT; the wrapped command too."""
    folder = tmp_path / "w"
    out, _, stopped_at = stopped_run(folder, toy_corpus, tmp_path / "statuses-1", "step 3/",
                                     lambda run: os.kill(worker_pid([run], 1), signal.SIGTERM), 143)
    assert "stop requested (on another rank)" in out and "exit status 143 (SIGTERM)" in out
    assert 3 <= stopped_at < STEPS and f"saved {folder}/ckpt_{stopped_at:08d}.pt" in out
    for attempt, sig, status in ((2, signal.SIGINT, 130), (3, signal.SIGTERM, 143)):
        before = stopped_at
        out, err, stopped_at = stopped_run(folder, toy_corpus, tmp_path / f"statuses-{attempt}",
                                           f"step {before + 2}/", lambda run: os.killpg(run.pid, sig), status,
                                           wrapped=sig == signal.SIGTERM)
        assert f"resumed from step {before}" in out
        assert "DataLoader worker" not in err and f"stop requested ({sig.name})" in out
        assert before + 2 <= stopped_at < STEPS and f"checkpoint of step {stopped_at} committed" in out
    code, out, err = finish(start(folder, toy_corpus, extra=["--num_workers", "2"]))
    assert code == 0 and f"resumed from step {stopped_at}" in out, err[-3000:]
    assert not (folder / "stopped").exists()  # a new start removes an earlier stop's file
    assert_bit_identical(final_parameters(folder), reference)


def test_ctrl_c_on_a_python_run_with_data_workers_skips_a_due_evaluation_saves_and_exits_130(tmp_path, toy_corpus):
    """Without torchrun, a Ctrl-C reaches the trainer and its DataLoader workers at once. Every step is an evaluation
    step here: after the signal, none runs before the checkpoint."""
    run = start(tmp_path, toy_corpus, extra=["--num_workers", "2", "--eval_every", "1"], python_only=True)
    wait_for_line(run, "step 3 | val loss")
    os.killpg(run.pid, signal.SIGINT)
    code, out, err = finish(run, timeout=60)
    assert code == 130, err[-3000:]
    stopped_at = checkpoint.list_checkpoints(str(tmp_path))[-1][0]
    assert "stop requested (SIGINT)" in out and f"checkpoint of step {stopped_at} committed" in out
    lines = out.splitlines()
    stop = next(i for i, line in enumerate(lines) if line.startswith("stop requested (SIGINT)"))
    assert f"step {stopped_at} | val loss" not in out  # the step the stop was agreed at was not evaluated
    assert not any("val loss" in line for line in lines[stop:])
