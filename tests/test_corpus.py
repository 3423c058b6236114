"""Where pairs come from (corpus.py): local files and folders, the hub through datasets.load_dataset, split files
by name or folder, save_to_disk folders, Moses pairs and .tsv files, cleaning and its counts, and deterministic
splits."""

import os
import subprocess
import sys

import pytest

import corpus as corpora
from config import parse_config, validate
from errors import UserError
from helpers import ROOT, write_jsonl


def corpus_from_files(tmp_path, pairs, *flags):
    path = write_jsonl(tmp_path / "corpus.jsonl", pairs)
    return corpora.load_corpus(parse_config(["--data_files", path, *flags]))


def test_train_only_corpus_splits_deterministically_and_disjointly(tmp_path):
    pairs = [(f"sentence {i}", f"frase {i}") for i in range(300)]
    a = corpus_from_files(tmp_path, pairs, "--valid_size", "20", "--test_size", "30")
    b = corpus_from_files(tmp_path, pairs, "--valid_size", "20", "--test_size", "30", "--seed", "7")
    assert a == b  # independent of --seed, so a restart with another seed keeps the split
    assert (len(a["train"]), len(a["validation"]), len(a["test"])) == (250, 20, 30)
    assert sorted(a["train"] + a["validation"] + a["test"]) == sorted(pairs)
    assert a["validation"] != pairs[:20]  # shuffled, not the head of the file


def test_split_is_identical_in_another_process():
    """Ranks are separate processes: the split must not depend on hash seeds or process state."""
    code = ("import corpus; p=[(str(i), str(i)) for i in range(100)]; "
            "print(corpus.split_pairs(p, 10, 10)['validation'])")
    outputs = {subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(outputs) == 1
    split = corpora.split_pairs([(str(i), str(i)) for i in range(100)], 10, 10)
    assert outputs.pop().strip() == str(split["validation"])


def test_existing_validation_and_test_splits_are_used(tmp_path):
    for split, n in (("train", 40), ("validation", 5), ("test", 6)):
        write_jsonl(tmp_path / f"{split}.jsonl", [(f"{split} {i}", f"{split} it {i}") for i in range(n)])
    # A local dataset folder goes through datasets.load_dataset exactly like a hub name.
    corpus = corpora.load_corpus(parse_config(["--dataset", str(tmp_path)]))
    assert [len(corpus[s]) for s in ("train", "validation", "test")] == [40, 5, 6]
    assert corpus["validation"][0] == ("validation 0", "validation it 0")


def test_parquet_and_glob_data_files(tmp_path):
    import datasets

    rows = [{"id": str(i), "translation": {"en": f"a {i}", "it": f"b {i}"}} for i in range(50)]
    datasets.Dataset.from_list(rows[:25]).to_parquet(str(tmp_path / "part-0.parquet"))
    datasets.Dataset.from_list(rows[25:]).to_parquet(str(tmp_path / "part-1.parquet"))
    corpus = corpora.load_corpus(parse_config(["--data_files", str(tmp_path / "*.parquet"), "--valid_size", "5",
                                            "--test_size", "5"]))
    assert sum(len(v) for v in corpus.values()) == 50


@pytest.mark.parametrize("flags, message", [
    (["--lang_src", "de"], "--lang_src: language 'de' is not in the corpus"),
    (["--lang_tgt", "fr"], "--lang_tgt: language 'fr' is not in the corpus"),
])
def test_unknown_language_is_a_clear_error(toy_corpus, flags, message):
    with pytest.raises(UserError, match=message):
        corpora.load_corpus(parse_config(["--data_files", toy_corpus, "--valid_size", "5", "--test_size", "5", *flags]))


def test_empty_corpus_and_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="--data_files: the corpus is empty"):
        corpus_from_files(tmp_path, [])
    write_jsonl(tmp_path / "blank.jsonl", [("", "")])  # pairs exist, but hold no text: cleaned away
    with pytest.raises(UserError, match="the corpus is empty .no training pairs"):
        corpora.load_corpus(parse_config(["--data_files", str(tmp_path / "blank.jsonl")]))
    with pytest.raises(UserError, match="--data_files: no file matches"):
        corpora.load_corpus(parse_config(["--data_files", str(tmp_path / "missing*.jsonl")]))
    with pytest.raises(UserError, match="--dataset: cannot load 'no-such-org/no-such-corpus'"):
        corpora.load_corpus(parse_config(["--dataset", "no-such-org/no-such-corpus"]))


