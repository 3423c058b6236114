"""Tests for the generated English->Italian corpus (builtin_corpus.py)."""
import hashlib
import json
import os
import re
import subprocess
import sys

import pytest

import builtin_corpus as bc
from helpers import ROOT


@pytest.fixture(scope="module")
def corpus():
    return bc.build_builtin_corpus()


@pytest.fixture(scope="module")
def pairs(corpus):
    return [(ex["translation"]["en"], ex["translation"]["it"]) for ex in corpus["train"]]


def digest(examples):
    return hashlib.sha256(json.dumps(examples, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def words(text):
    return re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)?", text.lower())


def noun_phrase(noun, plural=False, det="the"):
    return bc.make_np(next(n for n in bc.NOUNS if n.en == noun), plural, det)


def pronoun(person, gender="m"):
    return bc.NP(["x"], None, [], person, gender, person >= 3, "P")


def verb(kind, english):
    return next(v for v in bc.VERBS[kind] if v.en == english)


# --- API, sizes, ids, splits -------------------------------------------------------------------------------------
def test_languages_constant():
    assert bc.LANGUAGES == ("en", "it")


def test_default_sizes_schema_and_ids(corpus):
    assert list(corpus) == ["train", "validation", "test"]
    assert [len(corpus[s]) for s in corpus] == [20000, 500, 500]
    ids = [ex["id"] for split in corpus.values() for ex in split]
    assert ids == [str(i) for i in range(21000)]
    for ex in corpus["validation"][:50]:
        assert set(ex) == {"id", "translation"} and set(ex["translation"]) == {"en", "it"}
        assert all(isinstance(v, str) and v for v in ex["translation"].values())


def test_english_unique_across_splits(corpus):
    train = {ex["translation"]["en"] for ex in corpus["train"]}
    held_out = [ex["translation"]["en"] for s in ("validation", "test") for ex in corpus[s]]
    assert len(train) == 20000
    assert len(set(held_out)) == 1000
    assert not train & set(held_out)


def test_custom_sizes():
    small = bc.build_builtin_corpus(seed=3, train_size=7, valid_size=0, test_size=2)
    assert [len(v) for v in small.values()] == [7, 0, 2]
    assert [ex["id"] for ex in small["test"]] == ["7", "8"]


def test_generate_pairs_ids_and_count():
    out = bc.generate_pairs(5, seed=1, start_id=100)
    assert [ex["id"] for ex in out] == ["100", "101", "102", "103", "104"]
    assert bc.generate_pairs(0, seed=1) == []


def test_invalid_sizes_raise():
    with pytest.raises(ValueError):
        bc.build_builtin_corpus(train_size=-1)
    with pytest.raises(ValueError):
        bc.generate_pairs(-1, seed=0)


def test_too_few_unique_sentences_raises(monkeypatch):
    monkeypatch.setattr(bc, "_sample", lambda rng: ("The cat sleeps.", "Il gatto dorme."))
    with pytest.raises(ValueError, match="unique"):
        bc.build_builtin_corpus(train_size=3, valid_size=0, test_size=0)


# --- Determinism -------------------------------------------------------------------------------------------------
def test_deterministic_and_seed_dependent():
    assert bc.generate_pairs(200, seed=5) == bc.generate_pairs(200, seed=5)
    assert bc.generate_pairs(200, seed=5) != bc.generate_pairs(200, seed=6)
    a = bc.build_builtin_corpus(seed=2, train_size=300, valid_size=20, test_size=20)
    assert a == bc.build_builtin_corpus(seed=2, train_size=300, valid_size=20, test_size=20)
    assert a != bc.build_builtin_corpus(seed=4, train_size=300, valid_size=20, test_size=20)


def test_independent_of_hash_seed():
    code = ("import builtin_corpus, hashlib, json; "
            "print(hashlib.sha256(json.dumps(builtin_corpus.generate_pairs(300, seed=11), ensure_ascii=False, "
            "sort_keys=True).encode()).hexdigest())")
    expected = digest(bc.generate_pairs(300, seed=11))
    for hash_seed in ("1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                             check=True)
        assert out.stdout.strip() == expected


# --- The task: a function from English to Italian, lengths, vocabulary ------------------------------------------------
def test_same_english_always_gets_same_italian():
    seen, repeats = {}, 0
    for ex in bc.generate_pairs(20000, seed=9):  # short sentences repeat, so conflicts would show up
        en, it = ex["translation"]["en"], ex["translation"]["it"]
        repeats += en in seen
        assert seen.setdefault(en, it) == it, f"{en!r} -> {seen[en]!r} and {it!r}"
    assert repeats >= 10


def test_verbs_whose_past_looks_like_the_present_stay_in_the_present():
    # "I read the book" must not be both "Leggo il libro" and "Ho letto il libro".
    assert any(v.past == v.en for v in bc.VERBS["trans"])
    for kind in bc.VERBS:
        assert all(v.past != v.en for v in bc._verbs_for(kind, "past"))


def test_length_range_and_spread(pairs):
    for lang in (0, 1):
        lengths = [len(p[lang].split()) for p in pairs]
        assert min(lengths) >= 3 and max(lengths) <= 30
    en = [len(p[0].split()) for p in pairs]
    assert sum(6 <= n <= 15 for n in en) > 0.55 * len(en)
    assert sum(n >= 15 for n in en) > 0.10 * len(en)
    assert sum(n >= 25 for n in en) > 0
    assert sum(n <= 5 for n in en) > 0.05 * len(en)


def test_vocabulary_size(pairs):
    en_vocab = {w for p in pairs for w in words(p[0])}
    it_vocab = {w for p in pairs for w in words(p[1])}
    assert len(en_vocab) >= 300 and len(it_vocab) >= 300


def test_lexicon_has_no_ambiguous_entries():
    english = [n.en for n in bc.NOUNS]
    assert len(english) == len(set(english))
    assert len({a.en for a in bc.ADJECTIVES}) == len(bc.ADJECTIVES)
    assert not set(english) & {a.en for a in bc.ADJECTIVES}
    for n in bc.NOUNS:  # "the fish" could be one fish or several; such nouns may only be uncountable
        assert n.mass or n.en_pl != n.en
        assert bc._adjectives_for(n.cls), n.en
    assert len(bc.NOUNS) + len(bc.ADJECTIVES) + len({v.en for vs in bc.VERBS.values() for v in vs}) >= 350


# --- Formatting ----------------------------------------------------------------------------------------------------
def test_punctuation_capitalisation_and_spacing(pairs):
    for en, it in pairs:
        for text in (en, it):
            assert text[0].isupper(), text
            assert text[-1] in ".?" and text[-2] not in " .?,", text
            assert text == text.strip() and "  " not in text, text
            assert not re.search(r" [,.?]", text), text
        assert en[-1] == it[-1]
        assert "' " not in it and not it.endswith("'."), it  # elisions are glued: "l'uomo"
        assert not re.search(r"\b(?:perche|citta|e')\b", it), it


def test_elision_and_accents_appear(pairs):
    italian = " ".join(it for _, it in pairs)
    for form in ("l'", "dell'", "un'", "c'è", "perché", "È "):
        assert form in italian, form
    assert re.search(r"\bL'\w", italian)


# --- Grammar -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, expected", [
    (("car", "red", "the", True), ("the red cars", "le macchine rosse")),  # adjective after noun, fem plural
    (("car", "red"), ("the red car", "la macchina rossa")),
    (("man",), ("the man", "l'uomo")),
    (("man", None, "the", True), ("the men", "gli uomini")),
    (("student", None, "a"), ("a student", "uno studente")),
    (("zoo", None, "the"), ("the zoo", "lo zoo")),
    (("idea", "interesting", "a"), ("an interesting idea", "un'idea interessante")),
    (("book", "new", "my"), ("my new book", "il mio libro nuovo")),
    (("mother", None, "my"), ("my mother", "mia madre")),
    (("mother", None, "their"), ("their mother", "la loro madre")),
    (("sister", None, "our", True), ("our sisters", "le nostre sorelle")),
    (("egg", "white", "the", True), ("the white eggs", "le uova bianche")),
    (("apple", None, "some"), ("some apples", "delle mele")),
    (("water", None, "some"), ("some water", "dell'acqua")),
    (("friend", None, "that", True), ("those friends", "quegli amici")),
    (("orange", None, "this"), ("this orange", "quest'arancia")),
    (("dress", "green", "three"), ("three green dresses", "tre vestiti verdi")),
    (("shirt", "grey", "the", True), ("the grey shirts", "le camicie grigie")),
])
def test_noun_phrases(args, expected):
    assert bc.phrase(*args) == expected


