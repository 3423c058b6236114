"""Evaluation helpers: which sentences are scored, the placeholder-match rate reported beside BLEU, and the
placeholders decoding keeps."""

import contextlib

import torch

import dataset as data
import tokenizer as tok
from decoding import max_output_length
from evaluation import placeholder_match_rate, scored_sample, translate_examples
from model import ModelConfig, Transformer


def test_validation_scores_a_fixed_random_sample_not_the_first_lines_of_the_file():
    sample = scored_sample(801, 500)
    assert sample == scored_sample(801, 500) and len(set(sample)) == 500 and sample == sorted(sample)
    assert max(sample) > 700 and sample != list(range(500))  # from the whole split, not its head
    assert scored_sample(300, 500) == list(range(300))


def test_placeholder_match_rate_counts_only_references_that_keep_their_sources_placeholders():
    sources = ["%s copied", "%d files in %s", "no placeholder", "%s", "{0} done"]
    references = ["%s copiati", "%s: %d file", "nessuno", "tradotto senza", "{0} fatto"]
    hypotheses = ["%s copiati", "%d file in %", "nessuno", "x", "{0} fatto"]
    # Eligible: the first (kept), the second (a %s lost), the fifth (kept); not 3 (none) nor 4 (reference drops it).
    assert placeholder_match_rate(sources, references, hypotheses) == 2 / 3
    assert placeholder_match_rate(["a"], ["b"], ["c"]) is None


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
