"""Evaluation helpers: which sentences are scored, and the placeholder-match rate reported beside BLEU."""

from evaluation import placeholder_match_rate, scored_sample


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


def test_a_split_tokenized_as_given_keeps_every_pair_and_cuts_long_sources_to_fit():
    import tokenizer as tok
    from evaluation import tokenize_as_given

    sentences = ["a b c d e f g h i j k l", "a b", ""]
    tokenizer = tok.train_tokenizer(sentences, 300)
    pairs = [(sentences[0], sentences[1]), (sentences[1], sentences[0]), (sentences[2], sentences[2])]
    dataset, cut = tokenize_as_given(pairs, tokenizer, tokenizer, seq_len=8)
    assert len(dataset) == 3 and cut == 1
    assert dataset.src_lengths.tolist()[0] == 8 and int(dataset.src_lengths.max()) <= 8  # cut, EOS kept
    assert dataset[0][0][-1].item() == tok.EOS_ID and dataset[2][0].tolist() == [tok.EOS_ID]  # empty: EOS alone
    assert int(dataset.tgt_lengths.max()) <= 8 and dataset[2][1].tolist() == [tok.BOS_ID, tok.EOS_ID]