def test_hub_corpus_goes_through_load_dataset_with_its_config(monkeypatch):
    """The hub is unreachable here: check the call the trainer makes, on data of opus_books' schema."""
    import datasets

    calls = []
    rows = [{"id": str(i), "translation": {"en": f"e {i}", "it": f"i {i}"}} for i in range(30)]

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name))
        return datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    corpus = corpora.load_corpus(parse_config(["--dataset", "Helsinki-NLP/opus_books", "--dataset_config", "en-it",
                                            "--valid_size", "3", "--test_size", "3"]))
    assert calls == [("Helsinki-NLP/opus_books", "en-it")]
    assert (len(corpus["train"]), len(corpus["validation"]), len(corpus["test"])) == (24, 3, 3)


def test_dirty_corpora_are_cleaned_and_counted_and_held_out_sources_never_trained_on(tmp_path, capsys):
    decomposed = "citta\u0300"  # "città" written as "a" + a combining grave accent
    rows = [("A city.", decomposed), ("A city.", "città"),  # the same pair once NFC-normalized: a duplicate
            ("", "vuoto"), ("Empty target.", "   "),
            ("Short.", "Una frase lunghissima che non traduce affatto quella breve di partenza."),
            ("GNU", "GNU")]  # untranslated, and right to be: kept, counted
    rows += [(f"Sentence {i}.", f"Frase {i}.") for i in range(40)]
    rows += [(f"Sentence {i}.", f"Frase numero {i}.") for i in range(40)]  # same sources, other translations
    files = write_jsonl(tmp_path / "train.jsonl", rows)
    capsys.readouterr()
    corpus = corpora.load_corpus(parse_config(["--data_files", files, "--valid_size", "5", "--test_size", "5"]))
    lines = capsys.readouterr().out.splitlines()
    assert ("A city.", "città") in corpus["train"] + corpus["validation"] + corpus["test"]
    everything = corpus["train"] + corpus["validation"] + corpus["test"]
    assert len(everything) == len(set(everything)) and all("\u0300" not in t for _, t in everything)
    held_out = {s for s, _ in corpus["validation"] + corpus["test"]}
    assert held_out and not held_out & {s for s, _ in corpus["train"]}
    files_line, line = lines
    assert files_line == f"data files: train <- {files}"
    assert "86 pairs read, 1 NFC-normalized; dropped 2 with an empty side, 1 with a length ratio over 4, " \
           "1 duplicates" in line and "kept 1 untranslated" in line
    removed = int(line.split("duplicates, ")[1].split(" training pairs")[0])
    assert removed >= 1 and len(everything) + removed == 86 - 4


