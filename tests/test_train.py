"""End to end: train.py under python, torchrun and two torchrun agents, with resume, W&B offline and bad input."""

import json
import math
import os
import re

import pytest
import torch

import checkpoint
import tokenizer as tok
import runtime
import optimization
import train
from helpers import TINY_MODEL, checkpoint_steps, failure_report, metrics, toy_pairs, torchrun, write_jsonl


@pytest.mark.e2e
def test_torchrun_two_processes_builtin_corpus_wandb_offline_and_resume(tmp_path):
    folder = tmp_path / "weights"
    # Greedy decoding (--beam_size 1) of the builtin test split, 500 sentences: beam search is tested elsewhere.
    args = [*TINY_MODEL, "--beam_size", "1", "--max_steps", "4", "--save_every", "2", "--eval_every", "4",
            "--model_folder", str(folder), "--wandb_mode", "offline"]
    first = torchrun(2, args, extra=["--standalone"], env={"WANDB_DIR": ""})  # W&B's files go to the model folder
    assert first.returncode == 0, failure_report(first)
    assert checkpoint_steps(folder) == [2, 4]
    assert {"tokenizer_en.json", "tokenizer_it.json", "metrics.jsonl", "wandb", "config.json", "wandb_run_id",
            "latest", "best"} <= set(os.listdir(folder))
    assert not [n for n in os.listdir(folder) if ".tmp" in n or n.startswith(".write-test")]
    logged = metrics(folder)
    assert [m["step"] for m in logged if "train/loss" in m] == [2, 4]  # rank 0 alone logs: no duplicates
    assert [m["step"] for m in logged if "val/bleu" in m] == [4]
    runs = [n for n in os.listdir(folder / "wandb") if n.startswith("offline-run-")]
    assert len(runs) == 1
    saved = torch.load(folder / "ckpt_00000004.pt", weights_only=True)
    assert runs[0].endswith(saved["wandb_run_id"]) and saved["step"] == 4
    assert "BLEU" in first.stdout and "nrefs:1|case:mixed" in first.stdout  # the sacreBLEU signature
    assert "world size 2" in first.stdout

    again = torchrun(2, args, extra=["--standalone"], env={"WANDB_DIR": ""})  # again: nothing left to train
    assert again.returncode == 0, failure_report(again)
    assert "resumed from step 4" in again.stdout and checkpoint_steps(folder) == [2, 4]

    longer = torchrun(2, [*args[:-6], "--max_steps", "6", "--save_every", "2", "--eval_every", "4",
                          "--model_folder", str(folder), "--wandb_mode", "offline"], extra=["--standalone"])
    assert longer.returncode == 0, failure_report(longer)
    assert "resumed from step 4" in longer.stdout
    assert checkpoint_steps(folder) == [2, 4, 6]
    assert torch.load(folder / "ckpt_00000006.pt", weights_only=True)["wandb_run_id"] == saved["wandb_run_id"]


def folder_state(folder) -> list | None:
    """What a refused start must leave as it was: None for no folder, else every file with its size and mtime."""
    if not os.path.exists(folder):
        return None
    return sorted((name, os.stat(os.path.join(folder, name)).st_size, os.stat(os.path.join(folder, name)).st_mtime_ns)
                  for name in os.listdir(folder))