@pytest.mark.parametrize("prep, noun, plural, expected", [
    ("di", "man", False, "dell'uomo"), ("in", "kitchen", False, "nella cucina"), ("a", "boy", True, "ai ragazzi"),
    ("su", "shelf", False, "sullo scaffale"), ("da", "student", True, "dagli studenti"),
    ("vicino a", "park", False, "vicino al parco"), ("sotto", "tree", False, "sotto l'albero"),
])
def test_articulated_prepositions(prep, noun, plural, expected):
    assert bc.join(bc.it_pp(prep, noun_phrase(noun, plural)), elide=True) == expected


def test_conjugation():
    assert [bc.it_present("mangiare", False, p) for p in range(6)] == \
        "mangio mangi mangia mangiamo mangiate mangiano".split()
    assert [bc.it_present("capire", True, p) for p in (0, 3, 5)] == ["capisco", "capiamo", "capiscono"]
    assert bc.it_present("cercare", False, 1) == "cerchi"
    assert [bc.it_future(inf, 0) for inf in ("mangiare", "cercare", "leggere", "andare")] == \
        ["mangerò", "cercherò", "leggerò", "andrò"]


def test_passato_prossimo_agreement_and_clitics():
    she, we = pronoun(2, "f"), pronoun(3)
    assert bc.it_verb(verb("motion", "go"), "past", she) == ["è", "andata"]
    assert bc.it_verb(verb("motion", "go"), "past", we) == ["siamo", "andati"]
    assert bc.it_verb(verb("trans", "eat"), "past", she) == ["ha", "mangiato"]
    seen_her = bc.it_verb(verb("trans", "see"), "past", pronoun(0), clitic="la", agr=("f", False))
    assert bc.join(seen_her, elide=True) == "l'ho vista"
    never = bc.it_verb(verb("trans", "eat"), "pres", pronoun(0), neg=True, adv="mai")
    assert never == ["non", "mangio", "mai"]
    assert bc.en_verb(verb("trans", "eat"), "pres", 2, False, None, True) == (["does"], ["eat"])


def test_sentences_show_the_phenomena(pairs):
    italian = " ".join(it for _, it in pairs)
    english = " ".join(en for en, _ in pairs)
    for form in (" piacciono ", "non ", " mai ", " che ", ", ma ", " perché ", "?", " sono ", " erano ",
                 " ci sono ", " del ", " nella ", " sullo ", " ai ", " gli "):
        assert form in italian, form
    for form in (" who ", " that ", " because ", "'s ", " never ", " will ", "Where "):
        assert form in english, form
