"""Where sentence pairs come from, and how they are cleaned and split.

A corpus is three lists of (source, target) sentence pairs: train, validation, test. It comes from the builtin
generator, the Hugging Face hub (`datasets.load_dataset`), local files (in the opus_books schema
`{"id": ..., "translation": {"en": ..., "it": ...}}`, .tsv files or Moses pairs train.en + train.it), a folder
written by datasets' `save_to_disk`, or an object store (s3://, read by fsspec); with --streaming
the training split stays a stream that is read lazily. Cleaning (NFC, empty sides, misaligned lengths, duplicates)
and the held-out splits are the same on every rank and every restart. Nothing here tokenizes or batches.
"""

import glob
import logging
import os
import random
import re
import unicodedata

from config import Config
from errors import UserError, first_line
from progress import on_terminal

log = logging.getLogger("translation")

SPLIT_SEED = 0  # fixed, so a train-only corpus splits the same way on every rank, restart and --seed

Pairs = list[tuple[str, str]]


def pairs_from_examples(examples, split: str, src: str, tgt: str) -> Pairs:
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
DATA_FILE_ENDINGS = (".jsonl", ".json", ".parquet", ".tsv")
# The names a folder or a saved DatasetDict's split goes by: validation is also "valid", "val", "dev" or "eval".
SPLIT_NAMES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
               "val": "validation", "dev": "validation", "eval": "validation", "test": "test", "testing": "test"}
TEXT_KINDS = ("tsv", "moses")  # read line by line here; json and parquet go to datasets' own builders


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


def split_of_folder(path: str, root: str) -> str | None:
    """The split of the innermost folder between `root` and the file named after one (train/, validation/, valid/,
    dev/, test/ ...); None when no folder says one."""
    folders = os.path.relpath(os.path.dirname(path), root).split(os.sep)
    return next((SPLIT_NAMES[f.lower()] for f in reversed(folders) if f.lower() in SPLIT_NAMES), None)


def _kind_of_file(path: str, cfg: Config) -> str:
    """json, parquet, tsv, or moses (one side of a pair: a name ending in .<lang_src> or .<lang_tgt>); otherwise the
    path itself, which the caller refuses."""
    if path.endswith((".json", ".jsonl")):
        return "json"
    if path.endswith((".parquet", ".tsv")):
        return path.rsplit(".", 1)[1]
    return "moses" if path.endswith((f".{cfg.lang_src}", f".{cfg.lang_tgt}")) else path


def _folder_files(cfg: Config) -> list[str]:
    files = sorted(os.path.join(root, name) for root, _, names in os.walk(cfg.dataset) for name in names
                   if name.endswith(DATA_FILE_ENDINGS) or _kind_of_file(name, cfg) == "moses")
    if not files:
        raise UserError(f"--dataset {cfg.dataset}: no {'/'.join(DATA_FILE_ENDINGS)} file and no Moses pair "
                        f"(train.{cfg.lang_src} + train.{cfg.lang_tgt}) in this folder; check --lang_src/--lang_tgt")
    return files


def _files_by_split(cfg: Config) -> dict[str, list[str]] | None:
    """--data_files as `train=a.jsonl,validation=b.jsonl,test=c.jsonl` (a file without `split=` is training data),
    or the data files of a local --dataset folder, each assigned to the split its folder names (`split_of_folder`)
    or else its name says (`split_of_file`): when none says a split, every file is training data; when some do, a
    file that says none is refused rather than guessed. None for a hub dataset."""
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
    files = _folder_files(cfg)
    named = {f: split_of_folder(f, cfg.dataset) or split_of_file(f) for f in files}
    if not any(named.values()):
        return {"train": files}
    unnamed = [f for f, split in named.items() if split is None]
    if unnamed:
        raise UserError(f"--dataset {cfg.dataset}: cannot tell which split {os.path.basename(unnamed[0])} holds "
                        f"(neither its name nor its folder says train, validation/dev or test); rename it, move it "
                        f"into a train/, validation/ or test/ folder, or pass --data_files train=...,validation=...")
    return {split: [f for f in files if named[f] == split] for split in SPLITS if split in named.values()}


