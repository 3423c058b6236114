"""Corpora, tokenizers, the tokenized dataset, the distributed batch sampler and collation.

A corpus is three lists of (source, target) sentence pairs: train, validation, test. It comes from the builtin
generator, the Hugging Face hub (`datasets.load_dataset`) or local files in the opus_books schema
`{"id": ..., "translation": {"en": ..., "it": ...}}`. Nothing here knows about optimisation.
"""

import glob
import itertools
import os
import random
import re
import signal
import unicodedata
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Sampler

from config import Config, UserError

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)  # ids 0..3 in every tokenizer we train
PAD_ID, BOS_ID, EOS_ID = 0, 2, 3
SPLIT_SEED = 0  # fixed, so a train-only corpus splits the same way on every rank, restart and --seed

Pairs = list[tuple[str, str]]


# ----------------------------------------------------------------------------------------------- corpora

def _pairs_from_examples(examples, split: str, src: str, tgt: str) -> Pairs:
    pairs = []
    for i, example in enumerate(examples):
        translation = example.get("translation") if isinstance(example, dict) else None
        if not isinstance(translation, dict):
            raise UserError(f"{split} example {i} has no 'translation' dict: the corpus must follow the opus_books "
                            f"schema {{'id', 'translation': {{'{src}': ..., '{tgt}': ...}}}}")
        for lang, flag in ((src, "lang_src"), (tgt, "lang_tgt")):
            if lang not in translation:
                known = ", ".join(sorted(translation))
                raise UserError(f"--{flag}: language {lang!r} is not in the corpus (its examples have: {known})")
        pairs.append((translation[src] or "", translation[tgt] or ""))
    return pairs


def _data_file_builder(files: list[str]) -> str:
    kinds = {"json" if f.endswith((".json", ".jsonl")) else "parquet" if f.endswith(".parquet") else f
             for f in files}
    if len(kinds) != 1 or not kinds <= {"json", "parquet"}:
        raise UserError(f"--data_files: expected only .jsonl/.json or only .parquet files, got {sorted(kinds)}")
    return kinds.pop()


def is_remote(path: str) -> bool:
    """An fsspec URL such as s3://bucket/key: listed and read by fsspec (s3fs), not by the local file system."""
    return "://" in path


def _local_files(patterns: list[str]) -> list[str]:
    files = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise UserError(f"--data_files: no file matches {pattern!r}")
        files.extend(matches)
    return files


SPLITS = ("train", "validation", "test")
DATA_FILE_ENDINGS = (".jsonl", ".json", ".parquet")


def split_of_file(path: str) -> str | None:
    """The split a file's name says it holds: a word of the name starting with "train"; "valid", "val", "dev" or
    "eval"; or containing "test" (newstest2014); None when it says none."""
    words = re.split(r"[^a-z0-9]+", os.path.basename(path).lower().split(".")[0])
    if any(w.startswith("train") for w in words):
        return "train"
    if any(w.startswith(("valid", "dev")) or w in ("val", "eval", "evaluation") for w in words):
        return "validation"
    if any("test" in w for w in words):
        return "test"
    return None


def _files_by_split(cfg: Config) -> dict[str, list[str]] | None:
    """--data_files as `train=a.jsonl,validation=b.jsonl,test=c.jsonl` (a file without `split=` is training data),
    or the data files of a local --dataset folder, each assigned by `split_of_file`: when no name says a split,
    every file is training data; when some do, a file whose name says none is refused rather than guessed.
    None for a hub dataset."""
    if cfg.data_files:
        by_split = {}
        for entry in (e.strip() for e in cfg.data_files.split(",") if e.strip()):
            split, _, pattern = entry.rpartition("=") if "=" in entry.split("://")[0] else ("", "", entry)
            split = split or "train"
            if split not in SPLITS:
                raise UserError(f"--data_files: {split!r} is not a split; use train=..., validation=... or test=...")
            by_split.setdefault(split, []).append(pattern)
        return by_split
    if not os.path.isdir(cfg.dataset):
        return None
    files = sorted(os.path.join(root, name) for root, _, names in os.walk(cfg.dataset) for name in names
                   if name.endswith(DATA_FILE_ENDINGS))
    if not files:
        raise UserError(f"--dataset {cfg.dataset}: no {'/'.join(DATA_FILE_ENDINGS)} file in this folder")
    named = {f: split_of_file(f) for f in files}
    if not any(named.values()):
        return {"train": files}
    unnamed = [f for f, split in named.items() if split is None]
    if unnamed:
        raise UserError(f"--dataset {cfg.dataset}: cannot tell which split {os.path.basename(unnamed[0])} holds (its "
                        f"name says neither train, validation/dev nor test); rename it, or pass --data_files "
                        f"train=...,validation=...,test=...")
    return {split: [f for f in files if named[f] == split] for split in SPLITS if split in named.values()}


