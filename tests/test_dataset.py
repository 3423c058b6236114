import os
import subprocess
import sys

import pytest
import torch

import dataset as data
import corpus as corpora
import tokenizer as tok
from config import parse_config
from errors import UserError
from conftest import ROOT, toy_pairs, write_jsonl


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
    assert outputs.pop().strip() == str(corpora.split_pairs([(str(i), str(i)) for i in range(100)], 10, 10)["validation"])


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
def test_unknown_language_is_a_clear_error(tmp_path, flags, message):
    with pytest.raises(UserError, match=message):
        corpus_from_files(tmp_path, toy_pairs(50), "--valid_size", "5", "--test_size", "5", *flags)


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


def test_tokenizer_round_trip_is_exact():
    sentences = ["Il gatto rosso mangia.", "Perché la città è bella?", "l'uomo e un'amica", "  two  spaces ",
                 "émoji 🙂 and ünïcode ß", "Numbers 1,234.5 and (brackets)!"]
    tokenizer = tok.train_tokenizer(sentences * 20, vocab_size=400)
    for text in sentences + ["completely unseen: Ωμέγα ≠ zeta"]:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert tokenizer.decode(ids) == text
    assert [tokenizer.token_to_id(t) for t in tok.SPECIAL_TOKENS] == [0, 1, 2, 3]


def test_tokenization_filters_and_counts_long_and_empty_pairs():
    pairs = [("short one", "corta"), ("word " * 40, "lunga"), ("", "vuota"), ("fine", "bene")]
    tokenizer = tok.train_tokenizer([p[0] for p in pairs] + [p[1] for p in pairs], vocab_size=300)
    out = data.tokenize_pairs(pairs, tokenizer, tokenizer, seq_len=12)
    assert (out.dropped_too_long, out.dropped_empty, out.kept) == (1, 1, [0, 3])
    src, tgt = out.dataset[1]
    assert src[-1] == tok.EOS_ID and tgt[0] == tok.BOS_ID and tgt[-1] == tok.EOS_ID
    assert tokenizer.decode(src[:-1].tolist()) == "fine"


def test_collate_pads_to_the_longest_in_the_batch_rounded_to_a_fixed_width():
    batch = data.collate([(torch.tensor([5, 6, 3]), torch.tensor([2, 7, 3])),
                          (torch.tensor([5, 3]), torch.tensor([2, 7, 8, 9, 10, 3]))], max_len=128)
    assert batch["src"].tolist() == [[5, 6, 3, 0], [5, 3, 0, 0]]  # longest 3 -> width 4
    assert batch["tgt_in"].tolist() == [[2, 7, 0, 0, 0, 0], [2, 7, 8, 9, 10, 0]]  # 5 -> 6
    assert batch["tgt_out"].tolist() == [[7, 3, 0, 0, 0, 0], [7, 8, 9, 10, 3, 0]]
    assert data.collate([(torch.arange(4, 9), torch.arange(4, 10))], max_len=5)["src"].shape == (1, 5)  # capped


def test_padded_widths_and_batch_counts_come_from_small_fixed_sets():
    widths = {data.padded_length(n, 128) for n in range(1, 129)}
    assert widths == {*range(2, 33, 2), *range(40, 129, 8)}
    assert all(data.padded_length(n, 128) >= n for n in range(1, 129))
    assert {data.padded_length(n, 100) for n in range(90, 101)} == {96, 100}  # never wider than --seq_len
    counts = {data.batch_count(n) for n in range(1, 5000)}
    assert len(counts) == 8 + 3 + 4 * 8 + 1  # 1-8; 10, 12, 14; four per octave from 16 to 2047; 4096
    for n in range(1, 5000):
        assert 0.8 * n <= data.batch_count(n) <= n  # at most a fifth of a batch's budget unused


def rank_batches(n, batch_size, world, epoch, seed=0, start=0, lengths=None):
    out = []
    for rank in range(world):
        sampler = data.DistributedBatchSampler(n, batch_size, rank, world, seed, lengths)
        sampler.set_epoch(epoch, start)
        out.append(list(sampler))
        assert len(out[-1]) == len(sampler)
    return out


@pytest.mark.parametrize("n, batch_size, world", [(103, 8, 1), (103, 8, 2), (100, 7, 3), (64, 8, 4), (10, 4, 4)])
def test_sampler_shards_are_disjoint_equal_and_cover_the_data(n, batch_size, world):
    shards = rank_batches(n, batch_size, world, epoch=0)
    assert len({len(s) for s in shards}) == 1  # the same number of batches on every rank
    seen = [i for shard in shards for batch in shard for i in batch]
    assert len(seen) == len(set(seen))  # disjoint
    assert len(seen) > n - world  # at most world-1 examples wait for the next epoch's shuffle
    assert all(0 < len(b) <= batch_size for shard in shards for b in shard)


def test_sampler_order_depends_on_epoch_and_seed_only():
    assert rank_batches(50, 5, 2, epoch=3) == rank_batches(50, 5, 2, epoch=3)
    assert rank_batches(50, 5, 2, epoch=3) != rank_batches(50, 5, 2, epoch=4)
    assert rank_batches(50, 5, 2, epoch=3) != rank_batches(50, 5, 2, epoch=3, seed=1)


def test_sampler_resumes_mid_epoch_even_with_another_world_size():
    n, batch_size = 97, 4
    sampler = data.DistributedBatchSampler(n, batch_size, 0, 2, seed=0)
    sampler.set_epoch(2)
    order = sampler.epoch_order()
    # Two ranks consumed 5 global batches; the position does not depend on the world size.
    position = sampler.position_after(5)
    assert position == 5 * 2 * batch_size
    resumed = rank_batches(n, batch_size, world=1, epoch=2, start=position)[0]
    assert [i for b in resumed for i in b] == order[position:]
    resumed_on_three = rank_batches(n, batch_size, world=3, epoch=2, start=position)
    first_global_batch = [i for shard in resumed_on_three for i in shard[0]]
    assert first_global_batch == order[position:position + 3 * batch_size]