def _data_files(by_split: dict[str, list[str]], cfg: Config) -> tuple[dict[str, list[str]], str, bool]:
    """The files of each split (local globs expanded), their one kind (`_kind_of_file`), and whether they are
    remote; every way the files cannot make a corpus is refused here."""
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
    kinds = {_kind_of_file(f, cfg) for f in every_file}
    if len(kinds) != 1 or not kinds <= {"json", "parquet", *TEXT_KINDS}:
        raise UserError(f"--data_files: expected files of one kind: only .jsonl/.json, only .parquet, only .tsv or "
                        f"only Moses pairs (train.{cfg.lang_src} + train.{cfg.lang_tgt}), got {sorted(kinds)}")
    kind = kinds.pop()
    if remote and kind in TEXT_KINDS:
        raise UserError("--data_files: .tsv files and Moses pairs are read from local disk only; for s3:// convert "
                        "them to .jsonl or .parquet")
    return files, kind, bool(remote)


def _load_with_datasets(cfg: Config, streaming: bool = False):
    """A DatasetDict (an IterableDatasetDict when streaming) from the hub, a local dataset folder (data files or a
    `save_to_disk` folder), or --data_files; which file went to which split is logged. Remote --data_files
    (s3://...) go to fsspec, which takes credentials from the standard AWS environment variables or profile, and an
    S3-compatible store's address from AWS_ENDPOINT_URL."""
    import datasets  # heavy: imported only when a non-builtin corpus is asked for

    if on_terminal():  # the download and preparation of a hub dataset can take minutes: show it, on rank 0
        datasets.enable_progress_bars()
    else:
        datasets.disable_progress_bars()
    if not cfg.data_files and is_saved_dataset(cfg.dataset):
        return _load_saved_dataset(cfg, streaming)
    by_split = _files_by_split(cfg)
    if by_split is not None:
        files, kind, remote = _data_files(by_split, cfg)
        if kind in TEXT_KINDS:
            return _load_text_pairs(files, kind, cfg, streaming)
        source, flag = cfg.data_files or cfg.dataset, "data_files" if cfg.data_files else "dataset"
        options = _storage_options() if remote else None
        log.info("data files: " + "; ".join(f"{split} <- {', '.join(found)}" for split, found in files.items()))
        load = lambda: datasets.load_dataset(kind, data_files=files, streaming=streaming,  # noqa: E731
                                             storage_options=options)
    else:
        source, flag = cfg.dataset, "dataset"
        load = lambda: datasets.load_dataset(cfg.dataset, cfg.dataset_config, streaming=streaming)  # noqa: E731
    try:
        return load()
    except Exception as e:  # the loader's many error types all mean "cannot load what was named"
        raise UserError(f"--{flag}: cannot load {source!r}: {first_line(e)}") from None


