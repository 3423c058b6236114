"""The tokenizer (tokenizer.py): exact round trips, placeholders kept whole, special-token names as plain text."""

import tokenizer as tok


def test_tokenizer_round_trip_is_exact():
    sentences = ["Il gatto rosso mangia.", "Perché la città è bella?", "l'uomo e un'amica", "  two  spaces ",
                 "émoji 🙂 and ünïcode ß", "Numbers 1,234.5 and (brackets)!"]
    tokenizer = tok.train_tokenizer(sentences * 20, vocab_size=400)
    for text in sentences + ["completely unseen: Ωμέγα ≠ zeta"]:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert tokenizer.decode(ids) == text
    assert [tokenizer.token_to_id(t) for t in tok.SPECIAL_TOKENS] == [0, 1, 2, 3]


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
