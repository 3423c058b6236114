import dataclasses

import pytest

from errors import UserError
from config import Config, build_parser, parse_config, parse_duration, resolve_defaults, validate


def test_every_setting_is_a_flag_with_help():
    parser = build_parser()
    actions = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(Config):
        assert f.name in actions, f.name
        assert actions[f.name].help and actions[f.name].default == f.default


def test_flags_of_the_projects_we_replace_still_parse():
    cfg = parse_config(["--batch_size", "8", "--num_epochs", "2", "--lr", "0.0002", "--seq_len", "64",
                        "--d_model", "128", "--lang_src", "en", "--lang_tgt", "fr", "--model_folder", "/mnt/w",
                        "--preload", "none", "--wandb_group", "exp1"])
    assert (cfg.batch_size, cfg.num_epochs, cfg.lr, cfg.seq_len, cfg.d_model) == (8, 2, 0.0002, 64, 128)
    assert (cfg.lang_tgt, cfg.model_folder, cfg.preload, cfg.wandb_group) == ("fr", "/mnt/w", "none", "exp1")
    validate(cfg)


def test_types_booleans_and_optional_ints():
    cfg = parse_config(["--no-tie_embeddings", "--max_steps", "7", "--dropout", "0.3"])
    assert cfg.tie_embeddings is False and cfg.max_steps == 7 and cfg.dropout == 0.3
    assert parse_config(["--max_steps", "none"]).max_steps is None
    assert parse_config(["--compile"]).compile is True and parse_config(["--no-compile"]).compile is False
    assert parse_config([]).compile is None  # auto: on with CUDA, off on CPU
    assert parse_config(["--peak_tflops", "989.5"]).peak_tflops == 989.5
    assert parse_config([]) == Config()


