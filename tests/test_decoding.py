"""Greedy and beam search (decoding.py): the key/value cache, when decoding stops and how often it reads the
device, length limits and penalties, token budgets (placeholders kept), and sequence scores."""

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import dataset as data
import decoding
import tokenizer as tok
from decoding import FINISHED_CHECK_EVERY, TokenBudget, max_output_length
from evaluation import translate_examples
from helpers import random_tokens, tiny_model, toy_pairs
from model import ModelConfig, Transformer
from translate import Translator

PAD, BOS, EOS = 0, 2, 3


def test_cached_greedy_decoding_equals_uncached():
    model = tiny_model()
    src = random_tokens(5, 9)
    src[2, 4:] = PAD
    src[4, 2:] = PAD
    cached = decoding.greedy_decode(model, src, bos_id=2, eos_id=3, max_new_tokens=20, use_cache=True)
    uncached = decoding.greedy_decode(model, src, bos_id=2, eos_id=3, max_new_tokens=20, use_cache=False)
    assert cached.shape[1] > 1
    torch.testing.assert_close(cached, uncached, rtol=0, atol=0)


def test_greedy_decoding_stops_when_all_finished_and_pads_after_eos():
    model = tiny_model(tgt_vocab_size=10)
    plan = [[3, 5], [5, 5], [5, 3], [5, 5]]  # per step, the token each row should choose (3 = EOS)

    def scripted_decode(tgt_in, memory, src_mask, caches=None, offset=0):
        calls.append(offset)
        logits = torch.zeros(2, 1, 10)
        for row, token in enumerate(plan[min(offset, len(plan) - 1)]):
            logits[row, 0, token] = 1.0
        return logits

    model.decode = scripted_decode
    calls = []
    out = decoding.greedy_decode(model, random_tokens(2, 5), bos_id=2, eos_id=3, max_new_tokens=30)
    assert out.tolist() == [[PAD, PAD], [5, 5]]  # columns of padding only are cut off
    assert len(calls) == FINISHED_CHECK_EVERY  # all ended at step 3; the host looked at step 8
    calls = []
    out = decoding.greedy_decode(model, random_tokens(2, 5), bos_id=2, eos_id=3, max_new_tokens=30,
                              max_lengths=torch.tensor([30, 1]))
    assert out.tolist() == [[PAD], [5]] and len(calls) == FINISHED_CHECK_EVERY  # row 1 cut at its own limit


def test_beam_search_of_size_one_is_greedy_and_length_penalty_favours_longer_outputs():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(30, 30, d_model=32, num_heads=2, num_layers=1, d_ff=64, dropout=0.0,
                                    max_len=64)).eval()
    eos_bias = torch.zeros(30)
    eos_bias[EOS] = 2.5  # an untrained model that ends sentences often, at different lengths
    model.output.register_forward_hook(lambda module, inputs, output: output + eos_bias)
    src = torch.randint(4, 30, (16, 6))
    src[3, 4:] = PAD
    assert torch.equal(decoding.beam_search(model, src, BOS, EOS, 30, beam_size=1),
                       decoding.greedy_decode(model, src, BOS, EOS, 30))

    def mean_length(length_penalty):
        out = decoding.beam_search(model, src, BOS, EOS, 30, beam_size=5, length_penalty=length_penalty)
        return (out != PAD).sum(dim=1).float().mean().item()

    # Raw log-probability sums (penalty 0) prefer ending at once; dividing by length ** penalty undoes that.
    assert mean_length(0.0) < mean_length(1.0) <= mean_length(3.0)


