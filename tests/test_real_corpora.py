"""Tests for the corpus builder from gettext catalogs (real_corpora.py), on .mo files written here, offline."""
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import real_corpora as rc
from helpers import ROOT

HEADER = (b"", b"Project-Id-Version: demo 1.0\nLanguage: it\n"
               b"Content-Type: text/plain; charset=UTF-8\nPlural-Forms: nplurals=2; plural=(n != 1);\n")
ENTRIES = [
    HEADER,
    (b"cannot open %s", "impossibile aprire %s".encode()),
    (b"menu\x04Open", b"Apri"),                                           # msgctxt "menu"
    (b"%d file\x00%d files", b"%d file\x00%d file"),                        # plural
    (b"untranslated", b""),                                                # empty translation
    (b"Usage: %(prog)s {0}\nTry --help.", "Uso: %(prog)s {0}\nProva --help.".encode()),
    (b"\xc3\xa9t\xc3\xa9 caf\xc3\xa9", "caffè d'estate".encode()),      # non-ASCII source
]
EXPECTED_PAIRS = [
    ("cannot open %s", "impossibile aprire %s"),
    ("Open", "Apri"),
    ("%d file", "%d file"),
    ("%d files", "%d file"),
    ("Usage: %(prog)s {0}\nTry --help.", "Uso: %(prog)s {0}\nProva --help."),
    ("été café", "caffè d'estate"),
]


def write_mo(path: Path, entries, byte_order="<") -> Path:
    """A .mo file as msgfmt lays it out: header, originals table, translations table, no hash table, strings."""
    entries = sorted(entries)  # msgfmt sorts by msgid; the header (empty msgid) comes first
    n = len(entries)
    originals, translations = 28, 28 + 8 * n
    offset = 28 + 16 * n
    tables, blob = [[], []], b""
    for column in (0, 1):
        for entry in entries:
            text = entry[column]
            tables[column].append((len(text), offset + len(blob)))
            blob += text + b"\x00"
    header = struct.pack(byte_order + "7I", rc.MO_MAGIC, 0, n, originals, translations, 0, offset)
    packed = b"".join(struct.pack(byte_order + "2I", *pair) for table in tables for pair in table)
    path.write_bytes(header + packed + blob)
    return path


