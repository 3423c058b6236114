"""Tests for the corpus builder (real_corpora.py) from gettext catalogs and translated documentation, on .mo files
and pages written here in the packages' formats, offline."""
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


def write_and_read(documents, counts, lang: str, out: Path) -> dict[str, list[tuple[str, str]]]:
    """Writes an aligned corpus and reads its three splits back as (English, translation) pairs."""
    rc.write_aligned_corpus(documents, counts, lang, out)
    return {split: [(ex["translation"]["en"], ex["translation"][lang]) for ex in read_jsonl(out / f"{split}.jsonl")]
            for split in ("train", "validation", "test")}


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
    counts = rc.DocCounts()
    documents = rc.help_page_pairs([package / "usr" / "share" / "help"], "de", counts)
    pairs = write_and_read({"gnome-help": documents}, {"gnome-help": counts}, "de", tmp_path / "out")
    everything = [pair for split in pairs.values() for pair in split]
    assert ("Open the Settings panel.", "Öffnen Sie die Einstellungen.") in everything  # markup kept as text
    assert ("Then click Add.", "Klicken Sie dann auf Hinzufügen.") in everything  # sentence by sentence
    assert ("[a] Wait a moment, please.", "[a] Warten Sie bitte einen Moment, bis das Gerät erscheint. Das dauert.") \
        in everything  # one sentence against two: the paragraph whole
    assert not [pair for pair in everything if "ls -l" in pair[0] or "Writer" in pair[0]]  # code and credits
    assert (counts.documents, counts.misaligned, counts.untranslated) == (8, 1, 1)
    assert counts.duplicates == 2 * 7 - 2  # p1's two sentences on every page with p1 after the first (7 pages)
    assert len(everything) == len(set(everything))
    page_of = {split: {en[1:en.index("]")] for en, _ in kept if en.startswith("[")} for split, kept in pairs.items()}
    assert page_of == {"train": {"a", "b", "c", "d"}, "validation": {"p33"}, "test": {"p46"}}  # whole pages held out
    assert all(rc.held_out_split(f"gnome-help/{page}.page") == split for split, names in page_of.items()
               for page in names)
    assert rc.held_out_split("gnome-help/a.page") == rc.held_out_split("gnome-help/a.page")
    with pytest.raises(rc.CorpusError, match="no help pages for language 'fr'"):
        rc.help_page_pairs([package / "usr" / "share" / "help"], "fr", rc.DocCounts())


def test_html_blocks_keep_nested_blocks_apart_and_skip_what_is_not_read(tmp_path):
    page = tmp_path / "page.html"
    page.write_text('<html><head><title>T &amp; C</title><script>if (a < b) { show("<p>no</p>"); }</script></head>'
                    '<body><ul><li>Intro <p id="p1">Inner &amp; more</p> tail</li></ul><p>one<br>two<br/>three</p>'
                    '<p hidden="true">secret</p><pre class="screen">$ ls</pre><div class="bascode"><p>Sub</p></div>'
                    '<p>press <span class="switchinline"><span hidden="true" id="MAC1">Command</span>'
                    '<span hidden="true" id="default1">Ctrl</span></span>+Z<p>unclosed</body></html>', encoding="utf-8")
    assert rc.html_blocks(page) == [("title", None, "T & C"), ("li", None, "Intro tail"), ("p", "p1", "Inner & more"),
                                    ("p", None, "one two three"), ("p", None, "press Ctrl+Z"), ("p", None, "unclosed")]


LO_PAGE = """<!DOCTYPE html>
<html lang="{tag}" dir="ltr">
<head><meta http-equiv="Content-Type" content="text/html; charset=utf-8"><title>{title}</title>
<script type="text/javascript" src="help.js" defer></script></head>
<body><header><a class="logo" href="{tag}/text/shared/05/new_help.html"><p dir="auto">LibreOffice Help</p></a></header>
<div id="DisplayArea" itemprop="softwareHelp">
{body}
</div><div class="debug"><h3 dir="auto">Help content debug info:</h3><p dir="auto">This page is: x.xhp</p></div>
</body></html>
"""