def test_a_token_budget_holds_each_hypothesis_to_its_counts_in_greedy_and_beam_search():
    """Placeholders kept: a budgeted token never appears more often than its count, and no hypothesis ends (EOS)
    before it has appeared that often, whatever the model would rather do."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(12, 12, d_model=32, num_heads=2, num_layers=1, d_ff=64, dropout=0.0,
                                    max_len=64)).eval()
    bias = torch.zeros(12)
    bias[[PAD, 1, BOS]], bias[EOS], bias[[5, 6, 7]] = -10.0, 6.0, 4.0  # ends at once, unless EOS is forbidden
    model.output.register_forward_hook(lambda module, inputs, output: output + bias)
    src = torch.randint(4, 12, (6, 5))
    for decode in (lambda **budget: decoding.greedy_decode(model, src, BOS, EOS, 40, **budget),
                   lambda **budget: decoding.beam_search(model, src, BOS, EOS, 40, beam_size=3, **budget)):
        # Tokens 5 and 6 spell the same thing (one group), token 7 another: each sentence its own counts.
        counts = torch.tensor([[0, 0], [1, 0], [2, 1], [0, 3], [1, 1], [3, 0]])
        budget = TokenBudget(torch.tensor([5, 6, 7]), torch.tensor([0, 0, 1]), counts)

        def kept(out):
            return [[sum(t in (5, 6) for t in row), row.count(7)] for row in out.tolist()]

        assert kept(decode()) != counts.tolist()  # left alone, the model does otherwise
        assert kept(decode(budget=budget)) == counts.tolist()


def test_a_token_budget_fits_the_owed_tokens_into_an_output_cut_off_at_its_length_limit():
    """A translation that would run into its length limit (a loop) still holds its placeholders: once the tokens
    owed fill the room left, only they may come."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(12, 12, d_model=32, num_heads=2, num_layers=1, d_ff=64, dropout=0.0,
                                    max_len=64)).eval()
    bias = torch.zeros(12)
    bias[[PAD, 1, BOS]], bias[8], bias[[5, 6, 7]] = -10.0, 8.0, 4.0  # token 8 forever, never EOS
    model.output.register_forward_hook(lambda module, inputs, output: output + bias)
    src = torch.randint(4, 12, (4, 5))
    counts = torch.tensor([[0, 0], [1, 0], [2, 1], [1, 3]])
    budget = TokenBudget(torch.tensor([5, 6, 7]), torch.tensor([0, 0, 1]), counts)
    limits = torch.tensor([3, 3, 5, 4])
    greedy = decoding.greedy_decode(model, src, BOS, EOS, 40, max_lengths=limits, budget=budget)
    beam = decoding.beam_search(model, src, BOS, EOS, 40, beam_size=3, max_lengths=limits, budget=budget)
    for out in (greedy, beam):
        out = [[t for t in row if t != PAD] for row in out.tolist()]
        assert [len(row) for row in out] == limits.tolist()  # no EOS: every output cut at its own limit
        assert [[sum(t in (5, 6) for t in row), row.count(7)] for row in out] == counts.tolist()
        assert out[0] == [8, 8, 8]
    assert greedy[:3, :2].tolist() == [[8, 8]] * 3  # the model's own choice until the room runs out


class HostReads(TorchDispatchMode):
    """Counts the operations that make the host wait for the device's queue on a GPU: reading a value (`.item()`,
    `bool()`) and boolean-mask indexing (which must count the selected elements first)."""

    SYNCING = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func in self.SYNCING
        return func(*args, **(kwargs or {}))


def test_decoding_reads_the_device_once_every_few_tokens_not_every_token():
    model = tiny_model()
    src = random_tokens(4, 7)
    tokens = 40
    for decode in (lambda: decoding.greedy_decode(model, src, BOS, -1, tokens),  # -1: no sentence ever ends
                   lambda: decoding.beam_search(model, src, BOS, -1, tokens, beam_size=3)):
        with HostReads() as reads:
            out = decode()
        assert out.shape == (4, tokens)
        assert reads.count <= tokens // 8 + 1  # a check every 8 tokens at most, and one to trim the output