def test_length_grouping_cuts_padding_keeps_a_permutation_and_ignores_world_size():
    n, batch_size = 2000, 8
    lengths = torch.randint(3, 60, (n,), generator=torch.Generator().manual_seed(0))
    grouped = data.DistributedBatchSampler(n, batch_size, 0, 1, seed=0, lengths=lengths)
    plain = data.DistributedBatchSampler(n, batch_size, 0, 1, seed=0)
    assert sorted(grouped.epoch_order()) == list(range(n))

    def padded_positions(batches):
        return sum(len(b) * int(lengths[b].max()) for b in batches)

    assert padded_positions(list(grouped)) < 0.7 * padded_positions(list(plain))
    # The same global order, whatever the number of ranks: resume across world sizes stays exact.
    on_two = data.DistributedBatchSampler(n, batch_size, 1, 2, seed=0, lengths=lengths)
    assert on_two.epoch_order() == grouped.epoch_order()
    shards = rank_batches(n, batch_size, world=2, epoch=0, lengths=lengths)
    seen = [i for shard in shards for batch in shard for i in batch]
    assert sorted(seen) == list(range(n))


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


def token_budget_shards(lengths, max_tokens, world, epoch=0, start=0):
    samplers = [data.DistributedBatchSampler(len(lengths), 1, rank, world, 0, lengths=lengths, max_tokens=max_tokens)
                for rank in range(world)]
    for sampler in samplers:
        sampler.set_epoch(epoch, start)
    return samplers, [list(sampler) for sampler in samplers]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_token_budget_batches_fit_the_budget_are_disjoint_and_equal_in_number(world):
    lengths = torch.randint(3, 60, (3000,), generator=torch.Generator().manual_seed(1))
    samplers, shards = token_budget_shards(lengths, max_tokens=400, world=world)
    assert len({len(shard) for shard in shards}) == 1 and all(len(s) == len(shards[0]) for s in samplers)
    # Every rank computes the same global batches, and takes its own share of each.
    assert all(s.global_batches() == samplers[0].global_batches() for s in samplers)
    seen = [i for shard in shards for batch in shard for i in batch]
    assert len(seen) == len(set(seen)) and len(seen) > 0.97 * len(lengths)
    padded = [len(b) * data.padded_length(int(lengths[b].max()), 128) for shard in shards for b in shard]
    assert max(padded) <= 400 and sum(padded) / len(padded) > 0.75 * 400  # full, but never over budget
    assert {len(b) for shard in shards for b in shard} <= {data.batch_count(n) for n in range(1, 401)}
    real = sum(int(lengths[b].sum()) for shard in shards for b in shard)
    assert real / sum(padded) > 0.85  # length grouping and fine widths: little padding


def test_token_budget_batches_depend_on_epoch_and_seed_only_and_resume_exactly():
    lengths = torch.randint(3, 60, (1000,), generator=torch.Generator().manual_seed(2))
    _, two = token_budget_shards(lengths, 300, world=2, epoch=1)
    assert two == token_budget_shards(lengths, 300, world=2, epoch=1)[1]
    assert two != token_budget_shards(lengths, 300, world=2, epoch=2)[1]
    # The per-rank cuts do not depend on the world size: two ranks take them in pairs, one rank in turn.
    _, (one,) = token_budget_shards(lengths, 300, world=1, epoch=1)
    assert [b for pair in zip(*two) for b in pair] == one[:2 * len(two[0])]
    # Resume after 7 steps of two ranks, on two ranks or on one: the same batches follow.
    samplers, _ = token_budget_shards(lengths, 300, world=2, epoch=1)
    position = samplers[0].position_after(7)
    assert position == sum(len(b) for shard in two for b in shard[:7])
    _, resumed = token_budget_shards(lengths, 300, world=2, epoch=1, start=position)
    assert resumed == [shard[7:] for shard in two]
    _, (resumed_alone,) = token_budget_shards(lengths, 300, world=1, epoch=1, start=position)
    assert resumed_alone[:len(one) - 14] == one[14:]


def test_a_sentence_longer_than_the_budget_gets_a_batch_of_its_own():
    lengths = torch.tensor([5, 5, 50, 5, 5])  # 4 x width 6 fits 24
    _, (shard,) = token_budget_shards(lengths, 24, world=1)
    assert [sorted(b) for b in shard] == [[0, 1, 3, 4], [2]]  # sorted by length within the window


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


def test_placeholders_stay_whole_and_special_token_names_are_plain_text():
    sentences = ["%*s/%s kB (%d%%) copied", "Hello {name}, %(count)d files", "It is 100% done",
                 "Use [UNK] or [EOS] tokens"] * 20
    tokenizer = tok.tokenizer_from_json(tok.train_tokenizer(sentences, 400).to_str())
    tokens = tokenizer.encode("%*s/%s kB (%d%%) copied", add_special_tokens=False).tokens
    assert {"%*s", "%s", "%d", "%%"} <= set(tokens) and "(%" not in "".join(tokens).replace("(%d", "")
    assert "Ġ{name}" in tokenizer.encode("Hello {name}, %(count)d files").tokens
    for text in sentences[:4]:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert not {tok.PAD_ID, tok.BOS_ID, tok.EOS_ID, 1} & set(ids)  # [UNK] in text is text
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tok.placeholders("%*s/%s kB (%d%%) {0} %(name)s, 100% done") == ["%*s", "%s", "%d", "%%", "{0}",
                                                                             "%(name)s"]


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
