"""--streaming: held-out pairs, the tokenizer sample, shards over ranks, the shuffle buffer, exact resume, and the
same number of steps on every rank when shards differ in length."""

import pickle
import shutil

import pytest
import torch

import checkpoint
import train
import dataset as data
import corpus as corpora
import tokenizer as tok
from config import parse_config, validate
from errors import UserError
from helpers import TINY_MODEL, failure_report, toy_pairs, torchrun, write_jsonl


def numbered_pairs(n: int) -> list[tuple[str, str]]:
    return [(f"sentence {i} is here.", f"frase {i} qui.") for i in range(n)]


@pytest.fixture
def four_files(tmp_path):
    pairs = numbered_pairs(100)
    for k in range(4):
        write_jsonl(tmp_path / f"part-{k}.jsonl", pairs[25 * k:25 * (k + 1)])
    return str(tmp_path / "part-*.jsonl"), pairs


def stream_config(pattern: str, *extra: str):
    cfg = parse_config(["--data_files", pattern, "--streaming", "--max_steps", "10", "--valid_size", "4",
                        "--test_size", "3", "--batch_size", "4", "--shuffle_buffer", "16", *extra])
    validate(cfg)
    return cfg


def test_held_out_pairs_come_first_and_tokenizers_learn_from_the_next_ones(four_files):
    pattern, pairs = four_files
    cfg = stream_config(pattern, "--tokenizer_sample", "5")
    corpus = corpora.load_corpus(cfg)
    assert corpus["validation"] == pairs[:4] and corpus["test"] == pairs[4:7]
    assert corpora.tokenizer_sample(cfg, corpus) == pairs[7:12]
    in_memory = parse_config(["--data_files", pattern, "--tokenizer_sample", "5"])
    assert corpora.tokenizer_sample(in_memory, {"train": pairs}) == pairs[:5]


def texts(batches, tokenizer) -> list[str]:
    return [tokenizer.decode([t for t in row.tolist() if t > tok.EOS_ID]) for b in batches for row in b["src"]]


def all_batches(stream: data.StreamBatches) -> list[dict]:
    batches = []
    while batch := stream.take(1):
        batches.extend(batch)
    return batches


def test_ranks_get_disjoint_shuffled_shards_that_resume_exactly(four_files):
    pattern, pairs = four_files
    cfg = stream_config(pattern)
    corpus = corpora.load_corpus(cfg)
    src_tok = tok.train_tokenizer([p[0] for p in pairs], 400)
    tgt_tok = tok.train_tokenizer([p[1] for p in pairs], 400)
    streams = [train.stream_batches(corpus, src_tok, tgt_tok, cfg, rank, 2) for rank in range(2)]
    seen = [texts(all_batches(s), src_tok) for s in streams]
    assert not set(seen[0]) & set(seen[1])
    train_sources = {p[0] for p in pairs[7:]}
    assert set(seen[0]) | set(seen[1]) <= train_sources
    assert len(seen[0]) + len(seen[1]) >= len(train_sources) - 2 * cfg.batch_size  # only partial last batches left
    assert seen[0] != sorted(seen[0], key=lambda s: int(s.split()[1]))  # the buffer shuffled the file order

    streams[0].start_epoch(1)
    next_epoch = texts(all_batches(streams[0]), src_tok)
    assert not set(next_epoch) & set(seen[1]) and next_epoch != seen[0]  # the same shard, in another order

    # Resume mid-epoch from a position that went through pickling, as into a checkpoint: the very same batches.
    streams[0].start_epoch(1)
    first = streams[0].take(2)
    position = pickle.loads(pickle.dumps(streams[0].position()))
    rest = all_batches(streams[0])
    resumed = train.stream_batches(corpus, src_tok, tgt_tok, cfg, 0, 2)
    resumed.start_epoch(1, position)
    again = all_batches(resumed)
    assert texts(first + rest, src_tok) == next_epoch
    assert len(again) == len(rest) and all(torch.equal(a["src"], b["src"]) and torch.equal(a["tgt_out"], b["tgt_out"])
                                           for a, b in zip(again, rest))


@pytest.mark.parametrize("args, flag", [
    (["--streaming"], "--max_steps"),
    (["--streaming", "--max_steps", "5", "--data_files", "x.jsonl", "--max_tokens", "256"], "--max_tokens"),
    (["--streaming", "--max_steps", "5"], "--streaming"),  # the builtin corpus is not a stream
    (["--shuffle_buffer", "0"], "--shuffle_buffer"),
    (["--tokenizer_sample", "0"], "--tokenizer_sample"),
])
def test_streaming_settings_that_cannot_work_name_the_flag(args, flag):
    with pytest.raises(UserError) as e:
        validate(parse_config(args))
    assert str(e.value).startswith(flag)


@pytest.mark.e2e
def test_uneven_shards_end_every_epoch_together_and_resume_bit_identical(tmp_path):
    """Two files of 300 and 100 pairs on two ranks: the rank of the small one runs out first, every epoch, and
    every rank ends the epoch there: no rank waits alone. A run resumed from its checkpoint in the middle of an epoch
    ends exactly where the uninterrupted one does (dropout on: the RNG streams resume too)."""
    pairs = toy_pairs(400)
    write_jsonl(tmp_path / "big.jsonl", pairs[:300])
    write_jsonl(tmp_path / "small.jsonl", pairs[300:])
    held_out = set(pairs[:40])  # --valid_size 20 + --test_size 20, from the start of the stream
    steps_per_epoch = len([p for p in pairs[300:] if p not in held_out]) // 16
    mid_epoch = steps_per_epoch + 2
    args = [*TINY_MODEL, "--data_files", str(tmp_path / "*.jsonl"), "--streaming", "--shuffle_buffer", "40",
            "--dropout", "0.2", "--valid_size", "20", "--test_size", "20", "--eval_every", "1000",
            "--save_every", str(mid_epoch), "--keep_last", "10", "--num_epochs", "3", "--beam_size", "1"]
    uninterrupted = torchrun(2, [*args, "--max_steps", "14", "--model_folder", str(tmp_path / "a")],
                             extra=["--standalone"])
    assert uninterrupted.returncode == 0, failure_report(uninterrupted)
    saved = [step for step, _ in checkpoint.list_checkpoints(str(tmp_path / "a"))]
    assert steps_per_epoch in saved and 2 * steps_per_epoch in saved and saved[-1] == 14  # epoch ends are saved
    # The run as if stopped at its mid-epoch checkpoint, then started again.
    (tmp_path / "b").mkdir()
    for name in (f"ckpt_{mid_epoch:08d}.pt", f"ckpt_{mid_epoch:08d}.done", "tokenizer_en.json", "tokenizer_it.json"):
        shutil.copy(tmp_path / "a" / name, tmp_path / "b" / name)
    part = torchrun(2, [*args, "--max_steps", "14", "--model_folder", str(tmp_path / "b")], extra=["--standalone"])
    assert part.returncode == 0, failure_report(part)
    assert f"resumed from step {mid_epoch} (epoch 1, stream positions restored)" in part.stdout
    a = checkpoint.load_checkpoint(checkpoint.checkpoint_path(str(tmp_path / "a"), 14))
    b = checkpoint.load_checkpoint(checkpoint.checkpoint_path(str(tmp_path / "b"), 14))
    assert a["epoch"] == b["epoch"] == 14 // steps_per_epoch
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
