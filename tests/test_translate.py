"""Beam search, translate.py (CLI, stdin, files, evaluation), checkpoint averaging and the final test score,
on a tiny model trained here for a few seconds."""

import json
import os
import re
import shutil
import sys

import pytest
import sacrebleu
import torch

import checkpoint
import decoding
import tokenizer as tok
import runtime
import translate
from conftest import launch, toy_pairs, write_jsonl

TRAIN = ["--d_model", "64", "--num_layers", "1", "--num_heads", "2", "--d_ff", "128", "--vocab_size", "400",
         "--batch_size", "32", "--lr", "3e-3", "--warmup_steps", "20", "--num_epochs", "8", "--eval_every", "1000",
         "--save_every", "25", "--keep_last", "3", "--average_last", "3", "--eval_max_sentences", "40",
         "--log_every", "50", "--valid_size", "40", "--test_size", "40", "--wandb_mode", "disabled"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model folder, training stdout) of a tiny model that translates the toy corpus fairly well."""
    root = tmp_path_factory.mktemp("trained")
    corpus = write_jsonl(root / "toy.jsonl", toy_pairs(600))
    result = launch([sys.executable, "train.py", *TRAIN, "--data_files", corpus, "--model_folder", str(root / "w")])
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "w", result.stdout


def run_translate(args: list[str], stdin: str | None = None):
    return launch([sys.executable, "translate.py", *args], timeout=120, stdin=stdin)


def test_training_ends_with_the_test_split_scored_by_the_best_checkpoint(trained):
    folder, out = trained
    match = re.search(r"test \(best checkpoint, step (\d+), beam 4, length penalty 1.0\): BLEU ([\d.]+)", out)
    assert match and float(match.group(2)) > 30, out[-2000:]
    summary = [json.loads(line) for line in open(folder / "metrics.jsonl") if '"summary"' in line]
    assert len(summary) == 1 and summary[0]["test/bleu"] == pytest.approx(float(match.group(2)), abs=0.01)
    assert summary[0]["test/checkpoint_step"] == int(match.group(1))
    assert [n for n in os.listdir(folder) if n.startswith("averaged_")]
    # translate.py decodes in the run's precision (--precision auto, resolved on this machine) and scores the same
    # pairs: the same number as training's test line.
    again = run_translate(["--model_folder", str(folder), "--evaluate"])
    assert again.returncode == 0 and f"BLEU {match.group(2)} |" in again.stdout, again.stdout + again.stderr
    assert f"precision {runtime.resolve_precision('auto', torch.device('cpu'))}" in again.stderr


def test_beam_search_never_scores_below_greedy_under_the_model(trained):
    folder, _ = trained
    translator = translate.Translator(str(folder), "best", torch.device("cpu"))
    model = translator.model
    sources = [s for s, _ in toy_pairs(40, seed=7)] + ["The dog.", "horse horse horse book tree the the"]
    src = torch.nn.utils.rnn.pad_sequence(
        [torch.tensor(e.ids + [tok.EOS_ID]) for e in translator.src_tok.encode_batch(sources)], batch_first=True)
    greedy = decoding.greedy_decode(model, src, tok.BOS_ID, tok.EOS_ID, 40)
    beam = decoding.beam_search(model, src, tok.BOS_ID, tok.EOS_ID, 40, beam_size=4, length_penalty=0.0)
    greedy_score = decoding.sequence_log_prob(model, src, greedy, tok.BOS_ID, tok.EOS_ID)
    beam_score = decoding.sequence_log_prob(model, src, beam, tok.BOS_ID, tok.EOS_ID)
    assert bool((beam_score >= greedy_score - 1e-4).all()), (beam_score - greedy_score).min()
    assert torch.equal(decoding.beam_search(model, src, tok.BOS_ID, tok.EOS_ID, 40, beam_size=1), greedy)


def test_translate_cli_stdin_and_files_agree(trained, tmp_path):
    folder, _ = trained
    sentences = ["The red cat sees the dog.", "The old horse has the book."]
    by_args = run_translate(["--model_folder", str(folder), *sentences])
    assert by_args.returncode == 0, by_args.stderr
    translations = by_args.stdout.strip().splitlines()
    assert len(translations) == 2 and translations[0].startswith("Il ") and translations[0].endswith(".")
    by_stdin = run_translate(["--model_folder", str(folder)], stdin="\n".join(sentences) + "\n")
    assert by_stdin.returncode == 0 and by_stdin.stdout.strip().splitlines() == translations
    (tmp_path / "in.en").write_text("\n".join(sentences) + "\n")
    by_file = run_translate(["--model_folder", str(folder), "--input", str(tmp_path / "in.en"), "--output",
                             str(tmp_path / "out.it"), "--batch_size", "1"])
    assert by_file.returncode == 0 and (tmp_path / "out.it").read_text().splitlines() == translations


def test_evaluate_reports_what_sacrebleu_says_of_the_written_hypotheses(trained, tmp_path):
    folder, _ = trained
    pairs = toy_pairs(30, seed=3)
    (tmp_path / "src.en").write_text("".join(s + "\n" for s, _ in pairs))
    (tmp_path / "ref.it").write_text("".join(t + "\n" for _, t in pairs))
    result = run_translate(["--model_folder", str(folder), "--evaluate", "--source", str(tmp_path / "src.en"),
                            "--reference", str(tmp_path / "ref.it"), "--output", str(tmp_path / "hyp.it")])
    assert result.returncode == 0, result.stderr
    hypotheses = (tmp_path / "hyp.it").read_text().splitlines()
    expected = sacrebleu.corpus_bleu(hypotheses, [[t for _, t in pairs]])
    assert f"BLEU {expected.score:.2f}" in result.stdout and "BLEU signature nrefs:1" in result.stdout
    assert "chrF signature" in result.stdout
    test_split = run_translate(["--model_folder", str(folder), "--evaluate", "--beam_size", "1"])
    assert test_split.returncode == 0 and "the test split: 40 sentences" in test_split.stdout, test_split.stderr


def test_averaging_identical_checkpoints_is_the_identity(trained, tmp_path):
    folder, _ = trained
    copy = tmp_path / "w"
    shutil.copytree(folder, copy)
    newest = checkpoint.list_checkpoints(str(copy))[-1][1]
    state = checkpoint.load_checkpoint(newest)
    for step in (1000, 2000):
        checkpoint.save_checkpoint(str(copy), step, {**state, "step": step}, keep_last=10)
    averaged = checkpoint.load_checkpoint(checkpoint.write_average_of_last(str(copy), 2))
    assert averaged["averaged_from"] == [1000, 2000]
    for name, value in state["model"].items():
        assert torch.equal(averaged["model"][name], value), name
    result = run_translate(["--model_folder", str(copy), "--average_last", "3"])
    assert result.returncode == 0 and "averaged steps" in result.stdout


def test_missing_or_incompatible_folders_are_clear_errors(trained, tmp_path):
    folder, _ = trained
    missing = run_translate(["--model_folder", str(tmp_path / "nowhere"), "hello"])
    assert missing.returncode == 2 and "error: --model_folder" in missing.stderr and "no such folder" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = run_translate(["--model_folder", str(tmp_path / "empty"), "hello"])
    assert empty.returncode == 2 and "no complete checkpoint there" in empty.stderr
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    retrained = tok.train_tokenizer([t for _, t in toy_pairs(50, seed=9)], 300)
    (other / "tokenizer_it.json").write_text(retrained.to_str())
    mismatch = run_translate(["--model_folder", str(other), "hello"])
    assert mismatch.returncode == 2 and "is not the tokenizer" in mismatch.stderr
    assert "Traceback" not in missing.stderr + empty.stderr + mismatch.stderr


def test_inputs_longer_than_the_model_are_translated_sentence_by_sentence_not_cut(trained):
    folder, _ = trained
    translator = translate.Translator(str(folder), "best", torch.device("cpu"))
    sentence = "The red cat sees the dog."
    long_input = " ".join([sentence] * 40)  # far over --seq_len 128 tokens
    assert translator.pieces(sentence) == [sentence]
    assert translator.pieces(long_input) == [sentence] * 40
    (alone,) = translator.translate([sentence], 1, 1.0, 8)
    (joined,) = translator.translate([long_input], 1, 1.0, 8)
    assert joined == " ".join([alone] * 40)  # every sentence translated, none dropped or cut