def test_split_files_are_assigned_by_name_logged_and_never_guessed(tmp_path, capsys):
    assert [corpora.split_of_file(n) for n in ("train.jsonl", "eval.jsonl", "dev-2020.parquet", "newstest2014.jsonl",
                                            "corpus.jsonl", "heldout.jsonl")] == \
        ["train", "validation", "validation", "test", None, None]
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [(f"Sentence {i}.", f"Frase {i}.") for i in range(30)])
    write_jsonl(folder / "eval.jsonl", [(f"Other {i}.", f"Altra {i}.") for i in range(4)])
    write_jsonl(folder / "newstest2014.jsonl", [(f"Test {i}.", f"Prova {i}.") for i in range(3)])
    capsys.readouterr()
    corpus = corpora.load_corpus(parse_config(["--dataset", str(folder)]))
    lines = capsys.readouterr().out.splitlines()
    assert (len(corpus["train"]), len(corpus["validation"]), len(corpus["test"])) == (30, 4, 3)
    assert "validation <- " in lines[0] and "eval.jsonl" in lines[0] and "newstest2014.jsonl" in lines[0]
    write_jsonl(folder / "heldout.jsonl", [("Held.", "Tenuta.")])  # says no split, beside files that do
    with pytest.raises(UserError, match="cannot tell which split heldout.jsonl holds"):
        corpora.load_corpus(parse_config(["--dataset", str(folder)]))
    explicit = f"train={folder / 'train.jsonl'},validation={folder / 'heldout.jsonl'}"
    corpus = corpora.load_corpus(parse_config(["--data_files", explicit, "--test_size", "5"]))
    assert corpus["validation"] == [("Held.", "Tenuta.")] and len(corpus["test"]) == 5
    with pytest.raises(UserError, match="'dev' is not a split"):
        corpora.load_corpus(parse_config(["--data_files", f"dev={folder / 'eval.jsonl'}"]))


def write_lines(path, lines) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return str(path)


def numbered(name: str, n: int) -> list[tuple[str, str]]:
    return [(f"{name} sentence {i}.", f"{name} frase {i}.") for i in range(n)]


def split_sizes(corpus) -> list[int]:
    return [len(corpus[split]) for split in ("train", "validation", "test")]


def test_split_folders_assign_their_files_whatever_the_names(tmp_path, capsys):
    for folder, name, n in (("train", "part-0", 20), ("train", "part-1", 10), ("valid", "books", 4),
                            ("test", "newstest2014", 3), ("dev", "train-extra", 2)):  # the folder wins over the name
        (tmp_path / folder).mkdir(exist_ok=True)
        write_jsonl(tmp_path / folder / f"{name}.jsonl", numbered(f"{folder} {name}", n))
    capsys.readouterr()
    corpus = corpora.load_corpus(parse_config(["--dataset", str(tmp_path)]))
    assert split_sizes(corpus) == [30, 6, 3]
    assert set(numbered("dev train-extra", 2)) <= set(corpus["validation"])
    assert "validation <- " in capsys.readouterr().out
    assert corpora.split_of_folder(str(tmp_path / "a" / "Dev" / "b" / "x.jsonl"), str(tmp_path)) == "validation"
    assert corpora.split_of_folder(str(tmp_path / "x.jsonl"), str(tmp_path)) is None


def test_a_save_to_disk_folder_loads_with_its_splits_in_memory_and_streaming(tmp_path):
    import datasets

    def rows(name, n):
        return datasets.Dataset.from_list([{"id": str(i), "translation": {"en": s, "it": t}}
                                           for i, (s, t) in enumerate(numbered(name, n))])

    datasets.DatasetDict({"train": rows("train", 30), "dev": rows("dev", 4), "test": rows("test", 3),
                          "extra": rows("extra", 2)}).save_to_disk(str(tmp_path / "saved"))
    corpus = corpora.load_corpus(parse_config(["--dataset", str(tmp_path / "saved")]))
    assert split_sizes(corpus) == [30, 4, 3] and corpus["validation"] == numbered("dev", 4)
    cfg = parse_config(["--dataset", str(tmp_path / "saved"), "--streaming", "--max_steps", "5"])
    validate(cfg)
    stream = corpora.load_corpus(cfg)
    assert stream["validation"] == numbered("dev", 4) and stream["test"] == numbered("test", 3)
    assert corpora.take_pairs(stream["train"], 40, cfg) == numbered("train", 30)
    rows("one", 40).save_to_disk(str(tmp_path / "one"))  # a lone Dataset: the training split
    corpus = corpora.load_corpus(parse_config(["--dataset", str(tmp_path / "one"), "--valid_size", "5",
                                               "--test_size", "5"]))
    assert split_sizes(corpus) == [30, 5, 5]