def lo_page(package: Path, tag: str, relative: str, blocks: list[tuple[str, str, str]]) -> None:
    """A LibreOffice help page as libreoffice-help-<lang> installs it: (tag, id, inner HTML) per block."""
    page = package / "usr" / "share" / "libreoffice" / "help" / tag / relative
    page.parent.mkdir(parents=True, exist_ok=True)
    body = "\n".join(f'<{name} id="{block_id}" class="paragraph" dir="auto">{html}</{name}>'
                     for name, block_id, html in blocks)
    page.write_text(LO_PAGE.format(tag=tag, title=blocks[0][2], body=body), encoding="utf-8")


SWITCH = ('<span class="switchinline"><span hidden="true" id="MAC7" class="MAC">Command\n</span>'
          '<span hidden="true" id="default7">{}</span></span>')
LO_ENGLISH = [("h1", "hd_id1", '<a name="autocorr"></a>Turning off URL Recognition'),
              ("p", "par_id2", 'When you type, LibreOffice recognizes a <a href="x.html#url">URL</a>. '
                               'It replaces the word with a hyperlink.'),
              ("p", "par_id3", f"Press {SWITCH.format('Ctrl')}+Z to undo."),
              ("p", "par_id4", "x@x, mailto:x"),
              ("p", "par_id5", "Only in English."),
              ("p", "par_id8", "See also: tables."),
              ("p", "par_id8", "See also: charts.")]  # one id twice: a paragraph embedded from another page
LO_GERMAN = [("h1", "hd_id1", '<a name="autocorr"></a>Automatische URL-Erkennung ausschalten'),
             ("p", "par_id4", "x@x, mailto:x"),  # ids, not positions, pair the blocks
             ("p", "par_id2", 'Wenn Sie tippen, erkennt LibreOffice eine <a href="x.html#url">URL</a>. '
                              'Es ersetzt das Wort durch einen Hyperlink.'),
             ("p", "par_id3", f"Drücken Sie {SWITCH.format('Strg')}+Z zum Rückgängigmachen."),
             ("p", "par_id9", "Nur auf Deutsch."),
             ("p", "par_id8", "Siehe auch: Tabellen."),
             ("p", "par_id8", "Siehe auch: Diagramme.")]


def test_libreoffice_help_pairs_blocks_by_id(tmp_path):
    english, german = tmp_path / "libreoffice-help-en-us", tmp_path / "libreoffice-help-de"
    lo_page(english, "en-US", "text/shared/guide/autocorr_url.html", LO_ENGLISH)
    lo_page(german, "de", "text/shared/guide/autocorr_url.html", LO_GERMAN)
    lo_page(english, "en-US", "text/swriter/01/only_english.html", [("h1", "hd_id1", "Not translated yet")])
    counts = rc.DocCounts()
    documents = rc.libreoffice_help_pairs(rc.libreoffice_help_root(english), rc.libreoffice_help_root(german), counts)
    assert documents == {"text/shared/guide/autocorr_url.html": [
        ("Turning off URL Recognition", "Automatische URL-Erkennung ausschalten"),
        ("When you type, LibreOffice recognizes a URL.", "Wenn Sie tippen, erkennt LibreOffice eine URL."),
        ("It replaces the word with a hyperlink.", "Es ersetzt das Wort durch einen Hyperlink."),
        ("Press Ctrl+Z to undo.", "Drücken Sie Strg+Z zum Rückgängigmachen."),  # the default key, not macOS's
        ("x@x, mailto:x", "x@x, mailto:x"),
        ("See also: tables.", "Siehe auch: Tabellen."),
        ("See also: charts.", "Siehe auch: Diagramme.")]}
    assert (counts.documents, counts.blocks, counts.unmatched, counts.sentence_split) == (1, 6, 1, 1)
    with pytest.raises(rc.CorpusError, match="expected one"):
        rc.libreoffice_help_root(tmp_path / "libreoffice-help-fr")