def run_in_process(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        train.main(args)
        code = 0
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_single_process_python_run_and_preload_choices(tmp_path, toy_corpus, capsys):
    folder = tmp_path / "w"
    base = [*TINY_MODEL, "--data_files", toy_corpus, "--valid_size", "20", "--test_size", "20",
            "--save_every", "2", "--eval_every", "100", "--keep_last", "2"]
    code, out, err = run_in_process([*base, "--model_folder", str(folder), "--max_steps", "6"], capsys)
    assert code == 0, err
    assert "world size 1" in out and checkpoint_steps(folder) == [4, 6]  # --keep_last 2 pruned step 2
    # A checkpoint from elsewhere seeds a new folder; the run goes on from its step.
    code, out, _ = run_in_process([*base, "--model_folder", str(tmp_path / "w2"), "--max_steps", "8",
                                   "--preload", str(folder / "ckpt_00000004.pt")], capsys)
    assert code == 0 and "resumed from step 4" in out and checkpoint_steps(tmp_path / "w2") == [6, 8]
    # Starting behind the newest checkpoint of the folder would mix two runs: refused, with the way out.
    for preload, later in (("4", "6"), ("none", "4, 6")):
        code, _, err = run_in_process([*base, "--model_folder", str(folder), "--preload", preload], capsys)
        assert code == 2 and f"already holds later checkpoints (steps {later})" in err
    code, _, err = run_in_process([*base, "--model_folder", str(folder), "--preload", "3"], capsys)
    assert code == 2 and "--preload 3: no complete checkpoint of that step" in err and "steps there: 4, 6" in err


def test_token_budget_run_logs_throughput_padding_and_mfu(tmp_path, toy_corpus, capsys):
    folder = tmp_path / "w"
    code, out, err = run_in_process([*TINY_MODEL, "--data_files", toy_corpus, "--valid_size", "20", "--test_size",
                                     "20", "--model_folder", str(folder), "--max_tokens", "300", "--max_steps", "4",
                                     "--peak_tflops", "0.5"], capsys)
    assert code == 0, err
    assert "peak 0.50 TFLOP/s per device (--peak_tflops)" in out and "compile off" in out
    logged = [m for m in metrics(folder) if "train/loss" in m]
    assert [m["step"] for m in logged] == [2, 4]
    for m in logged:
        assert m["train/tokens_per_s"] > 0 and 0 < m["train/mfu"] < 1 and m["train/step_ms"] > 0
        assert 0.8 < m["train/padding_efficiency"] <= 1.0  # length-grouped token-budget batches: little padding
    assert "padding eff" in out and "MFU" in out and "ms/step" in out


@pytest.mark.e2e
def test_compiled_layers_compile_a_bounded_number_of_times_in_epoch_one_only_and_resume_uncompiled(
        tmp_path, toy_corpus, capsys):
    """Two epochs with a validation after each and the test split decoded at the end: the layers compile during
    the first epoch only (then every batch shape reuses the dynamic graphs), evaluation and decoding never
    compile, and the checkpoints hold the plain module's weights."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    base = [*TINY_MODEL, "--data_files", toy_corpus, "--valid_size", "20", "--test_size", "20", "--model_folder",
            str(tmp_path / "w"), "--eval_every", "1000", "--save_every", "1000"]
    code, out, err = run_in_process([*base, "--compile", "--num_epochs", "2"], capsys)
    assert code == 0 and "compile on" in out, err[-3000:]
    steps_per_epoch = -(-360 // 16)  # 360 training pairs, 16 a batch
    compiled_at = [int(line.split("(step ")[1].split(";")[0]) for line in out.splitlines() if "graphs in" in line]
    assert compiled_at and max(compiled_at) <= steps_per_epoch, out  # nothing compiles in the second epoch
    # Two layer kinds, each at most: the first graph, a second once source and target widths first differ (they
    # shared a symbol while equal), a third for a batch of one sentence; far below the distinct shapes of the run.
    assert runtime.compilation_count() <= 6
    assert out.count("| BLEU") == 2 and "test (best checkpoint" in out  # validations and decoding ran eagerly
    saved = checkpoint.load_checkpoint(checkpoint.list_checkpoints(str(tmp_path / "w"))[-1][1])
    assert saved["step"] == 2 * steps_per_epoch and not [k for k in saved["model"] if "_orig_mod" in k]
    code, out, err = run_in_process([*base, "--no-compile", "--num_epochs", "2", "--max_steps",
                                     str(2 * steps_per_epoch + 1)], capsys)
    assert code == 0 and f"resumed from step {2 * steps_per_epoch}" in out and "compile off" in out, err[-3000:]


def without(flags: list[str], *names: str) -> list[str]:
    """`flags` less the given flags and their values."""
    out, skip = [], False
    for flag in flags:
        if not skip and flag not in names:
            out.append(flag)
        skip = flag in names
    return out


def test_resume_with_another_model_shape_or_vocabulary_is_refused_and_other_data_named_in_a_warning(
        tmp_path, toy_corpus, capsys):
    base = ["--data_files", toy_corpus, "--valid_size", "20", "--test_size", "20", "--model_folder",
            str(tmp_path / "w"), "--max_steps", "2", "--save_every", "2"]
    assert run_in_process([*TINY_MODEL, *base], capsys)[0] == 0
    before = folder_state(tmp_path / "w")
    for flag, value in (("--d_ff", "128"), ("--vocab_size", "500")):  # the network; the tokenizers' size
        message = f"{flag} {TINY_MODEL[TINY_MODEL.index(flag) + 1]} (checkpoint) vs {value} (now)"
        code, _, err = run_in_process([*without(TINY_MODEL, flag), *base, flag, value], capsys)
        assert code == 2 and message in err and "another --model_folder" in err
        assert folder_state(tmp_path / "w") == before
    # Left unset, the network's settings are the resumed run's, not defaults chosen again (3 layers, d_ff 1024 and a
    # vocabulary of 4000 for this corpus); other data is named, setting by setting.
    code, out, err = run_in_process([*without(TINY_MODEL, "--num_layers", "--d_ff", "--vocab_size"), *base,
                                     "--seq_len", "64", "--test_size", "10", "--max_steps", "3"], capsys)
    assert code == 0 and "resumed from step 2" in out, err
    assert "as the run it resumes: --num_layers 1, --d_ff 64, --share_vocab True, --vocab_size 400" in out
    warning = next(line for line in err.splitlines() if "other data settings" in line)
    assert "--seq_len 128 (checkpoint) -> 64 (now); --test_size 20 (checkpoint) -> 10 (now)." in warning


def test_resume_with_another_tokenizer_or_language_pair_names_the_difference(tmp_path, toy_corpus, capsys):
    folder = tmp_path / "w"
    base = [*TINY_MODEL, "--data_files", toy_corpus, "--valid_size", "20", "--test_size", "20", "--model_folder",
            str(folder), "--max_steps", "2", "--save_every", "2", "--no-share_vocab"]
    assert run_in_process(base, capsys)[0] == 0
    code, _, err = run_in_process([*base, "--lang_src", "it", "--lang_tgt", "en"], capsys)
    assert code == 2 and "--lang_src en (checkpoint) vs it (now)" in err and "--lang_tgt it (checkpoint) vs en" in err
    # Someone replaced the target tokenizer in the folder: the checkpoint's embeddings no longer fit it.
    other = tok.train_tokenizer([p[1] for p in toy_pairs(50, seed=1)], 300)
    (folder / "tokenizer_it.json").write_text(other.to_str())
    code, _, err = run_in_process(base, capsys)
    assert code == 2 and "the tgt tokenizer differs from the checkpoint's" in err
    assert "the src tokenizer" not in err and checkpoint_steps(folder) == [2]


def test_shared_vocabulary_trains_one_tokenizer_and_one_embedding(tmp_path, toy_corpus, capsys):
    folder = tmp_path / "w"
    base = [*TINY_MODEL, "--data_files", toy_corpus, "--valid_size", "20", "--test_size", "20", "--model_folder",
            str(folder), "--max_steps", "2", "--save_every", "2"]
    code, out, err = run_in_process(base, capsys)  # on by default for a corpus of one's own
    assert code == 0 and "--share_vocab True" in out, err
    assert (folder / "tokenizer_en.json").read_text() == (folder / "tokenizer_it.json").read_text()
    joint = tok.tokenizer_from_json((folder / "tokenizer_en.json").read_text())
    assert joint.token_to_id("Il") is not None and joint.token_to_id("The") is not None  # both languages
    saved = checkpoint.load_checkpoint(checkpoint.list_checkpoints(str(folder))[-1][1])
    assert torch.equal(saved["model"]["src_embed.weight"], saved["model"]["tgt_embed.weight"])
    code, _, err = run_in_process([*base, "--no-share_vocab"], capsys)  # the same folder: another architecture
    assert code == 2 and "--share_vocab True (checkpoint) vs False (now)" in err
    code, _, err = run_in_process([*base, "--share_vocab", "--model_folder", str(tmp_path / "w2"), "--max_steps",
                                   "2"], capsys)
    assert code == 0
    other = tok.train_tokenizer([t for _, t in toy_pairs(50, seed=1)], 300)
    (tmp_path / "w2" / "tokenizer_it.json").write_text(other.to_str())
    code, _, err = run_in_process([*base, "--share_vocab", "--model_folder", str(tmp_path / "w2"), "--max_steps",
                                   "4"], capsys)
    assert code == 2 and "holds two different tokenizers" in err
    (tmp_path / "w2" / "tokenizer_it.json").write_text(other.to_str()[:100])  # cut short by a crash of another tool
    code, _, err = run_in_process([*base, "--share_vocab", "--model_folder", str(tmp_path / "w2")], capsys)
    assert code == 2 and "tokenizer_it.json cannot be read" in err and "Traceback" not in err


def started_from(flags: list[str]) -> tuple[train.RunData, train.ModelParts, train.TrainState]:
    """What a run of one CPU process holds once it has started, before its first step."""
    import time
    from distributed import DistInfo

    info = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    cfg, run_data = train.load_data(train.parse_config(flags), info)
    parts = train.build_model(cfg, info, run_data, "fp32", time.perf_counter())
    return run_data, parts, train.resume(cfg, info, run_data, parts)


def test_init_from_a_checkpoint_or_an_export_starts_a_new_run_at_step_0_from_the_same_weights(tmp_path, toy_corpus,
                                                                                              capsys):
    import export

    source, exported = tmp_path / "source", tmp_path / "exported"
    code, _, err = run_in_process([*TINY_MODEL, "--data_files", toy_corpus, "--valid_size", "20", "--test_size", "20",
                                   "--model_folder", str(source), "--max_steps", "4", "--save_every", "2"], capsys)
    assert code == 0, err
    export.main(["--model_folder", str(source), "--out", str(exported)])
    weights = checkpoint.load_checkpoint(checkpoint.checkpoint_path(str(source), 4))["model"]
    # Another corpus; the network's settings left unset, taken from the weights.
    other = write_jsonl(tmp_path / "other.jsonl", toy_pairs(300, seed=3))
    flags = [*without(TINY_MODEL, "--num_layers", "--d_ff", "--vocab_size"), "--data_files", other, "--valid_size",
             "20", "--test_size", "20", "--max_steps", "2"]
    for init_from in (source, exported, source / "latest"):
        run_data, parts, state = started_from([*flags, "--init_from", str(init_from), "--model_folder",
                                               str(tmp_path / "unused")])
        assert state.step == 0 and not parts.optimizer.state and parts.scheduler.last_epoch == 0
        assert all(torch.equal(value, weights[name]) for name, value in parts.raw_model.state_dict().items())
        assert run_data.tokenizer_json == tuple((source / f"tokenizer_{lang}.json").read_text()
                                                for lang in ("en", "it"))
    folder = tmp_path / "tuned"
    code, out, err = run_in_process([*flags, "--init_from", str(exported), "--model_folder", str(folder)], capsys)
    assert code == 0 and f"started from the weights of {exported} (step 4 of its run)" in out, err
    assert checkpoint_steps(folder) == [2] and (folder / "tokenizer_it.json").read_text() == \
        (source / "tokenizer_it.json").read_text()
    # The same command again resumes (after a preemption, say): the folder's checkpoints win over the weights.
    code, out, err = run_in_process([*flags, "--init_from", str(exported), "--model_folder", str(folder),
                                     "--max_steps", "3"], capsys)
    assert code == 0 and "resumed from step 2" in out and f"--init_from {exported} not used" in err
    # Weights of another network or vocabulary are refused, naming each difference, and nothing is written.
    for wrong, message in ((["--d_model", "64"], "--d_model 64 (now) vs 32 (the weights')"),
                           (["--lang_src", "it", "--lang_tgt", "en"], "--lang_src it (now) vs en (the weights'); "
                                                                       "--lang_tgt en (now) vs it (the weights')")):
        code, _, err = run_in_process([*flags, "--init_from", str(source), "--model_folder", str(tmp_path / "no"),
                                       *wrong], capsys)
        assert code == 2 and message in err and not (tmp_path / "no").exists()


def test_the_test_split_is_scored_whole_as_given_with_long_sources_cut_to_fit(tmp_path, toy_corpus, capsys):
    """No cleaning and no --seq_len filter: a duplicate, an empty reference, an implausible length ratio and a source
    four times --seq_len all count, as in published figures."""
    rows = toy_pairs(6, seed=7)
    rows += [rows[0], ("The dog.", ""), ("A cat.", "Un gatto che guarda il giardino grande e vecchio del ragazzo."),
             (" ".join(source for source, _ in toy_pairs(8, seed=9)), "Il gatto.")]
    test_file = write_jsonl(tmp_path / "test.jsonl", rows)
    code, out, err = run_in_process([*TINY_MODEL, "--data_files", f"train={toy_corpus},test={test_file}",
                                     "--valid_size", "20", "--seq_len", "16", "--max_steps", "2", "--beam_size", "1",
                                     "--model_folder", str(tmp_path / "w")], capsys)
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("test ("))
    assert "| 10 sentences, all of the split (1 sources longer than --seq_len cut to fit) | nrefs:1|" in line


def test_unsafe_checkpoint_is_refused(tmp_path, toy_corpus, capsys):
    class RunsCode:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    folder = tmp_path / "w"
    folder.mkdir()
    crafted = folder / "ckpt_00000001.pt"
    torch.save({"step": 1, "payload": RunsCode()}, crafted)
    (folder / "ckpt_00000001.done").write_text(json.dumps({"step": 1, "bytes": crafted.stat().st_size}))
    args = [*TINY_MODEL, "--data_files", toy_corpus, "--valid_size", "20", "--test_size", "20", "--max_steps", "2"]
    before = folder_state(folder)
    for preload in ("latest", str(crafted)):
        code, out, err = run_in_process([*args, "--model_folder", str(folder), "--preload", preload], capsys)
        assert code == 2 and "refusing to load" in err and "could run code" in err
        assert "pwned" not in out + err
        assert folder_state(folder) == before  # no tokenizers written beside the refused checkpoint


@pytest.mark.parametrize("flags, message", [
    (["--dataset", "no-such-org/no-such-corpus"], "error: --dataset: cannot load 'no-such-org/no-such-corpus'"),
    (["--lang_src", "de"], "error: --lang_src: language 'de' is not in the corpus"),
    (["--data_files", "EMPTY"], "error: --data_files: the corpus is empty"),
    (["--model_folder", "FILE/sub"], "error: --model_folder"),
    (["--d_model", "30", "--num_heads", "4"], "error: --num_heads: must divide --d_model"),
    (["--seq_len", "4"], "error: --seq_len 4: too few training pairs fit"),
    (["--preload", "999"], "error: --preload 999: no complete checkpoint of that step"),
    (["--preload", "FILE.pt"], "error: --preload 'FILE.pt': no such file"),
])
@pytest.mark.parametrize("folder_exists", [False, True])
def test_bad_input_is_one_clear_line_and_writes_nothing(tmp_path, toy_corpus, capsys, flags, message, folder_exists):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "FILE").write_text("a file where a folder should be")
    flags = [f.replace("EMPTY", str(tmp_path / "empty.jsonl")).replace("FILE", str(tmp_path / "FILE"))
             for f in flags]
    message = message.replace("FILE", str(tmp_path / "FILE"))
    folder = tmp_path / "weights"
    if folder_exists:
        folder.mkdir()
        (folder / "notes.txt").write_text("the user's own file")
    before = folder_state(folder)
    data_flags = [] if "--data_files" in flags or "--dataset" in flags else ["--data_files", toy_corpus]
    code, _, err = run_in_process([*TINY_MODEL, *data_flags, "--valid_size", "20", "--test_size", "20",
                                   "--model_folder", str(folder), *flags], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith(message) and "Traceback" not in err
    assert folder_state(folder) == before  # not even an empty folder is left behind


@pytest.mark.e2e
def test_bad_input_stops_every_rank_of_a_torchrun_job_and_is_said_once(tmp_path, toy_corpus):
    result = torchrun(2, [*TINY_MODEL, "--data_files", toy_corpus, "--lang_tgt", "fr", "--model_folder",
                          str(tmp_path / "w")], extra=["--standalone"], timeout=120)
    assert result.returncode == 1  # torchrun's, for workers that exit non-zero
    assert result.stderr.count("error: --lang_tgt: language 'fr' is not in the corpus") == 1  # by global rank 0
    assert "exitcode  : 2" in result.stderr  # torchrun's summary of the first rank to exit (the other may be stopped)
    assert not (tmp_path / "w").exists()


def test_ranks_other_than_0_exit_2_without_a_word_on_an_error_every_rank_sees(toy_corpus, monkeypatch, capsys):
    """Validation and argparse fail alike on every rank: global rank 0 (argparse: local rank 0 of each node) says it."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    for flags in (["--num_heads", "3"], ["--no_such_flag"]):
        code, out, err = run_in_process([*TINY_MODEL, "--data_files", toy_corpus, *flags], capsys)
        assert code == 2 and out == "" and err == ""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    code, _, err = run_in_process([*TINY_MODEL, "--data_files", toy_corpus, "--num_heads", "3"], capsys)
    assert code == 2 and err.startswith("error: --num_heads: must divide --d_model")


def test_help_lists_every_flag(capsys):
    code, out, _ = run_in_process(["--help"], capsys)
    assert code == 0
    for flag in ("--batch_size", "--grad_accum_steps", "--precision", "--wandb_mode", "--preload", "--data_files"):
        assert flag in out


def test_precision_policy(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):  # a CPU that emulates bf16
        monkeypatch.setattr(torch.cpu, name, lambda: False)
    assert runtime.resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)  # Cooper Lake, Zen 4, ...
    assert runtime.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)  # Sapphire Rapids, ...
    assert runtime.resolve_precision("auto", cpu) == "bf16"
    assert runtime.resolve_precision("fp32", cpu) == "fp32" and runtime.resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(train.UserError, match="--precision fp16 needs a CUDA GPU"):
        runtime.resolve_precision("fp16", cpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert runtime.resolve_precision("auto", gpu) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # P4000, V100
    assert runtime.resolve_precision("auto", gpu) == "fp16"


@pytest.mark.parametrize("schedule", ["inverse_sqrt", "cosine", "wsd"])
def test_learning_rate_schedule(schedule):
    cfg = train.parse_config(["--warmup_steps", "10", "--lr_schedule", schedule])
    multiplier = optimization.lr_multiplier(cfg, total_steps=110)
    warmup = [multiplier(s) for s in range(10)]
    assert warmup == sorted(warmup) and warmup[0] == pytest.approx(0.1) and warmup[-1] == pytest.approx(1.0)
    decay = [multiplier(s) for s in range(10, 110)]
    assert decay == sorted(decay, reverse=True) and decay[-1] < 0.35
    if schedule == "inverse_sqrt":
        assert multiplier(39) == pytest.approx(0.5)  # sqrt(10 / 40)
    else:
        assert multiplier(109) == pytest.approx(0.0, abs=1e-9)
    if schedule == "wsd":  # held for 80 of the 100 steps after warmup, then down by 1/20 per step
        assert decay[:80] == pytest.approx([1.0] * 80) and decay[80] < 0.96 and multiplier(99) == pytest.approx(0.5)


@pytest.mark.parametrize("schedule, at_half, at_nine_tenths", [("cosine", 0.5, 0.0245), ("wsd", 1.0, 0.5)])
def test_cosine_and_wsd_schedules_follow_the_time_budget_when_it_runs_out_first(schedule, at_half, at_nine_tenths):
    cfg = train.parse_config(["--warmup_steps", "10", "--lr_schedule", schedule])
    used = [0.0]
    multiplier = optimization.lr_multiplier(cfg, total_steps=10_000, budget_used=lambda: used[0])
    by_steps = multiplier(100)
    used[0] = 0.5
    assert multiplier(100) == pytest.approx(at_half) and by_steps > 0.99  # half the budget spent
    used[0] = 0.9
    assert multiplier(100) == pytest.approx(at_nine_tenths, abs=1e-3)
    used[0] = 1.0
    assert multiplier(100) == pytest.approx(0.0, abs=1e-9)


def test_the_learning_rate_follows_the_agreed_budget_share_not_this_ranks_clock():
    import time

    clock = train.BudgetClock(100.0, started=time.perf_counter() - 50)  # this rank's clock: half spent
    assert clock.share_spent() == pytest.approx(0.5, abs=0.01) and clock.fraction_used() == 0.0  # not agreed yet
    clock.agreed = 0.25  # what the ranks agreed on, one step late
    assert clock.fraction_used() == 0.25
    clock.resume_from(80.0)  # a resumed run starts from the checkpoint's figure, the same on every rank
    assert clock.fraction_used() == 0.8 and clock.share_spent() > 1.0 - 1e-9
    assert train.BudgetClock(float("inf"), time.perf_counter()).share_spent() == 0.0


@pytest.mark.e2e
def test_max_time_ends_training_like_a_normal_end_and_counts_time_before_a_resume(tmp_path, toy_corpus, capsys):
    folder = tmp_path / "w"
    base = [*TINY_MODEL, "--data_files", toy_corpus, "--valid_size", "20", "--test_size", "20", "--model_folder",
            str(folder), "--num_epochs", "1000", "--eval_every", "1000", "--save_every", "1000"]
    # The budget's clock starts with train(), so what a first run imports counts against it (seconds on a cold,
    # slow machine). A run of one step first: the budget then times the same work whatever ran before.
    code, _, err = run_in_process([*base, "--model_folder", str(tmp_path / "warm-up"), "--max_steps", "1"], capsys)
    assert code == 0, err[-3000:]
    code, out, err = run_in_process([*base, "--max_time", "10s"], capsys)
    assert code == 0, err[-3000:]
    assert "--max_time 10s spent" in out and "test (best checkpoint" in out  # then scored as at a normal end
    (step, path), = checkpoint.list_checkpoints(str(folder))[-1:]
    saved = checkpoint.load_checkpoint(path)
    assert 0 < step < 1000 * 23 and saved["time_spent_s"] >= 10.0
    # Epochs of a few steps went by, yet a run measured in time evaluates by --eval_every and at its end only.
    by_eval_every = [str(s) for s in range(1000, step, 1000)]  # a fast machine gets past step 1000 in the budget
    assert saved["epoch"] >= 2 and re.findall(r"^step (\d+) \| val loss", out, re.M) == [*by_eval_every, str(step)]
    # The same budget again: it is spent already, so the resumed run stops after one step.
    code, out, err = run_in_process([*base, "--max_time", "10s"], capsys)
    assert code == 0 and f"resumed from step {step}" in out, err[-3000:]
    assert checkpoint.list_checkpoints(str(folder))[-1][0] == step + 1
    # A larger budget goes on; --max_steps, whichever comes first, ends it.
    code, out, err = run_in_process([*base, "--max_time", "1h", "--max_steps", str(step + 4)], capsys)
    assert code == 0 and "--max_time 1h spent" not in out, err[-3000:]
    assert checkpoint.list_checkpoints(str(folder))[-1][0] == step + 4


@pytest.mark.e2e
def test_a_run_until_its_budget_shows_no_step_total_but_the_time_left(tmp_path, toy_corpus, capsys):
    code, out, err = run_in_process([*TINY_MODEL, "--data_files", toy_corpus, "--valid_size", "20", "--test_size", "20",
                                     "--model_folder", str(tmp_path / "w"), "--max_time", "4s"], capsys)
    assert code == 0, err[-3000:]
    lines = re.findall(r"^step \d+\S* \| loss .*$", out, re.M)
    # --num_epochs is "until --max_time": no step count ends the run, so none is shown as its total
    assert lines and all(re.match(r"step \d+ \| ", line) and " | ETA " in line for line in lines), lines


def test_weight_decay_skips_biases_norms_and_embeddings():
    from model import ModelConfig, Transformer

    model = Transformer(ModelConfig(src_vocab_size=30, tgt_vocab_size=30, d_model=16, num_heads=2, num_layers=1,
                                    d_ff=32))
    decay, no_decay = optimization.build_optimizer(model, train.parse_config([])).param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert any(p is model.encoder_layers[0].ff.up.weight for p in decay["params"])
    for p in (model.src_embed.weight, model.encoder_norm.weight, model.encoder_layers[0].ff.up.bias):
        assert any(q is p for q in no_decay["params"]) and not any(q is p for q in decay["params"])
    assert decay["params"] and len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_an_fp16_overflow_skips_the_step_halves_the_loss_scale_and_training_goes_on():
    """The P4000/V100 path (fp16 autocast + GradScaler), run on the CPU: an overflowing step changes nothing but the
    scale, and the next step trains."""
    from distributed import DistInfo
    from model import ModelConfig, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(src_vocab_size=30, tgt_vocab_size=30, d_model=16, num_heads=2, num_layers=1,
                                    d_ff=32, dropout=0.0, max_len=16, pad_id=tok.PAD_ID))
    cfg = train.parse_config(["--d_model", "16"])
    optimizer = optimization.build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    info = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    autocast = runtime.make_autocast("fp16", info.device)
    tokens = torch.randint(4, 30, (4, 9))
    batch = {"src": tokens[:, 1:], "tgt_in": tokens[:, :-1], "tgt_out": tokens[:, 1:]}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = optimization.train_step(model, model, optimizer, scaler, [batch], cfg, info, autocast, force_overflow=True)
    assert result.skipped.item() == 1.0 and scaler.get_scale() == 2.0**15
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.isfinite(result.loss_sum)  # the loss is reported as it was, before the overflow
    result = optimization.train_step(model, model, optimizer, scaler, [batch], cfg, info, autocast)
    assert result.skipped.item() == 0.0 and scaler.get_scale() == 2.0**15
    assert not torch.equal(before["src_embed.weight"], model.state_dict()["src_embed.weight"])
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_a_forced_overflow_in_a_run_is_skipped_counted_and_training_goes_on(tmp_path, toy_corpus, capsys,
                                                                             monkeypatch):
    monkeypatch.setenv("TRAINER_TEST_OVERFLOW_AT_STEP", "3")
    code, out, err = run_in_process([*TINY_MODEL, "--data_files", toy_corpus, "--valid_size", "20", "--test_size",
                                     "20", "--model_folder", str(tmp_path / "w"), "--max_steps", "6"], capsys)
    assert code == 0, err
    assert "1 steps skipped so far for a non-finite loss or gradient" in out and "done: 6 steps, 1 skipped" in out
    losses = [m["train/loss"] for m in metrics(tmp_path / "w") if "train/loss" in m]
    assert len(losses) == 3 and all(map(math.isfinite, losses))


def test_the_metrics_line_says_the_step_of_the_total_the_time_left_and_the_time(tmp_path, toy_corpus, capsys):
    code, out, err = run_in_process([*TINY_MODEL, "--data_files", toy_corpus, "--valid_size", "20", "--test_size",
                                     "20", "--model_folder", str(tmp_path / "w"), "--max_steps", "6"], capsys)
    assert code == 0, err
    lines = [line for line in out.splitlines() if re.match(r"step \d+/6 \| loss", line)]
    assert [line.split("/")[0] for line in lines] == ["step 2", "step 4", "step 6"]
    assert all(re.search(r"\| ETA \d+s \| \d\d-\d\d \d\d:\d\d:\d\d$", line) for line in lines), lines
    assert lines[-1].split("| ETA ")[1].startswith("0s")  # nothing left at the last step