def write_moses(prefix, pairs, src="en", tgt="it"):
    write_lines(prefix.parent / f"{prefix.name}.{src}", [s for s, _ in pairs])
    write_lines(prefix.parent / f"{prefix.name}.{tgt}", [t for _, t in pairs])


def test_moses_pairs_load_from_a_folder_and_from_data_files_by_either_side(tmp_path):
    for name, n in (("train", 30), ("valid", 4), ("test", 3)):
        write_moses(tmp_path / "corpus" / name, numbered(name, n), tgt="de")
    folder = ["--dataset", str(tmp_path / "corpus"), "--lang_tgt", "de"]
    corpus = corpora.load_corpus(parse_config(folder))
    assert [corpus["train"], corpus["validation"], corpus["test"]] == \
        [numbered("train", 30), numbered("valid", 4), numbered("test", 3)]
    files = f"{tmp_path}/corpus/train.de,validation={tmp_path}/corpus/valid.en"  # either side names the pair
    assert corpora.load_corpus(parse_config(["--data_files", files, "--lang_tgt", "de", "--test_size", "2"])
                               )["validation"] == numbered("valid", 4)
    cfg = parse_config([*folder, "--streaming", "--max_steps", "5"])
    validate(cfg)
    stream = corpora.load_corpus(cfg)
    assert stream["test"] == numbered("test", 3) and corpora.take_pairs(stream["train"], 40, cfg) == \
        numbered("train", 30)
    with pytest.raises(UserError, match=r"train.en has no train.it beside it .* check --lang_src/--lang_tgt"):
        corpora.load_corpus(parse_config(["--dataset", str(tmp_path / "corpus")]))


def test_moses_sides_of_different_lengths_are_a_clear_error(tmp_path):
    write_lines(tmp_path / "train.en", ["One.", "Two.", "Three."])
    write_lines(tmp_path / "train.it", ["Uno.", "Due."])
    with pytest.raises(UserError, match=r"^--data_files: .*train.en has 3 lines but .*train.it has 2; .*realign"):
        corpora.load_corpus(parse_config(["--data_files", str(tmp_path / "train.en")]))


def test_tsv_files_pair_their_columns_or_those_their_header_names(tmp_path):
    pairs = numbered("tsv", 30)
    write_lines(tmp_path / "plain" / "train.tsv", [f"{s}\t{t}" for s, t in pairs])
    write_lines(tmp_path / "plain" / "dev.tsv", ["Hello.\tCiao.", "", "Yes.\tSì."])  # an empty line: an empty pair
    corpus = corpora.load_corpus(parse_config(["--dataset", str(tmp_path / "plain"), "--test_size", "3"]))
    assert sorted(corpus["train"] + corpus["test"]) == sorted(pairs)
    assert corpus["validation"] == [("Hello.", "Ciao."), ("Yes.", "Sì.")]
    header = write_lines(tmp_path / "header.tsv", ["id\tit\ten", *(f"{i}\t{t}\t{s}" for i, (s, t) in enumerate(pairs))])
    corpus = corpora.load_corpus(parse_config(["--data_files", header, "--valid_size", "3", "--test_size", "3"]))
    assert sorted(corpus["train"] + corpus["validation"] + corpus["test"]) == sorted(pairs)
    cfg = parse_config(["--data_files", header, "--streaming", "--max_steps", "5", "--valid_size", "3",
                        "--test_size", "2"])
    validate(cfg)
    assert corpora.load_corpus(cfg)["test"] == pairs[3:5]
    with pytest.raises(UserError, match=r"^--lang_tgt: language 'fr' is not in the corpus .the header of .* names"):
        corpora.load_corpus(parse_config(["--data_files", write_lines(tmp_path / "de.tsv", ["en\tde", "A.\tB."]),
                                          "--lang_tgt", "fr"]))
    with pytest.raises(UserError, match=r"bad.tsv line 2 has 3 tab-separated fields, not 2"):
        corpora.load_corpus(parse_config(["--data_files", write_lines(tmp_path / "bad.tsv", ["A.\tB.", "A\tB\tC"])]))