def book_page(path: Path, title: str, sections: list[list[str]]) -> None:
    """A chapter as DocBook's XHTML writes it: a title and an introduction, then sections, each a second-level
    heading followed by paragraphs, a screen of commands and a table of package names."""
    body = "".join(f'<div class="section"><div class="titlepage"><h2 class="title"><a id="_s{n}"></a>{heading}</h2>'
                   f'</div>{"".join(f"<p>{text}</p>" for text in texts)}<pre class="screen">$ ls -l</pre>'
                   f'<table><tr><td><code class="literal">apt</code></td><td>V:123</td></tr></table></div>'
                   for n, (heading, *texts) in enumerate(sections))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'<?xml version="1.0" encoding="UTF-8"?>\n<html xmlns="http://www.w3.org/1999/xhtml"><head>'
                    f'<title>{title}</title></head><body><div class="chapter"><h1>{title}</h1>{body}</div>'
                    f'</body></html>', encoding="utf-8")


def test_a_book_aligns_section_by_section_and_its_sections_are_the_documents(tmp_path):
    book = rc.HtmlBook("demo-reference", "demo-reference-en", "usr/share/demo", "demo-reference-",
                       "usr/share/demo/{lang}", single_page="demo-reference")
    english, german = tmp_path / "demo-reference-en/usr/share/demo", tmp_path / "demo-reference-de/usr/share/demo/de"
    book_page(english / "ch01.en.html", "Basics", [
        ["1.1. Login", "Log in as <code>root</code>. Then type a command.", "Use sudo<br/>instead."],
        ["1.2. Files", "Files live in folders."]])
    book_page(german / "ch01.de.html", "Grundlagen", [
        ["1.1. Anmelden", "Melden Sie sich als <code>root</code> an. Geben Sie dann einen Befehl ein.",
         "Nutzen Sie stattdessen sudo."],
        ["1.2. Dateien", "Dateien liegen in Ordnern.", "Ein Absatz mehr."]])  # this section only is misaligned
    (english / "ch01.html").symlink_to("ch01.en.html")  # an alias, read once
    book_page(english / "ch02.en.html", "Chapter 2. Packages", [["2.1. Tools", "Use apt."], ["2.2. More", "More."]])
    book_page(german / "ch02.de.html", "Kapitel 2. Pakete", [["2.1. Werkzeuge", "Nutzen Sie apt. Und mehr."]])
    book_page(english / "ch03.en.html", "Chapter 3. Untranslated", [["3.1. Later", "Later."]])
    for folder, title in ((english, "The whole book"), (german, "Das ganze Buch")):
        book_page(folder / "demo-reference.html", title, [["1.1. Again", "A copy of the chapters."]])
    counts = rc.DocCounts()
    documents = book.documents(tmp_path, "de", counts)
    assert documents == {
        "demo-reference/ch01#0": [("Basics", "Grundlagen"),
                                  ("Basics", "Grundlagen")],  # <title>, then <h1>
        "demo-reference/ch01#1": [("1.1. Login", "1.1. Anmelden"), ("Log in as root.", "Melden Sie sich als root an."),
                                  ("Then type a command.", "Geben Sie dann einen Befehl ein."),
                                  ("Use sudo instead.", "Nutzen Sie stattdessen sudo."),
                                  ("apt", "apt"), ("V:123", "V:123")]}
    assert (counts.documents, counts.misaligned) == (3 + 3, 1 + 3)  # ch01's last section; ch02 whole (3 sections)
    with pytest.raises(rc.CorpusError, match="no translated pages"):
        rc.book_pairs(book, english, tmp_path / "none", rc.DocCounts())