def test_preallocated_cache_decodes_like_the_uncached_model_in_beam_search():
    model = tiny_model()
    src = random_tokens(3, 6)
    src[1, 3:] = PAD
    # Beam search's cache is reordered every step: its scores must equal the model's own full-sequence scores.
    out = decoding.beam_search(model, src, BOS, EOS, 12, beam_size=3, length_penalty=0.0)
    best = decoding.beam_search(model, src, BOS, EOS, 12, beam_size=1)
    assert torch.equal(best, decoding.greedy_decode(model, src, BOS, EOS, 12, use_cache=False))
    assert (decoding.sequence_log_prob(model, src, out, BOS, EOS)
            >= decoding.sequence_log_prob(model, src, best, BOS, EOS) - 1e-4).all()


def test_beam_search_never_picks_a_hypothesis_cut_at_the_length_limit_over_one_that_ended():
    model = tiny_model(tgt_vocab_size=10)
    bias = torch.zeros(10)
    bias[5], bias[EOS] = 6.0, 3.0  # "5 5 5 ..." is far likelier than ending, but ending stays in the beam
    model.output.register_forward_hook(lambda module, inputs, output: output * 0 + bias)
    src = random_tokens(3, 5)
    limits = torch.tensor([10, 10, 10])
    # The loop "5" x 10 scores about -0.05 per token, -0.5 in all; ending at once about -3: by score / length the
    # cut-off loop would win by far.
    out = decoding.beam_search(model, src, BOS, EOS, 30, beam_size=4, length_penalty=1.0, max_lengths=limits)
    assert ((out != PAD).sum(dim=1) < limits).all(), out  # every winner ended with EOS within its limit
    # With no ended beam at all (EOS impossible), the cut-off hypothesis is still returned.
    bias[EOS] = -1e4
    out = decoding.beam_search(model, src, BOS, EOS, 30, beam_size=4, max_lengths=limits)
    assert out.tolist() == [[5] * 10] * 3


def test_output_limit_is_per_sentence():
    assert max_output_length(7) == 24


def test_translations_keep_exactly_their_sources_placeholders_where_the_vocabulary_spells_them_whole():
    """Evaluation and translate.py decode under a PlaceholderBudget: an untrained model that would end at once, or
    would emit placeholders its source lacks, writes each of its source's placeholders as often as the source."""
    sentences = ["%s copied to %s", "%d files in {name}", "no placeholder here", "size %s of %d"] * 30
    tokenizer = tok.tokenizer_from_json(tok.train_tokenizer(sentences, 400).to_str())
    table = tok.placeholder_tokens(tokenizer)
    assert {"%s", "%d", "{name}"} <= set(table)
    for name, ids in table.items():
        assert {tokenizer.decode([i]).removeprefix(" ") for i in ids} == {name}
    tokenized = data.tokenize_pairs([(s, s) for s in sentences[:4]], tokenizer, tokenizer, 32)
    torch.manual_seed(0)
    vocab = tokenizer.get_vocab_size()
    model = Transformer(ModelConfig(vocab, vocab, d_model=32, num_heads=2, num_layers=1, d_ff=64, dropout=0.0,
                                    max_len=32)).eval()
    bias = torch.zeros(vocab)
    placeholder_ids = [i for ids in table.values() for i in ids]
    bias[tok.EOS_ID], bias[placeholder_ids] = 8.0, 6.0  # ends at once, else writes placeholders
    model.output.register_forward_hook(lambda module, inputs, output: output + bias)
    for beam_size in (1, 3):
        out = translate_examples(model, tokenized.dataset, [0, 1, 2, 3], sentences[:4], tokenizer, 4,
                                 torch.device("cpu"), contextlib.nullcontext, beam_size)
        assert [sorted(tok.placeholders(out[i])) for i in range(4)] == \
            [["%s", "%s"], ["%d", "{name}"], [], ["%d", "%s"]]


@pytest.mark.e2e
def test_beam_search_never_scores_below_greedy_under_a_trained_model(trained):
    folder, _ = trained
    translator = Translator(str(folder), "best", torch.device("cpu"))
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
