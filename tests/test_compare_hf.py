"""compare_hf.py: the HF side launched for a few steps on a tiny corpus (e2e), our side's launch and row read from
the session's trained model folder, the training windows its rates come from, and the tokenizer both sides share."""

import json
import os
import shutil
import sys

import pytest

import compare_hf
import config
import corpus
import tokenizer
from helpers import ROOT, failure_report, launch, toy_pairs, write_jsonl

# Placeholders in every split, so that the placeholder rate has sentences to count.
PLACEHOLDER_PAIRS = [("cannot open %s", "impossibile aprire %s"), ("{0} files deleted", "{0} file eliminati"),
                     ("saved %d pages of %s", "salvate %d pagine di %s"), ("no such user: %s", "utente %s inesistente"),
                     ("%s is not a folder", "%s non è una cartella"), ("{name} was copied", "{name} è stato copiato")]


def tiny_corpus(folder) -> str:
    """--data_files of three splits: 300 training pairs, 12 validation, 8 test (2 with placeholders)."""
    pairs = toy_pairs(316)
    train, valid, test = pairs[:296] + PLACEHOLDER_PAIRS[:4], pairs[296:308], pairs[308:] + PLACEHOLDER_PAIRS[4:]
    files = {split: write_jsonl(folder / f"{split}.jsonl", split_pairs)
             for split, split_pairs in (("train", train), ("validation", valid), ("test", test))}
    return ",".join(f"{split}={path}" for split, path in files.items())


@pytest.mark.e2e
def test_the_hf_side_trains_a_few_steps_on_two_processes_and_scores_the_test_split(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    out, work = tmp_path / "out.json", tmp_path / "work"
    result = launch([sys.executable, "compare_hf.py", "--data_files", tiny_corpus(tmp_path), "--which", "hf",
                     "--max_steps", "4", "--work_dir", str(work), "--json", str(out)], timeout=300)
    assert result.returncode == 0, failure_report(result)
    (row,) = json.loads(out.read_text())["rows"]
    assert row["system"] == "hf" and row["steps"] == 4 and row["test_sentences"] == 10
    assert isinstance(row["bleu"], float) and 0 <= row["bleu"] <= 100 and 0 <= row["chrf"] <= 100
    assert isinstance(row["placeholder_match"], float) and 0 <= row["placeholder_match"] <= 1
    assert row["ms_per_step"] > 0 and row["tokens_per_s"] > 0 and row["parameters"] > 0
    assert round(row["pairs_per_s"] * row["train_s"]) == 4 * 16 * compare_hf.NPROC  # counted on both ranks
    assert "| HF MarianMTModel + Seq2SeqTrainer | " in result.stdout and "10 test sentences" in result.stdout

    # The wrapped tokenizer feeds Marian our token ids, plus the EOS that train.py appends too.
    with open(work / "hf" / "tokenizer.json", encoding="utf-8") as f:
        ours = tokenizer.tokenizer_from_json(f.read())
    sentences = ["cannot open %s", "Il cane rosso vede il gatto.", "literal [EOS] stays text"]
    wrapped = compare_hf.hf_tokenizer(ours)(sentences)["input_ids"]
    assert wrapped == [e.ids + [tokenizer.EOS_ID] for e in ours.encode_batch(sentences, add_special_tokens=False)]


def test_the_ours_side_launches_train_py_with_the_budget_and_reads_its_row(trained, tmp_path, monkeypatch, capsys):
    folder, _ = trained
    launched = []

    def finished_run(command, log_path):  # the session's trained folder stands for the run's model folder
        launched.append(command)
        shutil.copytree(folder, command[command.index("--model_folder") + 1], dirs_exist_ok=True)
        return 12.5

    monkeypatch.setattr(compare_hf, "launch", finished_run)
    compare_hf.main(["--data_files", "a.jsonl", "--lang_tgt", "it", "--which", "ours", "--minutes", "0.5",
                     "--work_dir", str(tmp_path), "--json", str(tmp_path / "out.json")])
    (command,) = launched
    assert command[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           os.path.join(ROOT, "train.py")]
    flags = dict(zip(command[6::2], command[7::2]))
    assert flags == {"--data_files": "a.jsonl", "--lang_src": "en", "--lang_tgt": "it", "--max_time": "30.0",
                     "--model_folder": str(tmp_path / "ours"), "--wandb_mode": "disabled"}
    with open(folder / "metrics.jsonl") as f:
        lines = [json.loads(line) for line in f]
    summary = {k: v for line in lines if line.get("summary") for k, v in line.items()}
    (row,) = json.loads((tmp_path / "out.json").read_text())["rows"]
    assert row["bleu"] == summary["test/bleu"] and row["chrf"] == summary["test/chrf"] and row["wall_s"] == 12.5
    assert row["steps"] == max(line.get("step", 0) for line in lines) > 0 and row["parameters"] > 0
    # Every window of that run holds an epoch's end (17 steps an epoch, a line every 50): no rate to give.
    assert row["ms_per_step"] is None and row["tokens_per_s"] is None
    assert "| ours: train.py defaults | " in capsys.readouterr().out


def test_rates_leave_out_windows_that_hold_a_validation_a_checkpoint_or_an_epoch_end():
    cfg = config.Config(eval_every=150, save_every=150)
    window = {"train/step_ms": 100.0, "train/tokens_per_s": 1000.0, "train/epoch": 0}
    lines = [{"step": 50, **window}, {"step": 100, **window}, {"step": 150, **window}, {"step": 150, "val/loss": 1.0},
             {"step": 200, **window, "train/step_ms": 900.0},  # after the validation and checkpoint at 150
             {"step": 250, **window, "train/epoch": 1, "train/step_ms": 700.0},  # an epoch ended in it
             {"step": 300, **window, "train/epoch": 1}, {"summary": True, "test/bleu": 1.0}]
    assert compare_hf.training_windows(lines, cfg) == (20.0, 20000.0, 200)


def test_the_hf_side_trains_the_tokenizer_train_py_trains(tmp_path):
    cfg = config.Config(data_files=tiny_corpus(tmp_path), max_time="60")
    pairs = corpus.load_corpus(cfg)
    cfg, _ = config.resolve_defaults(cfg, len(pairs["train"]), "cpu")
    theirs = compare_hf.joint_tokenizer(cfg, pairs, str(tmp_path))
    ours, _ = tokenizer.build_tokenizer_json(str(tmp_path / "ours"), ("en", "it"), cfg.share_vocab, cfg.vocab_size,
                                             lambda: corpus.tokenizer_sample(cfg, pairs))
    assert cfg.share_vocab and tokenizer.tokenizer_from_json(ours).get_vocab() == theirs.get_vocab()