def _storage_options() -> dict:
    """fsspec options for s3://: the endpoint of an S3-compatible store (MinIO, R2, moto), if one is set."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}


def is_saved_dataset(folder: str) -> bool:
    """A folder written by datasets' `save_to_disk`: of a DatasetDict (dataset_dict.json), or of one Dataset
    (dataset_info.json and state.json beside its arrow files)."""
    return os.path.isfile(os.path.join(folder, "dataset_dict.json")) or all(
        os.path.isfile(os.path.join(folder, name)) for name in ("dataset_info.json", "state.json"))


def _load_saved_dataset(cfg: Config, streaming: bool) -> dict:
    """The splits of a `save_to_disk` folder under our names (a lone Dataset is the training split; "valid" or "dev"
    is the validation split unless one is called "validation"); when streaming, each split becomes a stream of as
    many shards as it has arrow files, so ranks can take whole files."""
    import datasets

    try:
        saved = datasets.load_from_disk(cfg.dataset)
    except Exception as e:  # a damaged or half-written folder: say which, in one line
        raise UserError(f"--dataset: cannot load {cfg.dataset!r} (a save_to_disk folder): {first_line(e)}") from None
    if isinstance(saved, datasets.Dataset):
        saved = {"train": saved}
    splits, ignored = {}, []
    for name, split in sorted(saved.items(), key=lambda item: item[0] not in SPLITS):  # exact names first
        ours = SPLIT_NAMES.get(name.lower())
        if ours is None or ours in splits:
            ignored.append(name)
            continue
        shards = max(1, min(len(split), len(split.cache_files)))
        splits[ours] = split.to_iterable_dataset(num_shards=shards) if streaming else split
        log.info(f"saved dataset: {ours} <- split {name!r} ({len(split):,} rows)")
    if ignored:
        log.info(f"saved dataset: splits {', '.join(ignored)} ignored (not train, validation or test)")
    return splits


def _moses_pairs(files: list[str], cfg: Config) -> list[tuple[str, str]]:
    """(source file, target file) for each Moses file named, whichever side: train.en finds train.it beside it and
    the other way round. Both sides must have as many lines: line i of one translates line i of the other."""
    flag, pairs = "data_files" if cfg.data_files else "dataset", []
    for path in files:
        stem = path.rsplit(".", 1)[0]
        pair = (f"{stem}.{cfg.lang_src}", f"{stem}.{cfg.lang_tgt}")
        if pair in pairs:
            continue
        missing = [side for side in pair if not os.path.isfile(side)]
        if missing:
            raise UserError(f"--{flag}: {path} has no {os.path.basename(missing[0])} beside it (a Moses pair is "
                            f"<name>.{cfg.lang_src} + <name>.{cfg.lang_tgt}); add it or check --lang_src/--lang_tgt")
        counts = [_count_lines(side) for side in pair]
        if counts[0] != counts[1]:
            raise UserError(f"--{flag}: {pair[0]} has {counts[0]:,} lines but {pair[1]} has {counts[1]:,}; line i of "
                            f"one must translate line i of the other: realign the two files")
        pairs.append(pair)
    return pairs


def _count_lines(path: str) -> int:
    """Lines as `_lines` reads them: ended by \\n, the last one possibly without."""
    count, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            count, last = count + chunk.count(b"\n"), chunk[-1:]
    return count + (last != b"\n")


def _lines(path: str):
    # Only \n ends a line, as Moses tools count them (a stray \r or U+2028 inside a sentence must not shift the
    # alignment); a Windows \r\n and a leading byte-order mark are taken off.
    with open(path, encoding="utf-8-sig", newline="\n") as f:
        for line in f:
            yield line.removesuffix("\n").removesuffix("\r")


def _moses_examples(shards: list[tuple[str, str]], src: str, tgt: str):
    for source_path, target_path in shards:
        for source, target in zip(_lines(source_path), _lines(target_path)):
            yield {"translation": {src: source, tgt: target}}


def _tsv_examples(shards: list[str], src: str, tgt: str):
    for path in shards:
        columns, width = (0, 1), 2
        for number, line in enumerate(_lines(path), 1):
            fields = line.split("\t") if line else [""] * width  # an empty line is an empty pair: cleaning drops it
            if number == 1 and (header := _tsv_header(path, fields, src, tgt)):
                columns, width = header, len(fields)
                continue
            if len(fields) != width:
                raise UserError(f"{path} line {number} has {len(fields)} tab-separated fields, not {width}: fix it; a "
                                f".tsv line is source<TAB>target, or holds the columns its header line names")
            yield {"translation": {src: fields[columns[0]], tgt: fields[columns[1]]}}


LANGUAGE_CODE = re.compile(r"[a-z]{2,3}(?:[-_][a-z0-9]{2,8})?")


def _tsv_header(path: str, fields: list[str], src: str, tgt: str) -> tuple[int, int] | None:
    """The columns of the source and the target when the first line names the languages (en<TAB>it, in any order,
    among other columns or not); None when it is a pair. A header that names one language and another code is
    refused: --lang_src or --lang_tgt does not match the file."""
    names = [field.strip().lower() for field in fields]
    if src.lower() in names and tgt.lower() in names:
        return names.index(src.lower()), names.index(tgt.lower())
    if len(names) == 2 and {src.lower(), tgt.lower()} & set(names) and all(map(LANGUAGE_CODE.fullmatch, names)):
        missing, flag = (src, "lang_src") if src.lower() not in names else (tgt, "lang_tgt")
        raise UserError(f"--{flag}: language {missing!r} is not in the corpus (the header of {path} names: "
                        f"{', '.join(names)})")
    return None


def _load_text_pairs(files: dict[str, list[str]], kind: str, cfg: Config, streaming: bool) -> dict:
    """The splits of .tsv files or Moses pairs as examples in the opus_books schema: generators read once by
    `load_corpus`, or, when streaming, datasets streams of one shard per file (or pair), so ranks take whole files
    and a stream's position resumes as a jsonl one does."""
    import datasets

    if kind == "moses":
        read, shards = _moses_examples, {split: _moses_pairs(found, cfg) for split, found in files.items()}
        both = f".{{{cfg.lang_src},{cfg.lang_tgt}}}"  # train.{en,it}: the pair in one name, as a shell writes it
        named = {split: [source.removesuffix(f".{cfg.lang_src}") + both for source, _ in pairs]
                 for split, pairs in shards.items()}
    else:
        read, shards, named = _tsv_examples, files, files
    log.info("data files: " + "; ".join(f"{split} <- {', '.join(found)}" for split, found in named.items()))
    if not streaming:
        return {split: read(found, cfg.lang_src, cfg.lang_tgt) for split, found in shards.items()}
    features = datasets.Features({"translation": {lang: datasets.Value("string")
                                                  for lang in (cfg.lang_src, cfg.lang_tgt)}})
    return datasets.IterableDatasetDict({
        split: datasets.IterableDataset.from_generator(
            read, features=features, gen_kwargs={"shards": found, "src": cfg.lang_src, "tgt": cfg.lang_tgt})
        for split, found in shards.items()})


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