def read_jsonl(path: Path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("byte_order", ["<", ">"])
def test_read_mo_returns_the_raw_entries(tmp_path, byte_order):
    path = write_mo(tmp_path / "demo.mo", ENTRIES, byte_order)
    assert rc.read_mo(path) == sorted(ENTRIES)


def test_read_mo_rejects_other_files(tmp_path):
    (tmp_path / "bad.mo").write_bytes(b"\x00" * 40)
    with pytest.raises(rc.CorpusError, match="not a .mo file"):
        rc.read_mo(tmp_path / "bad.mo")
    truncated = write_mo(tmp_path / "t.mo", ENTRIES).read_bytes()[:100]
    (tmp_path / "t.mo").write_bytes(truncated)
    with pytest.raises(rc.CorpusError, match="truncated"):
        rc.read_mo(tmp_path / "t.mo")


def test_corpus_pairs_skips_and_placeholders(tmp_path):
    write_mo(tmp_path / "demo.mo", ENTRIES)
    out = tmp_path / "out" / "train.jsonl"
    counts = rc.write_corpus([tmp_path / "demo.mo"], "it", out)
    examples = read_jsonl(out)
    assert [ex["id"] for ex in examples] == [str(i) for i in range(len(examples))]
    assert all(set(ex) == {"id", "translation"} and set(ex["translation"]) == {"en", "it"} for ex in examples)
    pairs = [(ex["translation"]["en"], ex["translation"]["it"]) for ex in examples]
    # Catalog order is msgfmt's byte order of the msgids (context included); header, empty entry and context gone.
    assert pairs == [EXPECTED_PAIRS[i] for i in (2, 3, 4, 0, 1, 5)]
    assert counts == rc.Counts(catalogs=1, entries=6, plural=1, empty=1, undecodable=0, pairs=6, copies=1)
    assert "\n" not in out.read_text(encoding="utf-8").splitlines()[0]  # newlines stay inside the JSON string


def test_catalogs_are_concatenated_in_the_order_given_with_running_ids(tmp_path):
    a = write_mo(tmp_path / "a.mo", [HEADER, (b"Yes", b"S\xc3\xac")])
    b = write_mo(tmp_path / "b.mo", [HEADER, (b"No", b"No")])
    rc.write_corpus([a, b], "it", tmp_path / "train.jsonl")
    assert read_jsonl(tmp_path / "train.jsonl") == [
        {"id": "0", "translation": {"en": "Yes", "it": "Sì"}},
        {"id": "1", "translation": {"en": "No", "it": "No"}},
    ]


def test_symlinked_alias_of_a_catalog_is_read_once(tmp_path):
    real = write_mo(tmp_path / "iso_639-2.mo", [HEADER, (b"Italian", b"Italiano")])
    (tmp_path / "iso_639.mo").symlink_to(real.name)
    counts = rc.write_corpus(rc.mo_files(tmp_path), "it", tmp_path / "out" / "train.jsonl")
    assert len(read_jsonl(tmp_path / "out" / "train.jsonl")) == 1
    assert (counts.catalogs, counts.aliases, counts.pairs) == (1, 1, 1)


def test_header_charset_and_undecodable_entries(tmp_path):
    latin1 = (b"", b"Content-Type: text/plain; charset=ISO-8859-1\n")
    path = write_mo(tmp_path / "l1.mo", [latin1, (b"coffee", b"caf\xe9")])
    assert rc.catalog_pairs(path, rc.Counts()) == [("coffee", "café")]

    broken = write_mo(tmp_path / "u8.mo", [HEADER, (b"coffee", b"caf\xe9"), (b"tea", b"t\xc3\xa8")])
    counts = rc.Counts()
    assert rc.catalog_pairs(broken, counts) == [("tea", "tè")]
    assert counts.undecodable == 1

    template = write_mo(tmp_path / "t.mo", [(b"", b"Content-Type: text/plain; charset=CHARSET\n"), (b"a", b"\xc3\xa0")])
    assert rc.catalog_pairs(template, rc.Counts()) == [("a", "à")]


def test_line_separators_inside_text_do_not_split_lines():
    line = rc.jsonl_line({"id": "0", "translation": {"en": "a\u2028b\x85c\nd", "it": "x"}})
    assert len(line.splitlines()) == 1 and json.loads(line)["translation"]["en"] == "a\u2028b\x85c\nd"


def test_plural_with_a_single_form_keeps_the_singular_only():
    assert rc.entry_pairs(b"ctx\x04%d day\x00%d days", b"%d hari") == [(b"%d day", b"%d hari")]
    assert rc.entry_pairs(b"%d day\x00%d days", b"%d dan\x00%d dana\x00%d dana") == [
        (b"%d day", b"%d dan"), (b"%d days", b"%d dana")]


def test_cli_on_a_locale_tree(tmp_path):
    locale = tmp_path / "locale"
    for lang, name in (("it", "demo.mo"), ("it", "another.mo"), ("de", "demo.mo")):
        (locale / lang / "LC_MESSAGES").mkdir(parents=True, exist_ok=True)
        write_mo(locale / lang / "LC_MESSAGES" / name, ENTRIES)
    (locale / "fr" / "LC_MESSAGES").mkdir(parents=True)  # a language without catalogs
    cli = [sys.executable, os.path.join(ROOT, "real_corpora.py"), "--locale_dir", str(locale), "--out",
           str(tmp_path / "c")]

    done = subprocess.run(cli + ["--langs", "it,de"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    it, de = tmp_path / "c" / "system-en-it" / "train.jsonl", tmp_path / "c" / "system-en-de" / "train.jsonl"
    assert f"{it}: 12 pairs" in done.stdout and f"{de}: 6 pairs" in done.stdout
    assert sorted(p.name for p in it.parent.iterdir()) == ["train.jsonl"]
    assert {tuple(ex["translation"].values()) for ex in read_jsonl(de)} == set(EXPECTED_PAIRS)
    assert read_jsonl(de)[0]["translation"].keys() == {"en", "de"}

    failed = subprocess.run(cli + ["--langs", "it,fr"], capture_output=True, text=True, timeout=60)
    assert failed.returncode != 0
    assert failed.stderr.strip().count("\n") == 0 and "no .mo catalogs for language 'fr'" in failed.stderr


def test_a_sample_of_the_corpus_is_drawn_at_random_the_same_way_every_time(tmp_path):
    full = tmp_path / "full.jsonl"
    full.write_text("".join(f'{{"id": "{i}", "translation": {{"en": "e{i}", "it": "i{i}"}}}}\n' for i in range(100)))
    assert rc.write_sample(full, 30, tmp_path / "a" / "train.jsonl") == 30
    assert rc.write_sample(full, 30, tmp_path / "b" / "train.jsonl") == 30
    sample = (tmp_path / "a" / "train.jsonl").read_text().splitlines()
    assert sample == (tmp_path / "b" / "train.jsonl").read_text().splitlines()
    ids = [int(json.loads(line)["id"]) for line in sample]
    assert len(set(ids)) == 30 and ids != sorted(ids)  # distinct lines, in a shuffled order
    assert rc.write_sample(full, 500, tmp_path / "c" / "train.jsonl") == 100


PAGE = """<page xmlns="http://projectmallard.org/1.0/" id="{id}">
  <info><credit><name>A. Writer</name></credit><desc>{desc}</desc></info>
  <title>{title}</title>
  <p>{p1}</p>
  <steps><item><p>{p2}</p></item></steps>
  <code>ls -l</code>
</page>
"""


def help_page(root: Path, lang: str, doc: str, name: str, **texts) -> None:
    folder = root / "usr" / "share" / "help" / lang / doc
    folder.mkdir(parents=True, exist_ok=True)
    body = PAGE.format(id=name, **texts)
    if texts.get("extra"):
        body = body.replace("</page>", f"<p>{texts['extra']}</p></page>")
    (folder / f"{name}.page").write_text(body, encoding="utf-8")


def test_help_pages_align_by_structure_then_by_sentence_and_hold_out_whole_pages(tmp_path, capsys):
    english = dict(desc="Pair devices.", title="Connect a device",
                   p1="Open the <gui>Settings</gui> panel. Then click <em>Add</em>.", p2="Wait a moment, please.")
    german = dict(desc="Geräte koppeln.", title="Ein Gerät verbinden",
                  p1="Öffnen Sie die <gui>Einstellungen</gui>. Klicken Sie dann auf <em>Hinzufügen</em>.",
                  p2="Warten Sie bitte einen Moment, bis das Gerät erscheint. Das dauert.")
    package = tmp_path / "cache" / "gnome-user-docs"
    pages = ("a", "b", "c", "d", "p33", "p46")  # p33's name sends it to validation, p46's to test
    for page in pages:
        for lang, texts in (("C", english), ("de", german)):  # pages differ but for their paragraph p1
            help_page(package, lang, "gnome-help", page, **{k: v if k == "p1" else f"[{page}] {v}"
                                                            for k, v in texts.items()})
    help_page(package, "C", "gnome-help", "misaligned", **english, extra="One more paragraph.")
    help_page(package, "de", "gnome-help", "misaligned", **german)
    help_page(package, "C", "gnome-help", "untranslated", **english)
    help_page(package, "de", "gnome-help", "untranslated", **{**german, "title": english["title"]})
    counts = rc.write_help_corpus([package / "usr" / "share" / "help"], "de", tmp_path / "out")
    pairs = {split: [tuple(ex["translation"].values()) for ex in read_jsonl(tmp_path / "out" / f"{split}.jsonl")]
             for split in ("train", "validation", "test")}
    everything = [pair for split in pairs.values() for pair in split]
    assert ("Open the Settings panel.", "Öffnen Sie die Einstellungen.") in everything  # markup kept as text
    assert ("Then click Add.", "Klicken Sie dann auf Hinzufügen.") in everything  # sentence by sentence
    assert ("[a] Wait a moment, please.", "[a] Warten Sie bitte einen Moment, bis das Gerät erscheint. Das dauert.") \
        in everything  # one sentence against two: the paragraph whole
    assert not [pair for pair in everything if "ls -l" in pair[0] or "Writer" in pair[0]]  # code and credits
    assert (counts.pages, counts.misaligned, counts.untranslated) == (8, 1, 1)
    assert counts.duplicates == 2 * 7 - 2  # p1's two sentences on every page with p1 after the first (7 pages)
    assert len(everything) == len(set(everything))
    page_of = {split: {en[1:en.index("]")] for en, _ in kept if en.startswith("[")} for split, kept in pairs.items()}
    assert page_of == {"train": {"a", "b", "c", "d"}, "validation": {"p33"}, "test": {"p46"}}  # whole pages held out
    assert all(rc.held_out_split(f"gnome-help/{page}.page") == split for split, names in page_of.items()
               for page in names)
    assert rc.held_out_split("gnome-help/a.page") == rc.held_out_split("gnome-help/a.page")
    with pytest.raises(rc.CorpusError, match="no help pages for language 'fr'"):
        rc.write_help_corpus([package / "usr" / "share" / "help"], "fr", tmp_path / "fr")