def _load_with_datasets(cfg: Config, streaming: bool = False, report=None):
    """A DatasetDict (an IterableDatasetDict when streaming) from the hub, a local dataset folder, or --data_files;
    `report(line)` is told which file went to which split. Remote --data_files (s3://...) go to fsspec, which takes
    credentials from the standard AWS environment variables or profile, and an S3-compatible store's address from
    AWS_ENDPOINT_URL."""
    import datasets  # heavy: imported only when a non-builtin corpus is asked for

    datasets.disable_progress_bars()
    by_split = _files_by_split(cfg)
    if by_split is not None:
        patterns = [p for split in by_split.values() for p in split]
        remote = [p for p in patterns if is_remote(p)]
        if remote and len(remote) != len(patterns):
            raise UserError("--data_files: give only local files or only remote (s3://) ones")
        files = {split: found if remote else _local_files(found) for split, found in by_split.items()}
        every_file = [f for found in files.values() for f in found]
        if "train" not in files:
            raise UserError("--data_files: no training files (a file without split= is training data)")
        if not remote and all(os.path.getsize(f) == 0 for f in every_file):
            raise UserError(f"--data_files: the corpus is empty ({', '.join(every_file)} hold no pairs)")
        builder, flag = _data_file_builder(every_file), "data_files" if cfg.data_files else "dataset"
        source = cfg.data_files or cfg.dataset
        options = _storage_options() if remote else None
        if report is not None:
            report("data files: " + "; ".join(f"{split} <- {', '.join(found)}" for split, found in files.items()))
        load = lambda: datasets.load_dataset(builder, data_files=files, streaming=streaming,  # noqa: E731
                                             storage_options=options)
    else:
        source, flag = cfg.dataset, "dataset"
        load = lambda: datasets.load_dataset(cfg.dataset, cfg.dataset_config, streaming=streaming)  # noqa: E731
    try:
        return load()
    except Exception as e:  # the loader's many error types all mean "cannot load what was named"
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"--{flag}: cannot load {source!r}: {first_line}") from None