def test_unknown_choice_is_rejected_by_argparse(capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(["--precision", "fp8"])
    assert e.value.code == 2
    assert "--precision" in capsys.readouterr().err


@pytest.mark.parametrize("args, flag", [
    (["--d_model", "100", "--num_heads", "3"], "--num_heads"),
    (["--batch_size", "0"], "--batch_size"),
    (["--num_layers", "-1"], "--num_layers"),
    (["--dropout", "1.5"], "--dropout"),
    (["--lang_tgt", "en"], "--lang_tgt"),
    (["--keep_last", "1"], "--keep_last"),
    (["--max_steps", "0"], "--max_steps"),
    (["--vocab_size", "10"], "--vocab_size"),
    (["--dataset_config", "en-it"], "--dataset_config"),
    (["--max_tokens", "100", "--seq_len", "128"], "--max_tokens"),
    (["--num_workers", "-1"], "--num_workers"),
    (["--peak_tflops", "0"], "--peak_tflops"),
    (["--init_from", "weights", "--preload", "4"], "--init_from"),
])
def test_invalid_values_name_the_flag(args, flag):
    with pytest.raises(UserError) as e:
        validate(parse_config(args))
    assert str(e.value).startswith(flag)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("pairs, dropout, vocab_size", [
    (32_000, 0.3, 4000),  # opus_books en-it
    (160_000, 0.3, 8000),  # IWSLT'14 scale
    (1_000_000, 0.2, 16000),
    (4_500_000, 0.1, 32000),  # WMT'16 en-de scale
])
def test_long_runs_take_dropout_and_vocabulary_from_the_corpus_size(pairs, dropout, vocab_size):
    cfg, note = resolve_defaults(parse_config(["--data_files", "corpus.jsonl", "--num_epochs", "40"]), pairs, "cpu")
    assert (cfg.dropout, cfg.vocab_size) == (dropout, vocab_size)
    assert f"--dropout {dropout}" in note and f"--vocab_size {vocab_size}" in note and f"{pairs:,}" in note
    cfg, _ = resolve_defaults(parse_config(["--data_files", "c.jsonl", "--max_time", "1d"]), pairs, "cuda")
    assert (cfg.dropout, cfg.vocab_size) == (dropout, vocab_size)


def test_short_runs_of_real_corpora_learn_fast_with_a_joint_vocabulary_and_small_cpu_batches():
    for flags, dropout in (([], 0.1), (["--max_time", "14m"], 0.0), (["--max_time", "30m"], 0.0),
                           (["--max_time", "31m"], 0.1), (["--max_time", "2h"], 0.1), (["--num_epochs", "10"], 0.1)):
        cfg, note = resolve_defaults(parse_config(["--data_files", "corpus.jsonl", *flags]), 27_000, "cpu")
        assert (cfg.dropout, cfg.vocab_size, cfg.share_vocab, cfg.batch_size) == (dropout, 4000, True, 16), flags
        assert "a short run, on cpu" in note and f"--dropout {dropout}" in note
    cfg, _ = resolve_defaults(parse_config(["--data_files", "corpus.jsonl", "--max_time", "14m"]), 27_000, "cuda")
    assert cfg.dropout == 0.1  # a GPU sees many epochs in the same minutes
    cfg, _ = resolve_defaults(parse_config(["--max_time", "14m"]), 20_000, "cpu")
    assert cfg.dropout == 0.1  # the builtin corpus keeps its measured value
    cfg, note = resolve_defaults(parse_config(["--data_files", "corpus.jsonl"]), 27_000, "cuda")
    assert cfg.batch_size == 64 and cfg.num_epochs == 4
    cfg, note = resolve_defaults(parse_config(["--data_files", "corpus.jsonl", "--max_time", "14m"]), 27_000, "cpu")
    assert cfg.num_epochs >= 10**9 and "--num_epochs until --max_time" in note  # the budget ends the run


def test_the_builtin_corpus_keeps_its_measured_dropout_and_separate_vocabularies():
    cfg, note = resolve_defaults(parse_config(["--num_epochs", "40"]), 20_000, "cpu")
    assert (cfg.dropout, cfg.vocab_size, cfg.share_vocab) == (0.1, 4000, False)


def test_values_given_on_the_command_line_are_kept_whatever_the_corpus_size():
    cfg, note = resolve_defaults(parse_config(["--dropout", "0.05", "--batch_size", "8"]), 20_000, "cpu")
    assert (cfg.dropout, cfg.vocab_size, cfg.batch_size) == (0.05, 4000, 8) and "--dropout" not in note
    cfg, note = resolve_defaults(parse_config(["--dropout", "0.0", "--vocab_size", "500", "--no-share_vocab",
                                               "--batch_size", "32", "--num_epochs", "3", "--num_layers", "3",
                                               "--d_ff", "1024", "--lr_schedule", "cosine"]), 10_000_000, "cpu")
    assert (cfg.dropout, cfg.vocab_size, cfg.share_vocab, note) == (0.0, 500, False, "")


def test_a_time_budget_takes_the_wsd_schedule_and_epochs_inverse_square_root():
    for flags, schedule in [(["--max_time", "14m"], "wsd"), (["--max_time", "1d"], "wsd"), ([], "inverse_sqrt"),
                            (["--num_epochs", "40"], "inverse_sqrt"), (["--max_time", "1h", "--lr_schedule", "cosine"],
                                                                       "cosine")]:
        cfg, note = resolve_defaults(parse_config(["--data_files", "corpus.jsonl", *flags]), 27_000, "cpu")
        assert cfg.lr_schedule == schedule, flags
        assert (f"--lr_schedule {schedule}" in note) == ("--lr_schedule" not in flags), flags


def test_max_time_takes_durations_and_refuses_anything_else():
    assert [parse_duration(t) for t in ("14m", "2h", "1d6h", "1h30m", "90s", "3600", "0.5h")] == \
        [840, 7200, 108000, 5400, 90, 3600, 1800]
    validate(parse_config(["--max_time", "14m"]))
    for bad in ("14x", "m", "1h 30m", "-5", "0", "soon"):
        with pytest.raises(UserError, match="--max_time: expected a positive duration such as 14m"):
            validate(parse_config(["--max_time", bad]))


def test_a_short_time_budget_on_cpu_takes_a_smaller_network_and_explicit_shapes_stay():
    for flags, device, shape in [(["--max_time", "14m"], "cpu", (2, 512)), (["--max_time", "2h"], "cpu", (2, 512)),
                                 (["--max_time", "3h"], "cpu", (3, 1024)),  # a long run: the usual network
                                 ([], "cpu", (3, 1024)),  # epochs, not a budget: the quick start's network
                                 (["--max_time", "14m"], "cuda", (3, 1024))]:
        cfg, note = resolve_defaults(parse_config(["--data_files", "corpus.jsonl", *flags]), 27_000, device)
        assert (cfg.num_layers, cfg.d_ff) == shape, (flags, device)
        assert f"--num_layers {shape[0]}" in note and f"--d_ff {shape[1]}" in note
    cfg, note = resolve_defaults(parse_config(["--data_files", "c.jsonl", "--max_time", "14m", "--num_layers", "4",
                                               "--d_ff", "256"]), 27_000, "cpu")
    assert (cfg.num_layers, cfg.d_ff) == (4, 256) and "--num_layers" not in note