def load_corpus(cfg: Config) -> dict[str, Pairs]:
    """{"train", "validation", "test"} lists of (source, target) pairs for the configured languages, cleaned by
    `clean_pairs`, except a test split of the corpus's own, returned as given (scored whole, as published figures
    are); training pairs whose source is held out are dropped, so no held-out sentence is trained on. The cleaning
    summary is logged."""
    if cfg.streaming:
        return _load_stream(cfg)
    if cfg.dataset == "builtin" and not cfg.data_files:
        import builtin_corpus

        splits = builtin_corpus.build_builtin_corpus(seed=0)
    else:
        splits = dict(_load_with_datasets(cfg))
    if "train" not in splits:
        raise UserError(f"--dataset: the corpus has no 'train' split (it has: {', '.join(sorted(splits))})")
    corpus = {name: pairs_from_examples(examples, name, cfg.lang_src, cfg.lang_tgt)
              for name, examples in splits.items() if name in ("train", "validation", "test")}
    given_test = corpus.get("test")
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
    if given_test is not None:
        corpus["test"] = given_test
    log.info(cleaning_summary(counts))
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
        corpus[name] = pairs_from_examples(source.take(size), name, cfg.lang_src, cfg.lang_tgt)
        held_out += 0 if name in splits else size
    corpus["train"] = train
    if not corpus["validation"]:
        raise UserError("--valid_size: the validation split is empty; hold out at least one pair")
    if not take_pairs(train.skip(held_out), 1, cfg):
        raise UserError("--dataset/--data_files: the corpus is empty (no training pairs after the held-out ones)")
    return corpus


def take_pairs(stream, count: int, cfg: Config) -> Pairs:
    """The first `count` pairs of a stream."""
    return pairs_from_examples(stream.take(count), "train", cfg.lang_src, cfg.lang_tgt)


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


def pair_of_example(example: dict, cfg: Config) -> tuple[str, str]:
    """The (source, target) pair of one example of a stream."""
    (pair,) = pairs_from_examples([example], "train", cfg.lang_src, cfg.lang_tgt)
    return pair