def _storage_options() -> dict:
    """fsspec options for s3://: the endpoint of an S3-compatible store (MinIO, R2, moto), if one is set."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}


def split_pairs(pairs: Pairs, valid_size: int, test_size: int) -> dict[str, Pairs]:
    """Deterministic held-out split of a train-only corpus: the same on every rank and on every restart."""
    if valid_size + test_size >= len(pairs):
        raise UserError(f"--valid_size/--test_size: the corpus has {len(pairs)} pairs, too few to hold out "
                        f"{valid_size} + {test_size} and still train")
    order = list(range(len(pairs)))
    random.Random(SPLIT_SEED).shuffle(order)
    valid, test, train = order[:valid_size], order[valid_size:valid_size + test_size], order[valid_size + test_size:]
    return {name: [pairs[i] for i in sorted(idx)] for name, idx in
            (("train", train), ("validation", valid), ("test", test))}


LENGTH_RATIO_LIMIT = 4.0  # characters of the longer side / the shorter, past which a pair is taken as misaligned
LENGTH_RATIO_MIN_CHARS = 30  # short pairs ("OK" -> "Va bene") vary too much to judge by their ratio


def _normalized(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _implausible_ratio(source: str, target: str) -> bool:
    short, long = sorted((len(source.strip()), len(target.strip())))
    return long >= LENGTH_RATIO_MIN_CHARS and long > LENGTH_RATIO_LIMIT * max(short, 1)


def clean_pairs(pairs: Pairs) -> tuple[Pairs, dict[str, int]]:
    """Real corpora are dirty: both sides NFC-normalized (the same word has one byte form), and pairs with an empty
    side, an implausible length ratio or seen before dropped. Untranslated pairs (target = source: names, codes,
    format strings) are counted but kept: real corpora hold many that are right, and the model must learn to copy."""
    kept, seen = [], set()
    counts = {"read": len(pairs), "normalized": 0, "empty": 0, "length_ratio": 0, "duplicate": 0, "untranslated": 0}
    for source, target in pairs:
        pair = (_normalized(source), _normalized(target))
        counts["normalized"] += pair != (source, target)
        if not pair[0].strip() or not pair[1].strip():
            counts["empty"] += 1
        elif _implausible_ratio(*pair):
            counts["length_ratio"] += 1
        elif pair in seen:
            counts["duplicate"] += 1
        else:
            seen.add(pair)
            counts["untranslated"] += pair[0].strip() == pair[1].strip()
            kept.append(pair)
    return kept, counts


def cleaning_summary(counts: dict[str, int]) -> str:
    return (f"corpus cleaning: {counts['read']:,} pairs read, {counts['normalized']:,} NFC-normalized; dropped "
            f"{counts['empty']:,} with an empty side, {counts['length_ratio']:,} with a length ratio over "
            f"{LENGTH_RATIO_LIMIT:g}, {counts['duplicate']:,} duplicates, {counts['held_out']:,} training pairs whose "
            f"source is in the validation or test split; kept {counts['untranslated']:,} untranslated "
            f"(target = source)")


def load_corpus(cfg: Config, report=None) -> dict[str, Pairs]:
    """{"train", "validation", "test"} lists of (source, target) pairs for the configured languages, cleaned by
    `clean_pairs`; training pairs whose source is held out are dropped, so no held-out sentence is trained on.
    `report(line)` receives the cleaning summary."""
    if cfg.streaming:
        return _load_stream(cfg)
    if cfg.dataset == "builtin" and not cfg.data_files:
        import builtin_corpus

        splits = builtin_corpus.build_builtin_corpus(seed=0)
    else:
        splits = dict(_load_with_datasets(cfg, report=report))
    if "train" not in splits:
        raise UserError(f"--dataset: the corpus has no 'train' split (it has: {', '.join(sorted(splits))})")
    corpus = {name: _pairs_from_examples(examples, name, cfg.lang_src, cfg.lang_tgt)
              for name, examples in splits.items() if name in ("train", "validation", "test")}
    counts = {}
    for name in list(corpus):
        corpus[name], split_counts = clean_pairs(corpus[name])
        counts = {key: counts.get(key, 0) + value for key, value in split_counts.items()}
    if not corpus["train"]:
        raise UserError("--dataset/--data_files: the corpus is empty (no training pairs)")
    missing = [name for name in ("validation", "test") if name not in corpus]
    if missing:  # held out after de-duplication: no held-out pair is also a training pair
        held_out = split_pairs(corpus["train"], cfg.valid_size if "validation" in missing else 0,
                               cfg.test_size if "test" in missing else 0)
        corpus = {"train": held_out["train"], **{name: corpus.get(name, held_out[name])
                                                 for name in ("validation", "test")}}
    held_out_sources = {source for name in ("validation", "test") for source, _ in corpus[name]}
    training = len(corpus["train"])
    corpus["train"] = [pair for pair in corpus["train"] if pair[0] not in held_out_sources]
    counts["held_out"] = training - len(corpus["train"])
    if report is not None:
        report(cleaning_summary(counts))
    if not corpus["train"]:
        raise UserError("--dataset/--data_files: no training pair left once the held-out sources are removed")
    if not corpus["validation"]:
        raise UserError("--valid_size: the validation split is empty; hold out at least one pair")
    return corpus


def _load_stream(cfg: Config) -> dict:
    """--streaming: {"train": the training stream (a datasets.IterableDataset, read lazily), "validation" and
    "test": pairs}. Held-out pairs are the first --valid_size / --test_size pairs of the stream's own validation
    and test splits or, where it has none, of the training stream: the same on every rank. StreamBatches leaves
    every held-out pair out of training, wherever in the stream (datasets' `skip` would not do: once the stream is
    split over ranks, it skips in every rank's shard)."""
    splits = _load_with_datasets(cfg, streaming=True)
    if "train" not in splits:
        raise UserError(f"--dataset: the corpus has no 'train' split (it has: {', '.join(sorted(splits))})")
    train, held_out = splits["train"], 0
    corpus = {}
    for name, size in (("validation", cfg.valid_size), ("test", cfg.test_size)):
        source = splits[name] if name in splits else train.skip(held_out)
        corpus[name] = _pairs_from_examples(source.take(size), name, cfg.lang_src, cfg.lang_tgt)
        held_out += 0 if name in splits else size
    corpus["train"] = train
    if not corpus["validation"]:
        raise UserError("--valid_size: the validation split is empty; hold out at least one pair")
    if not take_pairs(train.skip(held_out), 1, cfg):
        raise UserError("--dataset/--data_files: the corpus is empty (no training pairs after the held-out ones)")
    return corpus


def take_pairs(stream, count: int, cfg: Config) -> Pairs:
    """The first `count` pairs of a stream."""
    return _pairs_from_examples(stream.take(count), "train", cfg.lang_src, cfg.lang_tgt)


STREAM_TOKENIZER_SAMPLE = 100_000
MEMORY_TOKENIZER_SAMPLE = 500_000


def tokenizer_sample(cfg: Config, corpus: dict) -> Pairs:
    """The training pairs the tokenizers learn from: the first --tokenizer_sample ones; by default all of an
    in-memory corpus up to 500,000 pairs and a fixed random sample of 500,000 beyond (BPE on all of a WMT-sized
    corpus takes rank 0 many minutes for a vocabulary that a sample already settles), the first 100,000 of a
    stream."""
    if not cfg.streaming:
        train = corpus["train"]
        if cfg.tokenizer_sample or len(train) <= MEMORY_TOKENIZER_SAMPLE:
            return train[:cfg.tokenizer_sample]
        return [train[i] for i in sorted(random.Random(cfg.seed).sample(range(len(train)), MEMORY_TOKENIZER_SAMPLE))]
    count, held_out = cfg.tokenizer_sample or STREAM_TOKENIZER_SAMPLE, held_out_pairs(corpus)
    return [pair for pair in take_pairs(corpus["train"], count + len(held_out), cfg) if pair not in held_out][:count]


def held_out_pairs(corpus: dict) -> set[tuple[str, str]]:
    return set(corpus["validation"]) | set(corpus["test"])


# ----------------------------------------------------------------------------------------------- tokenizers

# Placeholders that programs fill in (printf's %s, %-5d, %(name)s, %%; {0}, {name}) are cut out whole, before the
# usual byte-level split, which would cut "%s" into "%" + "s" and glue "%" to the character before it: real corpora
# copy them from source to target, and a wrong one crashes the program that prints the translation.
PLACEHOLDER = r"%(?:\([A-Za-z_][A-Za-z0-9_]*\))?[-+#0*]*\d*(?:\.\d+)?(?:hh|ll|[hlLqjzt])?[diouxXeEfFgGcrsaAp%]" \
              r"|\{[A-Za-z0-9_.]*\}"
# GPT-2's split (ByteLevel's own regex): contractions, letters, digits, other symbols, spaces.
WORD_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}%{]+| ?[%{]|\s+(?!\S)|\s+"


def placeholders(text: str) -> list[str]:
    """The placeholders of a sentence, in order."""
    return re.findall(PLACEHOLDER, text)


def placeholder_tokens(tokenizer) -> dict[str, list[int]]:
    """The tokens that spell one placeholder whole (alone or after a space), by placeholder: decoding holds
    translations to their source's placeholders through them."""
    ids = range(tokenizer.get_vocab_size())
    table: dict[str, list[int]] = {}
    for token_id, text in zip(ids, tokenizer.decode_batch([[i] for i in ids], skip_special_tokens=True)):
        text = text.removeprefix(" ")
        if re.fullmatch(PLACEHOLDER, text):
            table.setdefault(text, []).append(token_id)
    return table


def train_tokenizer(sentences: list[str], vocab_size: int):
    """Byte-level BPE: every string survives decode(encode(text)) == text, whatever its characters; placeholders
    are never split, and "[UNK]" or "[EOS]" written in a sentence is text, not a control token."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(f" ?(?:{PLACEHOLDER})|{WORD_SPLIT}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(sentences, trainer=trainer)
    tokenizer.encode_special_tokens = True
    return tokenizer


def tokenizer_path(folder: str, lang: str) -> str:
    return os.path.join(folder, f"tokenizer_{lang}.json")


def write_atomically(path: str, text: str) -> None:
    """Write to a temporary file beside `path`, fsync, then rename: readers never see half a file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def build_tokenizer_json(cfg: Config, training_pairs) -> tuple[str, str]:
    """Rank 0 only: the source and target tokenizers as JSON, read from the model folder if there (a restart),
    else trained on the training split; with --share_vocab, one tokenizer trained on both sides, saved under both
    names. `training_pairs()` gives the pairs to learn from, read only when a tokenizer is trained. Nothing is
    written here: see `save_tokenizers`."""
    from tokenizers import Tokenizer

    paths = [tokenizer_path(cfg.model_folder, lang) for lang in (cfg.lang_src, cfg.lang_tgt)]
    if cfg.share_vocab and not any(os.path.exists(path) for path in paths):
        joint = train_tokenizer([sentence for pair in training_pairs() for sentence in pair], cfg.vocab_size).to_str()
        return joint, joint
    out = []
    for side, path in enumerate(paths):
        if os.path.exists(path):
            try:
                tokenizer = Tokenizer.from_file(path)
            except Exception as e:  # the tokenizers library raises a bare Exception for a damaged file
                raise UserError(f"{path} cannot be read ({e}): delete it or use another --model_folder") from None
            if [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] != list(range(len(SPECIAL_TOKENS))):
                raise UserError(f"{path} was not made by this trainer (special tokens differ): delete it or use "
                                f"another --model_folder")
        else:
            tokenizer = train_tokenizer([pair[side] for pair in training_pairs()], cfg.vocab_size)
        out.append(tokenizer.to_str())
    if cfg.share_vocab and out[0] != out[1]:
        raise UserError(f"--share_vocab: {cfg.model_folder} holds two different tokenizers; drop --share_vocab or "
                        f"use another --model_folder")
    return out[0], out[1]


def save_tokenizers(cfg: Config, src_json: str, tgt_json: str) -> None:
    """Rank 0 only, once start-up checks have passed: write the tokenizers a restart will reuse."""
    for lang, text in ((cfg.lang_src, src_json), (cfg.lang_tgt, tgt_json)):
        path = tokenizer_path(cfg.model_folder, lang)
        if not os.path.exists(path):
            write_atomically(path, text)


def tokenizer_from_json(text: str):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(text)
    tokenizer.encode_special_tokens = True  # not saved in the JSON: literal "[EOS]" in a sentence stays text
    return tokenizer


# ----------------------------------------------------------------------------------------------- tokenized data

class TranslationDataset(Dataset):
    """Token ids of every pair, stored flat (two int32 tensors plus offsets) rather than as millions of lists.

    Source: tokens + EOS. Target: BOS + tokens + EOS, split by `collate` into decoder input and labels."""

    def __init__(self, src: list[list[int]], tgt: list[list[int]], max_len: int):
        self.max_len = max_len  # --seq_len: no sentence is longer; batches are padded to at most this
        self.src_lengths = torch.tensor([len(s) for s in src], dtype=torch.int64)
        self.tgt_lengths = torch.tensor([len(t) for t in tgt], dtype=torch.int64)
        self.src_offsets = torch.cat([torch.zeros(1, dtype=torch.int64), self.src_lengths.cumsum(0)])
        self.tgt_offsets = torch.cat([torch.zeros(1, dtype=torch.int64), self.tgt_lengths.cumsum(0)])
        self.src_tokens = torch.tensor([i for s in src for i in s], dtype=torch.int32)
        self.tgt_tokens = torch.tensor([i for t in tgt for i in t], dtype=torch.int32)

    def __len__(self) -> int:
        return len(self.src_lengths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.src_tokens[self.src_offsets[i]:self.src_offsets[i + 1]],
                self.tgt_tokens[self.tgt_offsets[i]:self.tgt_offsets[i + 1]])


@dataclass
class Tokenized:
    dataset: TranslationDataset
    kept: list[int]  # index into the split's pairs of every kept example
    dropped_too_long: int
    dropped_empty: int


def tokenize_pairs(pairs: Pairs, src_tokenizer, tgt_tokenizer, seq_len: int) -> Tokenized:
    """Tokenize a split once, in batches; pairs that do not fit in `seq_len` (or are empty) are dropped and counted."""
    src_ids = [e.ids for e in src_tokenizer.encode_batch([p[0] for p in pairs], add_special_tokens=False)]
    tgt_ids = [e.ids for e in tgt_tokenizer.encode_batch([p[1] for p in pairs], add_special_tokens=False)]
    src, tgt, kept, too_long, empty = [], [], [], 0, 0
    for i, (s, t) in enumerate(zip(src_ids, tgt_ids)):
        if not s or not t:
            empty += 1
        elif len(s) + 1 > seq_len or len(t) + 2 > seq_len:
            too_long += 1
        else:
            src.append(s + [EOS_ID])
            tgt.append([BOS_ID] + t + [EOS_ID])
            kept.append(i)
    return Tokenized(TranslationDataset(src, tgt, seq_len), kept, too_long, empty)


def padded_length(length: int, max_len: int) -> int:
    """The width a batch whose longest sentence has `length` tokens is padded to: a small fixed set of widths
    (even numbers up to 32, multiples of 8 up to 128, of 32 up to 512, then of 128), never over `max_len`
    (--seq_len): 28 widths up to 128. A run then sees few distinct shapes (compiled graphs and CUDA graphs are per
    shape) while padding stays small: short sentences, the most common, get fine steps."""
    step = 2 if length <= 32 else 8 if length <= 128 else 32 if length <= 512 else 128
    return min(-(-length // step) * step, max(max_len, length))


def batch_count(count: int) -> int:
    """The sentence count of a token-budget batch, rounded down to a small fixed set: 1-8, then four values per
    octave (8, 10, 12, 14, 16, 20, 24, 28, 32, 40, ...). At most a fifth of a batch's budget goes unused; the
    sentences left out start the next batch."""
    if count <= 8:
        return count
    octave = 1 << (count.bit_length() - 3)  # count // octave is in 4..7
    return count // octave * octave


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]], max_len: int) -> dict[str, torch.Tensor]:
    """Pad to the longest sentence of this batch (not to a fixed length), rounded up by `padded_length`."""
    src_len = padded_length(max(len(s) for s, _ in batch), max_len)
    tgt_len = padded_length(max(len(t) for _, t in batch) - 1, max_len)
    src = torch.full((len(batch), src_len), PAD_ID, dtype=torch.long)
    tgt_in = torch.full((len(batch), tgt_len), PAD_ID, dtype=torch.long)
    tgt_out = torch.full((len(batch), tgt_len), PAD_ID, dtype=torch.long)
    for row, (s, t) in enumerate(batch):
        src[row, :len(s)] = s
        tgt_in[row, :len(t) - 1] = t[:-1]
        tgt_out[row, :len(t) - 1] = t[1:]
    return {"src": src, "tgt_in": tgt_in, "tgt_out": tgt_out}


