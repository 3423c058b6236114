"""Tokenized datasets, padding and collation, batch widths and counts, the distributed sampler and token-budget
batches (dataset.py)."""

import pytest
import torch

import dataset as data
import tokenizer as tok


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
    # The order of an epoch follows the number of ranks that started it, which a resume passes on.
    on_two = data.DistributedBatchSampler(n, batch_size, 1, 2, seed=0, lengths=lengths)
    assert on_two.epoch_order() != grouped.epoch_order()
    grouped.set_epoch(0, 0, started_by=(2, batch_size))
    assert on_two.epoch_order() == grouped.epoch_order()
    shards = rank_batches(n, batch_size, world=2, epoch=0, lengths=lengths)
    seen = [i for shard in shards for batch in shard for i in batch]
    assert sorted(seen) == list(range(n))


def test_length_grouping_shuffles_the_steps_and_keeps_each_global_batch_of_similar_lengths():
    n, batch_size, world = 4 * 48 * 8, 8, 2  # four whole windows
    lengths = torch.randperm(n, generator=torch.Generator().manual_seed(3)) % 97 + 3
    shards = rank_batches(n, batch_size, world, epoch=0, lengths=lengths)
    steps = [[lengths[b].tolist() for b in global_batch] for global_batch in zip(*shards)]
    # Both shares of every step are one run of a sorted window: the ranks get similar lengths.
    assert all(max(first) <= min(second) for first, second in steps)
    # The steps of a window come in a shuffled order, not climbing from the shortest sentences to the longest
    # (then the longest sentence of a step would fall only from one window to the next: 3 times here).
    longest = [max(second) for _, second in steps]
    falls = sum(longest[i] < longest[i - 1] for i in range(1, len(steps)))
    assert falls > len(steps) // 4


def test_a_resume_on_another_number_of_ranks_finishes_the_epoch_in_its_order():
    n, batch_size = 1000, 8
    lengths = torch.randint(3, 60, (n,), generator=torch.Generator().manual_seed(4))
    on_two = data.DistributedBatchSampler(n, batch_size, 0, 2, seed=0, lengths=lengths)
    order, position = on_two.epoch_order(), on_two.position_after(10)
    assert position == 10 * 2 * batch_size
    on_three = [data.DistributedBatchSampler(n, batch_size, rank, 3, seed=0, lengths=lengths) for rank in range(3)]
    for sampler in on_three:
        sampler.set_epoch(0, position, started_by=(2, batch_size))
    rest = [i for global_batch in zip(*map(list, on_three)) for share in global_batch for i in share]
    assert rest == order[position:position + len(rest)] and len(rest) > len(order) - position - 3


def token_budget_shards(lengths, max_tokens, world, epoch=0, start=0, started_by=None):
    samplers = [data.DistributedBatchSampler(len(lengths), 1, rank, world, 0, lengths=lengths, max_tokens=max_tokens)
                for rank in range(world)]
    for sampler in samplers:
        sampler.set_epoch(epoch, start, started_by)
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
    # An epoch started by two ranks: one rank alone takes the same per-rank cuts in turn.
    _, (one,) = token_budget_shards(lengths, 300, world=1, epoch=1, started_by=(2, 1))
    assert [b for pair in zip(*two) for b in pair] == one[:2 * len(two[0])]
    # Resume after 7 steps of two ranks, on two ranks or on one: the same batches follow.
    samplers, _ = token_budget_shards(lengths, 300, world=2, epoch=1)
    position = samplers[0].position_after(7)
    assert position == sum(len(b) for shard in two for b in shard[:7])
    _, resumed = token_budget_shards(lengths, 300, world=2, epoch=1, start=position)
    assert resumed == [shard[7:] for shard in two]
    _, (resumed_alone,) = token_budget_shards(lengths, 300, world=1, epoch=1, start=position,
                                              started_by=(2, 1))
    assert resumed_alone[:len(one) - 14] == one[14:]


def test_a_sentence_longer_than_the_budget_gets_a_batch_of_its_own():
    lengths = torch.tensor([5, 5, 50, 5, 5])  # 4 x width 6 fits 24
    _, (shard,) = token_budget_shards(lengths, 24, world=1)
    assert sorted(sorted(b) for b in shard) == [[0, 1, 3, 4], [2]]
