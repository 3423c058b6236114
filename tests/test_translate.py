"""translate.py (CLI, stdin, files, evaluation), checkpoint averaging and the final test score, on conftest's tiny
model trained for a few seconds (`trained`)."""

import io
import json
import os
import re
import shutil
import sys

import pytest
import sacrebleu
import torch

import checkpoint
import tokenizer as tok
import runtime
import translate
from helpers import toy_pairs

pytestmark = pytest.mark.e2e  # every test here reads a model trained for the session


@pytest.fixture
def run_translate(capsys, monkeypatch):
    """translate.py's main with these arguments (and this standard input), in this process: (exit code, stdout,
    stderr)."""
    def run(args: list[str], stdin: str | None = None) -> tuple[int, str, str]:
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        capsys.readouterr()
        try:
            translate.main(args)
            code = 0
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_training_ends_with_the_test_split_scored_by_the_best_checkpoint(trained, run_translate):
    folder, out = trained
    match = re.search(r"test \(best checkpoint, step (\d+), beam 4, length penalty 1.0\): BLEU ([\d.]+)", out)
    assert match and float(match.group(2)) > 30, out[-2000:]
    summary = [json.loads(line) for line in open(folder / "metrics.jsonl") if '"test/bleu"' in line]
    assert len(summary) == 1 and summary[0]["summary"]
    assert summary[0]["test/bleu"] == pytest.approx(float(match.group(2)), abs=0.01)
    assert summary[0]["test/checkpoint_step"] == int(match.group(1))
    assert [n for n in os.listdir(folder) if n.startswith("averaged_")]
    # translate.py decodes in the run's precision (--precision auto, resolved on this machine) and scores the same
    # pairs: the same number as training's test line.
    code, again, err = run_translate(["--model_folder", str(folder), "--evaluate"])
    assert code == 0 and f"BLEU {match.group(2)} |" in again, again + err
    assert f"precision {runtime.resolve_precision('auto', torch.device('cpu'))}" in err


def test_translate_cli_stdin_and_files_agree(trained, tmp_path, run_translate):
    folder, _ = trained
    sentences = ["The red cat sees the dog.", "The old horse has the book."]
    code, by_args, err = run_translate(["--model_folder", str(folder), *sentences])
    assert code == 0, err
    translations = by_args.strip().splitlines()
    assert len(translations) == 2 and translations[0].startswith("Il ") and translations[0].endswith(".")
    code, by_stdin, _ = run_translate(["--model_folder", str(folder)], stdin="\n".join(sentences) + "\n")
    assert code == 0 and by_stdin.strip().splitlines() == translations
    (tmp_path / "in.en").write_text("\n".join(sentences) + "\n")
    code, _, _ = run_translate(["--model_folder", str(folder), "--input", str(tmp_path / "in.en"), "--output",
                                str(tmp_path / "out.it"), "--batch_size", "1"])
    assert code == 0 and (tmp_path / "out.it").read_text().splitlines() == translations


def test_evaluate_reports_what_sacrebleu_says_of_the_written_hypotheses(trained, tmp_path, run_translate):
    folder, _ = trained
    pairs = toy_pairs(30, seed=3)
    (tmp_path / "src.en").write_text("".join(s + "\n" for s, _ in pairs))
    (tmp_path / "ref.it").write_text("".join(t + "\n" for _, t in pairs))
    code, out, err = run_translate(["--model_folder", str(folder), "--evaluate", "--source", str(tmp_path / "src.en"),
                                    "--reference", str(tmp_path / "ref.it"), "--output", str(tmp_path / "hyp.it")])
    assert code == 0, err
    hypotheses = (tmp_path / "hyp.it").read_text().splitlines()
    expected = sacrebleu.corpus_bleu(hypotheses, [[t for _, t in pairs]])
    assert f"BLEU {expected.score:.2f}" in out and "BLEU signature nrefs:1" in out
    assert "chrF signature" in out
    code, out, err = run_translate(["--model_folder", str(folder), "--evaluate", "--beam_size", "1"])
    assert code == 0 and "the test split: 40 sentences" in out, err


def test_averaging_identical_checkpoints_is_the_identity(trained, tmp_path, run_translate):
    folder, _ = trained
    copy = tmp_path / "w"
    shutil.copytree(folder, copy)
    newest = checkpoint.list_checkpoints(str(copy))[-1][1]
    state = checkpoint.load_checkpoint(newest)
    for step in (1000, 2000):
        checkpoint.save_checkpoint(str(copy), step, {**state, "step": step}, keep_last=10)
    averaged = checkpoint.load_checkpoint(checkpoint.write_average_of_last(str(copy), 2), weights_will_do=True)
    assert averaged["averaged_from"] == [1000, 2000]
    for name, value in state["model"].items():
        assert torch.equal(averaged["model"][name], value), name
    code, out, _ = run_translate(["--model_folder", str(copy), "--average_last", "3"])
    assert code == 0 and "averaged steps" in out


def test_missing_or_incompatible_folders_are_clear_errors(trained, tmp_path, run_translate):
    folder, _ = trained
    code, _, missing = run_translate(["--model_folder", str(tmp_path / "nowhere"), "hello"])
    assert code == 2 and "error: --model_folder" in missing and "no such folder" in missing
    (tmp_path / "empty").mkdir()
    code, _, empty = run_translate(["--model_folder", str(tmp_path / "empty"), "hello"])
    assert code == 2 and "no complete checkpoint there" in empty
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    retrained = tok.train_tokenizer([t for _, t in toy_pairs(50, seed=9)], 300)
    (other / "tokenizer_it.json").write_text(retrained.to_str())
    code, _, mismatch = run_translate(["--model_folder", str(other), "hello"])
    assert code == 2 and "is not the tokenizer" in mismatch
    assert "Traceback" not in missing + empty + mismatch


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