# ----------------------------------------------------------------------------------------------- sampling

class DistributedBatchSampler(Sampler[list[int]]):
    """Yields this rank's share of each global batch.

    Every rank draws the same order from `seed + epoch` (see `epoch_order`) and cuts it into the same global
    batches, one share per rank, so shards are disjoint, every rank has the same number of batches (no rank waits
    alone in a collective), and the position in an epoch is one number, the samples consumed, which does not depend
    on the world size: a run can resume mid-epoch, even with another number of ranks.

    Two ways to size batches:
    - `batch_size` sentences per rank: consecutive chunks of `world_size * batch_size` examples are the global
      batches, split evenly over the ranks; the last, partial one too (training normalises the loss by the global
      token count, so uneven shares weigh correctly); fewer examples than ranks wait for the next epoch's shuffle.
    - `max_tokens` per rank (fairseq's --max-tokens): the order is cut into consecutive batches whose padded size,
      sentences x longest sentence, stays within the budget; each run of `world_size` such batches is a global
      batch. The cuts do not depend on the world size either; a last run shorter than `world_size` waits for the
      next epoch.
    """

    GROUPING_WINDOW_BATCHES = 50

    def __init__(self, num_examples: int, batch_size: int, rank: int, world_size: int, seed: int,
                 lengths: torch.Tensor | None = None, max_tokens: int | None = None, max_len: int = 128):
        if max_tokens is not None and lengths is None:
            raise ValueError("max_tokens needs the example lengths")
        self.num_examples, self.batch_size, self.max_tokens = num_examples, batch_size, max_tokens
        self.max_len = max_len  # --seq_len: batches are padded to `padded_length(longest, max_len)`
        self.rank, self.world_size = rank, world_size
        self.seed, self.lengths = seed, lengths
        self.epoch, self.start_sample = 0, 0
        self._cached: tuple[tuple[int, int], list[list[list[int]]], list[int]] | None = None

    def set_epoch(self, epoch: int, start_sample: int = 0) -> None:
        """Call before every epoch; `start_sample` > 0 resumes inside it."""
        self.epoch, self.start_sample = epoch, start_sample

    def _examples_per_batch(self) -> int:
        if self.max_tokens is None:
            return self.batch_size
        return max(1, int(self.max_tokens / max(float(self.lengths.float().mean()), 1.0)))

    def epoch_order(self) -> list[int]:
        """This epoch's order of examples: a permutation from `seed + epoch`, then, given lengths, sorted inside
        windows of about 50 per-rank batches so that neighbours (hence batches) have similar lengths and little
        compute goes to padding. The window does not depend on the world size, so neither does the order."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_examples, generator=generator)
        if self.lengths is None:
            return order.tolist()
        window = self.GROUPING_WINDOW_BATCHES * self._examples_per_batch()
        grouped = [chunk[torch.sort(self.lengths[chunk], stable=True).indices] for chunk in order.split(window)]
        return torch.cat(grouped).tolist()

    def _token_budget_batches(self, order: list[int]) -> list[list[int]]:
        """Greedy consecutive cuts: a batch grows while its padded size, sentences x `padded_length` of the
        longest, stays within max_tokens; its sentence count is then rounded down by `batch_count` and the rest
        start the next batch. A sentence longer than the budget on its own still gets a batch (validation keeps
        max_tokens >= seq_len)."""
        lengths = self.lengths.tolist()
        batches, start = [], 0
        while start < len(order):
            end, longest = start + 1, lengths[order[start]]
            while end < len(order):
                longer = max(longest, lengths[order[end]])
                if (end - start + 1) * padded_length(longer, self.max_len) > self.max_tokens:
                    break
                end, longest = end + 1, longer
            end = start + batch_count(end - start)
            batches.append(order[start:end])
            start = end
        return batches

    def _plan(self) -> tuple[list[list[list[int]]], list[int]]:
        """This epoch's remaining global batches and the samples consumed after each, cut once per `set_epoch`."""
        key = (self.epoch, self.start_sample)
        if self._cached is None or self._cached[0] != key:
            batches = self._cut(self.epoch_order()[self.start_sample:])
            sizes = [sum(len(share) for share in global_batch) for global_batch in batches]
            self._cached = (key, batches, [0, *itertools.accumulate(sizes)])
        return self._cached[1], self._cached[2]

    def global_batches(self) -> list[list[list[int]]]:
        """The rest of this epoch's global batches, from `start_sample` on; each a list of one share per rank."""
        return self._plan()[0]

    def _cut(self, order: list[int]) -> list[list[list[int]]]:
        world = self.world_size
        if self.max_tokens is not None:
            local = self._token_budget_batches(order)
            return [local[i:i + world] for i in range(0, len(local) - world + 1, world)]
        size = world * self.batch_size
        batches = []
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            if len(chunk) < world:
                break
            per_rank, extra = divmod(len(chunk), world)
            bounds = [r * per_rank + min(r, extra) for r in range(world + 1)]
            batches.append([chunk[bounds[r]:bounds[r + 1]] for r in range(world)])
        return batches

    def __iter__(self):
        for global_batch in self.global_batches():
            yield global_batch[self.rank]

    def __len__(self) -> int:
        return len(self.global_batches())

    def position_after(self, batches_done: int) -> int:
        """Samples of the epoch consumed once this rank has taken `batches_done` batches since `set_epoch`."""
        return self.start_sample + self._plan()[1][batches_done]


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader worker start-up. SIGTERM and SIGINT reach a whole process group (torchrun stopping its workers,
    Slurm's --signal, docker stop, Ctrl-C): the trainer answers them by saving, then shuts its data workers down
    itself, so the workers must outlive the signal or the trainer dies of their death before it can save."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class LoaderBatches:
    """This rank's training batches from an in-memory split: the DataLoader over a DistributedBatchSampler, behind
    the interface the training loop shares with StreamBatches. The position is the samples consumed in the epoch,
    the same on every rank."""

    def __init__(self, loader, sampler: DistributedBatchSampler):
        self.loader, self.sampler = loader, sampler

    def start_epoch(self, epoch: int, position: int | None = None) -> None:
        self.sampler.set_epoch(epoch, position or 0)
        self.batches, self.taken = iter(self.loader), 0

    def take(self, count: int) -> list[dict[str, torch.Tensor]]:
        """Up to `count` batches; fewer at the end of the epoch, where every rank has as many as the others."""
        count = min(count, len(self.sampler) - self.taken)
        self.taken += count
        return [next(self.batches) for _ in range(count)]

    def exhausted(self) -> bool:
        return self.taken == len(self.sampler)

    def position(self) -> int:
        return self.sampler.position_after(self.taken)


class StreamBatches:
    """This rank's training batches from a stream (--streaming), in a state that resumes exactly.

    The stream is sharded over ranks by `datasets.distributed.split_dataset_by_node` (whole files per rank when
    their number divides by the world size, else every world_size-th example); each rank reads its files in an
    order that changes every epoch, shuffles the pairs through a buffer of --shuffle_buffer pairs drawn by a
    generator seeded from (seed, epoch, rank), leaves held-out (validation, test) pairs out, tokenizes on the fly
    (pairs longer than --seq_len or empty are skipped and counted), and groups about 50 batches' worth by length
    into batches of --batch_size pairs, padded to their longest sentence. `position()` at a batch boundary is the
    shard's position (its datasets state_dict), the buffer's pairs, the batches grouped but not yet taken and the
    generator's state: resuming from it continues with the very batches an uninterrupted run takes.
    Shards differ in length, so a rank may run out first; the trainer ends the epoch on every rank then."""

    def __init__(self, corpus: dict, src_tokenizer, tgt_tokenizer, cfg: Config, rank: int, world_size: int):
        self.stream, self.held_out = corpus["train"], held_out_pairs(corpus)
        self.src_tokenizer, self.tgt_tokenizer = src_tokenizer, tgt_tokenizer
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.dropped_too_long = self.dropped_empty = 0
        self.start_epoch(0)

    def start_epoch(self, epoch: int, state: dict | None = None) -> None:
        """From the start of `epoch`, or from a `position()` taken in it."""
        from datasets.distributed import split_dataset_by_node

        # A fresh shard each time: a loaded state_dict stays the starting point of every later pass over it. The
        # datasets shuffle only reorders this rank's files each epoch (a buffer of one resumes exactly; its own
        # buffer would lose its content on resume): the buffer below mixes the examples.
        shard = split_dataset_by_node(self.stream, rank=self.rank, world_size=self.world_size)
        shard = shard.shuffle(seed=self.cfg.seed, buffer_size=1)
        shard.set_epoch(epoch)
        self.rng = random.Random(f"{self.cfg.seed}/{epoch}/{self.rank}")
        self.buffer: Pairs = []
        self.pending: list[list[tuple[list[int], list[int]]]] = []  # token ids of the batches grouped last
        if state is not None:
            shard.load_state_dict(state["shard"])
            self.buffer = [tuple(pair) for pair in state["buffer"]]
            self.pending = state["pending"]
            self.rng.setstate(state["rng"])
        self.shard, self.examples, self.shard_done = shard, iter(shard), False

    def position(self) -> dict:
        return {"shard": self.shard.state_dict(), "buffer": list(self.buffer), "pending": list(self.pending),
                "rng": self.rng.getstate()}

    def take(self, count: int) -> list[dict[str, torch.Tensor]]:
        """`count` batches, or fewer once this rank's shard is used up."""
        batches = []
        while len(batches) < count and (batch := self.next_batch()) is not None:
            batches.append(batch)
        return batches

    def exhausted(self) -> bool:
        return False  # known only when a `take` comes back short

    def _next_pair(self) -> tuple[str, str] | None:
        while len(self.buffer) < self.cfg.shuffle_buffer and not self.shard_done:
            example = next(self.examples, None)
            if example is None:
                self.shard_done = True
            else:
                (pair,) = _pairs_from_examples([example], "train", self.cfg.lang_src, self.cfg.lang_tgt)
                if pair not in self.held_out:
                    self.buffer.append(pair)
        if not self.buffer:
            return None
        i = self.rng.randrange(len(self.buffer))
        self.buffer[i], self.buffer[-1] = self.buffer[-1], self.buffer[i]
        return self.buffer.pop()

    def _grouped_batches(self) -> list[list[tuple[list[int], list[int]]]]:
        """About 50 batches' worth of pairs from the buffer, tokenized, sorted by length, cut into full batches of
        --batch_size, in a shuffled order: similar lengths share a batch, so little compute goes to padding. The
        few pairs left over go back to the buffer (or, once the shard is used up, are dropped)."""
        pairs = []
        while len(pairs) < self.cfg.batch_size * self.GROUPING_BATCHES and (pair := self._next_pair()) is not None:
            pairs.append(pair)
        tokenized = tokenize_pairs(pairs, self.src_tokenizer, self.tgt_tokenizer, self.cfg.seq_len)
        self.dropped_too_long += tokenized.dropped_too_long
        self.dropped_empty += tokenized.dropped_empty
        items = sorted(((*map(torch.Tensor.tolist, tokenized.dataset[i]), pairs[k])
                        for i, k in enumerate(tokenized.kept)), key=lambda item: max(len(item[0]), len(item[1])))
        size = self.cfg.batch_size
        full = len(items) - len(items) % size
        if not self.shard_done:
            self.buffer.extend(item[2] for item in items[full:])
        batches = [[item[:2] for item in items[i:i + size]] for i in range(0, full, size)]
        self.rng.shuffle(batches)
        return batches

    GROUPING_BATCHES = 50  # as the in-memory sampler's window

    def next_batch(self) -> dict[str, torch.Tensor] | None:
        """The next batch of --batch_size pairs, or None once this rank's shard is used up (a last, partial batch
        is dropped: the other ranks may have none to pair it with)."""
        while not self.pending and (self.buffer or not self.shard_done):
            self.pending = self._grouped_batches()
        if not self.pending:
            return None
        return collate([(torch.tensor(src), torch.tensor(tgt)) for src, tgt in self.pending.pop()], self.cfg.seq_len)


def shard_for_rank(num_examples: int, rank: int, world_size: int) -> list[int]:
    """A disjoint, strided share of an evaluation split (ranks may differ by one example)."""
    return list(range(rank, num_examples, world_size))