def test_united_sources_drop_copies_symbols_and_duplicates_and_hold_out_whole_documents(tmp_path):
    manual = {f"text/page{i}.html": [(f"Open page {i}.", f"Öffnen Sie Seite {i}."),
                                     ("Close it.", "Schließen Sie sie."),
                                     (f"Page {i} is done.", f"Seite {i} ist fertig.")] for i in range(100)}
    book = {"book/ch01#0": [("Close it.", "Schließen Sie sie."),   # a duplicate across sources
                            ("Close it.", "Mach sie zu."),         # the same English, translated otherwise: kept
                            ("Debian", "Debian"),                  # untranslated
                            ("© 2024", "© 2024-2025"),             # no letter, symbols and numbers only
                            ("1.2.3", "1.2.3"),                    # untranslated comes first
                            ("Read it.", "Lies es.")]}
    counts = {"manual": rc.DocCounts(), "book": rc.DocCounts()}
    pairs = write_and_read({"manual": manual, "book": book}, counts, "de", tmp_path / "out")
    assert (counts["manual"].duplicates, counts["manual"].untranslated, counts["manual"].no_text) == (99, 0, 0)
    assert (counts["book"].duplicates, counts["book"].untranslated, counts["book"].no_text) == (1, 2, 1)
    assert sum(counts["manual"].splits.values()) == 201 and sum(counts["book"].splits.values()) == 2
    assert {split: len(kept) for split, kept in pairs.items()} == {
        split: counts["manual"].splits[split] + counts["book"].splits[split] for split in pairs}
    everything = [pair for kept in pairs.values() for pair in kept]
    assert len(everything) == len(set(everything)) == 203
    split_of = {pair: split for split, kept in pairs.items() for pair in kept}
    for i in range(100):  # both pairs proper to a page in the page's split
        page_split = rc.held_out_split(f"text/page{i}.html")
        assert split_of[(f"Open page {i}.", f"Öffnen Sie Seite {i}.")] == page_split
        assert split_of[(f"Page {i} is done.", f"Seite {i} ist fertig.")] == page_split
    assert split_of[("Close it.", "Schließen Sie sie.")] == rc.held_out_split("text/page0.html")  # where first seen
    held_out = {split: {document for document in manual if rc.held_out_split(document) == split}
                for split in ("validation", "test")}
    assert all(held_out.values()) and len(held_out["validation"]) + len(held_out["test"]) < 20
    for split in ("train", "validation", "test"):
        lines = read_jsonl(tmp_path / "out" / f"{split}.jsonl")
        assert [ex["id"] for ex in lines] == [str(i) for i in range(len(lines))]
    assert "manual" not in counts["manual"].summary() and "train" in counts["manual"].summary()


def test_cli_unites_documentation_sources_from_the_package_cache(tmp_path):
    cache = tmp_path / "cache"
    lo_page(cache / "libreoffice-help-en-us", "en-US", "text/shared/guide/autocorr_url.html", LO_ENGLISH)
    lo_page(cache / "libreoffice-help-de", "de", "text/shared/guide/autocorr_url.html", LO_GERMAN)
    book_page(cache / "debian-reference-en/usr/share/debian-reference/ch01.en.html", "Basics",
              [["1.1. Login", "Log in as root."]])
    book_page(cache / "debian-reference-de/usr/share/debian-reference/ch01.de.html", "Grundlagen",
              [["1.1. Anmelden", "Melden Sie sich als root an."]])
    cli = [sys.executable, os.path.join(ROOT, "real_corpora.py"), "--cache_dir", str(cache), "--out",
           str(tmp_path / "c"), "--langs", "de"]
    done = subprocess.run(cli + ["--source", "libreoffice-help,debian-reference"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "c" / "libreoffice-help+debian-reference-en-de"
    assert sorted(p.name for p in out.iterdir()) == ["test.jsonl", "train.jsonl", "validation.jsonl"]
    total = sum(len(read_jsonl(out / f"{split}.jsonl")) for split in ("train", "validation", "test"))
    assert total == 6 + 3  # LibreOffice: 7 pairs less one copy; the reference: title, heading, paragraph
    assert done.stdout.splitlines()[0].startswith(f"{out}: train ")
    assert [line.split(":")[0] for line in done.stdout.splitlines()[1:]] == ["  libreoffice-help", "  debian-reference"]

    failed = subprocess.run(cli + ["--source", "gnome-help,system"], capture_output=True, text=True, timeout=60)
    assert failed.returncode != 0 and "--source" in failed.stderr
    args = rc.parse_args(["--source", "docs", "--langs", "de"])
    assert (args.sources, args.name) == (list(rc.DOC_SOURCES), "docs")
    assert rc.parse_args(["--source", "libreoffice", "--langs", "de"]).name == "libreoffice"
    for wrong in ("gnome-help,gnome-help", "docs,gnome-help", "system,libreoffice", "books"):
        with pytest.raises(SystemExit):
            rc.parse_args(["--source", wrong, "--langs", "de"])
