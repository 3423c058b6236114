"""Real English->X parallel corpora rebuilt offline from software localization catalogs (gettext .mo files) and from
translated documentation (GNOME's and LibreOffice's help, Debian's manuals).

Every translated program ships its user-visible strings as compiled gettext catalogs: English source text
(the msgid) next to a human translation (the msgstr).  This script turns those catalogs into corpora in the
opus_books JSONL schema that train.py reads with --data_files, one example per line:

    {"id": "17", "translation": {"en": "cannot open %s", "it": "impossibile aprire %s"}}

Two catalog sources:

  system       the catalogs this machine already holds under /usr/share/locale/<lang>/LC_MESSAGES/*.mo
               (coreutils, apt, bash, binutils, ...): terse command-line messages.
  libreoffice  Debian's libreoffice-l10n-<lang> package, fetched with `apt-get download` into a cache folder
               and unpacked with `dpkg-deb -x`: office UI strings, a different domain (run `apt-get update`
               once beforehand; later runs reuse the cache and need no network).

Documentation sources, natural descriptive sentences, fetched the same way. A translated page keeps the English
page's structure, so its text blocks (paragraphs, titles, table cells) align one to one with the English ones, by
position or, where the pages have them, by paragraph id; blocks that split into the same number of sentences on both
sides give one pair per sentence:

  gnome-help        gnome-user-docs (the GNOME desktop help and system administration guide) and the help of
                    GNOME applications: Mallard pages under usr/share/help/<lang>/.
  libreoffice-help  libreoffice-help-en-us and libreoffice-help-<lang>: HTML pages with the same paragraph ids.
  debian-reference, debian-faq, maint-guide, developers-reference
                    Debian's manuals, in debian-reference-en (or the English package) and -<lang>: a page per chapter.

Validation and test pairs are held out by document (a page, or a section of a manual's chapter: about a twentieth
of them each), written to validation.jsonl and test.jsonl beside train.jsonl. Untranslated pairs, pairs without a
letter and duplicates are dropped. `--source` takes one of them, a comma-separated list or `docs` (all of them),
united in one corpus: `python train.py --dataset corpora/docs-en-de --lang_tgt de`.

    python real_corpora.py --langs it,de,fr,es --out corpora              # -> corpora/system-en-it/train.jsonl ...
    python real_corpora.py --source libreoffice --langs de --out corpora  # -> corpora/libreoffice-en-de/train.jsonl
    python real_corpora.py --langs de --max_pairs 27000 --out corpora     # also corpora/system-en-de-27000/
    python real_corpora.py --source gnome-help --langs de,it --out corpora  # -> corpora/gnome-help-en-de/...
    python real_corpora.py --source docs --langs de,it --out corpora      # -> corpora/docs-en-de/...
    python train.py --data_files corpora/system-en-it/train.jsonl --lang_tgt it ...

Each catalog corpus folder holds only train.jsonl: the trainer holds out validation and test pairs itself.  Text is kept
exactly as the catalogs have it (placeholders such as %s or {0}, newlines, LibreOffice's ~ and _ mnemonics,
untranslated copies, duplicates across programs): cleaning is the trainer's loader's job.  The output depends
only on the packages: files in name order, entries in catalog or document order, ids running from 0.
"""
import argparse
import codecs
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import zlib
from collections import Counter
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

MO_MAGIC = 0x950412DE
CONTEXT_SEPARATOR = b"\x04"  # msgctxt EOT msgid
PLURAL_SEPARATOR = b"\x00"   # msgid NUL msgid_plural, and msgstr[0] NUL msgstr[1] ...
DEFAULT_CHARSET = "utf-8"
SYSTEM_LOCALE_DIR = "/usr/share/locale"
LIBREOFFICE_RESOURCES = "usr/lib/libreoffice/program/resource"
DEFAULT_CACHE_DIR = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "real_corpora")


class CorpusError(Exception):
    """A problem the user can fix (missing catalogs, failed download, broken file); main() turns it into one line."""


@dataclass
class Counts:
    catalogs: int = 0
    aliases: int = 0       # catalogs skipped as another name of one already read (iso_639.mo -> iso_639-2.mo)
    entries: int = 0       # catalog entries with a source text (the header is not one)
    plural: int = 0        # of which plural entries (each gives up to two pairs)
    empty: int = 0         # skipped: no translation
    undecodable: int = 0   # skipped: not valid in the catalog's charset
    pairs: int = 0
    copies: int = 0        # pairs whose translation equals the English (kept; reported because they teach copying)

    def summary(self) -> str:
        return (f"{self.pairs} pairs from {self.entries} entries in {self.catalogs} catalogs "
                f"({self.aliases} symlinked aliases skipped; {self.plural} plural entries; "
                f"skipped {self.empty} empty and {self.undecodable} undecodable; "
                f"{self.copies} pairs identical to the English)")


# ------------------------------------------------------------------------------------------- .mo parsing

def read_mo(path) -> list[tuple[bytes, bytes]]:
    """The raw (msgid, msgstr) byte strings of a .mo file, in table order (msgfmt sorts them by msgid).

    Format (GNU gettext manual, "The Format of GNU MO Files"): a magic number that also gives the byte order,
    a revision, the entry count N, the offsets of two tables of N (length, offset) pairs for the originals and
    the translations, then a hash table this reader does not need.
    """
    data = Path(path).read_bytes()
    if len(data) < 20:
        raise CorpusError(f"{path}: too short for a .mo file")
    for order in "<>":
        magic, revision, count, originals, translations = struct.unpack(order + "5I", data[:20])
        if magic == MO_MAGIC:
            break
    else:
        raise CorpusError(f"{path}: not a .mo file (bad magic number)")
    if revision >> 16 not in (0, 1):
        raise CorpusError(f"{path}: unsupported .mo revision {revision >> 16}")

    def string(table: int, i: int) -> bytes:
        length, offset = struct.unpack_from(order + "2I", data, table + 8 * i)
        if offset + length > len(data):
            raise struct.error("string past the end of the file")
        return data[offset:offset + length]

    try:
        return [(string(originals, i), string(translations, i)) for i in range(count)]
    except struct.error as e:
        raise CorpusError(f"{path}: truncated or corrupt .mo file ({e})") from None


def catalog_charset(entries: list[tuple[bytes, bytes]]) -> str:
    """The charset named in the header entry (the msgstr of the empty msgid), or UTF-8 if none or unknown.

    An uncompiled template says "charset=CHARSET", hence the fallback rather than an error.
    """
    header = next((msgstr for msgid, msgstr in entries if msgid == b""), b"")
    match = re.search(rb"charset=\s*([^\s;]+)", header, re.IGNORECASE)
    if match:
        try:
            return codecs.lookup(match.group(1).decode("ascii")).name
        except (LookupError, UnicodeDecodeError):
            pass
    return DEFAULT_CHARSET


def entry_pairs(msgid: bytes, msgstr: bytes) -> list[tuple[bytes, bytes]]:
    """The (source, translation) pairs of one entry, context stripped: one, or two for a plural entry.

    A plural entry pairs the singular with msgstr[0] and the plural with msgstr[1]; languages with a single
    plural form have no msgstr[1], and further forms (Slavic languages' "few") have no English counterpart.
    """
    msgid = msgid.rpartition(CONTEXT_SEPARATOR)[2]
    sources = msgid.split(PLURAL_SEPARATOR)[:2]
    targets = msgstr.split(PLURAL_SEPARATOR)
    return [(source, target) for source, target in zip(sources, targets) if target]


def catalog_pairs(path, counts: Counts) -> list[tuple[str, str]]:
    """The (English, translation) text pairs of one .mo file, in catalog order; adds what it saw to counts."""
    entries = read_mo(path)
    charset = catalog_charset(entries)
    counts.catalogs += 1
    pairs = []
    for msgid, msgstr in entries:
        if not msgid.rpartition(CONTEXT_SEPARATOR)[2]:
            continue  # the header, metadata rather than text
        counts.entries += 1
        counts.plural += PLURAL_SEPARATOR in msgid
        raw = entry_pairs(msgid, msgstr)
        if not raw:
            counts.empty += 1
            continue
        try:
            decoded = [(source.decode(charset), target.decode(charset)) for source, target in raw]
        except UnicodeDecodeError:
            counts.undecodable += 1
            continue
        counts.copies += sum(source == target for source, target in decoded)
        pairs.extend(decoded)
    counts.pairs += len(pairs)
    return pairs


# ------------------------------------------------------------------------------------------------ output

def jsonl_line(example: dict) -> str:
    # JSON allows U+2028/U+2029/U+0085 raw, but Python's str.splitlines() breaks lines there: escape them.
    line = json.dumps(example, ensure_ascii=False)
    return line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\x85", "\\u0085") + "\n"


def write_corpus(catalogs: list[Path], lang: str, out_file: Path) -> Counts:
    """Writes the pairs of all catalogs (in the given order) as opus_books JSONL; returns the counts.

    A catalog that is a symlink to one already read is skipped: iso-codes installs compatibility names such as
    iso_639_3.mo -> iso_639-3.mo, and reading both would put ~10k pairs twice into the corpus (and so, after the
    trainer's random hold-out, into both training and test data).
    """
    counts = Counts()
    seen = set()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    partial = out_file.with_name(out_file.name + ".partial")  # a crash never leaves a truncated train.jsonl
    next_id = 0
    try:
        with open(partial, "w", encoding="utf-8", newline="\n") as f:
            for path in catalogs:
                target = Path(path).resolve()
                if target in seen:
                    counts.aliases += 1
                    continue
                seen.add(target)
                for english, translation in catalog_pairs(path, counts):
                    example = {"id": str(next_id), "translation": {"en": english, lang: translation}}
                    f.write(jsonl_line(example))
                    next_id += 1
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, out_file)
    return counts


SAMPLE_SEED = 1


def write_sample(full_file: Path, max_pairs: int, out_file: Path) -> int:
    """A corpus of `max_pairs` pairs drawn at random (a fixed seed) from `full_file`, for measuring at the size of a
    user's corpus; returns the number written. Lines are kept as they are, ids included."""
    with open(full_file, encoding="utf-8", newline="\n") as f:
        lines = f.readlines()
    random.Random(SAMPLE_SEED).shuffle(lines)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with open(out_file, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(lines[:max_pairs])
    return min(max_pairs, len(lines))


# ------------------------------------------------------------------------------------------------ sources

def mo_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.mo"), key=lambda p: p.name) if directory.is_dir() else []


def system_catalogs(lang: str, locale_dir) -> list[Path]:
    directory = Path(locale_dir) / lang / "LC_MESSAGES"
    catalogs = mo_files(directory)
    if not catalogs:
        raise CorpusError(f"no .mo catalogs for language {lang!r}: {directory}/*.mo matches nothing")
    return catalogs


def debian_package(prefix: str, lang: str) -> str:
    # Debian names these packages in lower case with dashes: pt_BR -> libreoffice-l10n-pt-br.
    return prefix + lang.lower().replace("_", "-")


def libreoffice_catalogs(lang: str, cache_dir) -> list[Path]:
    """The .mo files of libreoffice-l10n-<lang>, downloaded and unpacked into cache_dir unless already there."""
    package = debian_package("libreoffice-l10n-", lang)
    unpacked = unpacked_package(package, cache_dir)
    # One resource/<tag>/ folder per package; its tag (de, pt-BR, ...) need not match the package name.
    catalogs = sorted(unpacked.glob(f"{LIBREOFFICE_RESOURCES}/*/LC_MESSAGES/*.mo"), key=lambda p: (p.name, str(p)))
    if not catalogs:
        raise CorpusError(f"{package} holds no .mo catalogs under {LIBREOFFICE_RESOURCES}/ (unpacked in {unpacked})")
    return catalogs


def unpacked_package(package: str, cache_dir) -> Path:
    """The folder of cache_dir that holds the package's files, downloaded and unpacked there unless already done."""
    unpacked = Path(cache_dir) / package
    if not unpacked.is_dir():
        download_and_unpack(package, unpacked)
    return unpacked


def download_and_unpack(package: str, target: Path) -> None:
    downloads = target.parent / "debs"
    downloads.mkdir(parents=True, exist_ok=True)
    run(["apt-get", "download", package], cwd=downloads,
        what=f"apt-get download {package} failed (unknown package, or run `apt-get update` first?)")
    # Newest first: the cache may also hold an older download after a package update.
    debs = sorted(downloads.glob(f"{package}_*.deb"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not debs:
        raise CorpusError(f"apt-get download {package} left no {package}_*.deb in {downloads}")
    partial = target.with_name(target.name + ".partial")  # only a complete unpack counts as cached
    shutil.rmtree(partial, ignore_errors=True)
    run(["dpkg-deb", "-x", str(debs[0]), str(partial)], cwd=downloads, what=f"dpkg-deb -x {debs[0]} failed")
    os.replace(partial, target)


def run(command: list[str], cwd: Path, what: str) -> None:
    """Runs a command quietly; on failure, a CorpusError with the last error line it printed."""
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise CorpusError(f"{what}: {command[0]} is not installed") from None
    if result.returncode != 0:
        lines = (result.stderr + result.stdout).strip().splitlines()
        errors = [line for line in lines if line.startswith("E:")] or lines  # apt's warnings are noise here
        raise CorpusError(f"{what}: {errors[-1] if errors else f'exit status {result.returncode}'}")


# ------------------------------------------------------------------------------------------------ aligned documents

Pairs = list[tuple[str, str]]
HELD_OUT_DOCUMENTS = 20  # one document in twenty goes to validation, one to test
# Not after a section number: "2.1. Packages" and "Table 1.12. Tools" are one sentence each.
SENTENCE_END = re.compile(r"(?<=[.!?])(?<!\.\d\.)(?<!\.\d\d\.)\s+(?=[\"'“„«(\[]?[^\W\d_])")
LETTER = re.compile(r"[^\W\d_]")


@dataclass
class DocCounts:
    documents: int = 0        # English documents (pages, sections) with a counterpart in the language
    misaligned: int = 0       # of which skipped: a different number of text blocks on the two sides
    unmatched: int = 0        # English blocks whose id the translated page lacks (where blocks align by id)
    blocks: int = 0           # aligned text blocks (paragraphs, titles, table cells) with text on a side
    sentence_split: int = 0   # blocks that split into as many sentences on both sides, one pair per sentence
    untranslated: int = 0     # dropped: the translation equals the English
    no_text: int = 0          # dropped: a side without a letter (markup, numbers, symbols only)
    duplicates: int = 0       # dropped: a pair seen before, in this source or an earlier one
    splits: dict | None = None

    def summary(self) -> str:
        kept = ", ".join(f"{name} {count}" for name, count in (self.splits or {}).items())
        unmatched = f", {self.unmatched} blocks without a counterpart" if self.unmatched else ""
        return (f"{kept} pairs from {self.blocks} aligned blocks of {self.documents - self.misaligned} documents "
                f"({self.misaligned} of {self.documents} documents skipped as misaligned{unmatched}; "
                f"{self.sentence_split} blocks split into sentences; dropped {self.untranslated} untranslated, "
                f"{self.no_text} without text, {self.duplicates} duplicates)")


def block_pairs(english: str, translation: str) -> Pairs:
    """One pair per sentence when both sides split into the same number of sentences, else the block whole."""
    sources, targets = SENTENCE_END.split(english), SENTENCE_END.split(translation)
    return list(zip(sources, targets)) if len(sources) == len(targets) > 1 else [(english, translation)]


def sentence_pairs(blocks: Pairs, counts: DocCounts) -> Pairs:
    """The pairs of aligned blocks, sentence by sentence where that aligns; blocks empty on both sides (layout
    cells) are not counted."""
    pairs = []
    for source, target in blocks:
        if source or target:
            split = block_pairs(source, target)
            counts.blocks += 1
            counts.sentence_split += len(split) > 1
            pairs.extend(split)
    return pairs


def aligned_in_order(english: list[str], translated: list[str], counts: DocCounts) -> Pairs | None:
    """The pairs of one document whose blocks align by position; None (counted as misaligned) when the two sides
    have different numbers of blocks, since a single added or missing block shifts every later pair."""
    counts.documents += 1
    if len(english) != len(translated):
        counts.misaligned += 1
        return None
    return sentence_pairs(list(zip(english, translated)), counts)


def held_out_split(document: str) -> str:
    """The split a document's pairs go to, from its name alone: the same on every run and for every language."""
    bucket = zlib.crc32(document.encode()) % HELD_OUT_DOCUMENTS
    return "validation" if bucket == 0 else "test" if bucket == 1 else "train"


def kept(pair: tuple[str, str], seen: set, counts: DocCounts) -> bool:
    """Whether a pair teaches translation: translated, with words on both sides, and new; counts the others."""
    if pair[0] == pair[1]:
        counts.untranslated += 1
    elif not all(LETTER.search(side) for side in pair):
        counts.no_text += 1
    elif pair in seen:
        counts.duplicates += 1
    else:
        seen.add(pair)
        return True
    return False


def write_aligned_corpus(documents: dict[str, dict[str, Pairs]], counts: dict[str, DocCounts], lang: str,
                         out: Path) -> None:
    """train.jsonl, validation.jsonl and test.jsonl of {source: {document: pairs}}, held out by document; sets
    every source's counts.splits.

    A pair is kept only the first time it is seen, in source and document order, so none lands in two splits."""
    seen = set()
    splits = {"train": [], "validation": [], "test": []}
    for source, source_documents in documents.items():
        counts[source].splits = dict.fromkeys(splits, 0)
        for document, pairs in source_documents.items():
            split = held_out_split(document)
            for pair in pairs:
                if kept(pair, seen, counts[source]):
                    splits[split].append(pair)
                    counts[source].splits[split] += 1
    out.mkdir(parents=True, exist_ok=True)
    for split, pairs in splits.items():
        lines = [jsonl_line({"id": str(i), "translation": {"en": en, lang: text}})
                 for i, (en, text) in enumerate(pairs)]
        partial = out / f"{split}.jsonl.partial"  # a crash never leaves a truncated split
        partial.write_text("".join(lines), encoding="utf-8")
        os.replace(partial, out / f"{split}.jsonl")


# ------------------------------------------------------------------------------------------------ GNOME help

# The desktop help and admin guide, then the applications that ship their help translated into German or Italian.
GNOME_HELP_PACKAGES = ("gnome-user-docs", "baobab", "brasero-common", "cheese-common", "eog", "evince-common",
                       "file-roller", "gedit-common", "gnome-boxes", "gnome-calculator", "gnome-clocks",
                       "gnome-dictionary", "gnome-logs", "gnome-music", "gnome-system-monitor", "gnome-terminal-data",
                       "seahorse", "simple-scan", "totem-common", "zenity-common", "polari", "gnome-chess",
                       "gnome-mahjongg", "gnome-mines", "gnome-sudoku", "iagno", "aisleriot", "swell-foop",
                       "gnome-tetravex", "five-or-more", "four-in-a-row", "gnome-robots", "hitori", "lightsoff",
                       "quadrapassel")
HELP_DIR = "usr/share/help"
MALLARD_TEXT_BLOCKS = {"p", "title", "desc", "subtitle"}  # what a reader reads; code, screens and credits are not


def gnome_help_documents(cache_dir, lang: str, counts: DocCounts) -> dict[str, Pairs]:
    roots = [unpacked_package(package, cache_dir) / HELP_DIR for package in GNOME_HELP_PACKAGES]
    return help_page_pairs(roots, lang, counts)


def page_blocks(path: Path) -> list[str]:
    """The text of every paragraph, title and description of a Mallard page, in document order, with inline
    markup (<gui>, <em>, <link>) kept as its text and white space collapsed."""
    import xml.etree.ElementTree as ElementTree

    blocks = []
    for element in ElementTree.parse(path).iter():
        if element.tag.rsplit("}", 1)[-1] in MALLARD_TEXT_BLOCKS:
            blocks.append(" ".join("".join(element.itertext()).split()))
    return blocks


def help_page_pairs(help_roots: list[Path], lang: str, counts: DocCounts) -> dict[str, Pairs]:
    """{document/page.page: aligned pairs} for every English Mallard page (under <root>/C/) that has a page in the
    language; a translated page keeps the English structure, so blocks align by position."""
    if not any((root / lang).is_dir() for root in help_roots):
        raise CorpusError(f"no help pages for language {lang!r} in {', '.join(map(str, help_roots))}")
    documents = {}
    for help_root in help_roots:
        for english_page in sorted((help_root / "C").glob("*/*.page")):
            relative = english_page.relative_to(help_root / "C")
            translated_page = help_root / lang / relative
            if translated_page.is_file():
                pairs = aligned_in_order(page_blocks(english_page), page_blocks(translated_page), counts)
                if pairs is not None:
                    documents[str(relative)] = pairs
    return documents


# ------------------------------------------------------------------------------------------------ HTML documentation

HTML_BLOCKS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "dt", "dd", "td", "th", "title", "caption"}
HTML_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
HTML_UNREAD = {"script", "style", "pre"}  # code listings and screen output are not prose to translate
UNREAD_CLASSES = {"bascode", "pycode", "sqlcode", "smathcode", "code", "codeintable", "debug", "programlisting",
                  "screen", "headerlink"}  # code, debug notes, and Sphinx's pilcrow after every heading


class HtmlBlocks(HTMLParser):
    """The text blocks of an HTML page in document order, as (tag, id, [text pieces]).

    A block's text leaves out the blocks nested in it (they are blocks of their own) and what a reader does not
    read as prose: scripts, code, and the variants of a text that a page hides."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.open: list[tuple[str, int | None, bool]] = []  # (tag, its block's index or None, unread: it or a parent)
        self.blocks: list[tuple[str, str | None, list[str]]] = []

    def handle_starttag(self, tag, attrs):
        if tag in HTML_VOID:
            if tag == "br":
                self.handle_data(" ")  # else the lines around a <br> would run together
            return
        attrs = dict(attrs)
        # LibreOffice's help hides every variant of a switch (macOS or not, Impress or Draw) and shows one by
        # script: the one whose id starts with "default" is what most readers see.
        hidden = "hidden" in attrs and not (attrs.get("id") or "").startswith("default")
        unread = (tag in HTML_UNREAD or hidden or bool(UNREAD_CLASSES & set((attrs.get("class") or "").split()))
                  or bool(self.open) and self.open[-1][2])
        index = None
        if tag in HTML_BLOCKS and not unread:
            index = len(self.blocks)
            self.blocks.append((tag, attrs.get("id"), []))
        self.open.append((tag, index, unread))

    def handle_startendtag(self, tag, attrs):
        if tag == "br":
            self.handle_data(" ")

    def handle_endtag(self, tag):
        # Closes the innermost open element of that name and, like a browser, whatever was left open inside it.
        for depth in range(len(self.open) - 1, -1, -1):
            if self.open[depth][0] == tag:
                del self.open[depth:]
                return

    def handle_data(self, data):
        if self.open and self.open[-1][2]:
            return
        index = next((index for _, index, _ in reversed(self.open) if index is not None), None)
        if index is not None:
            self.blocks[index][2].append(data)


def html_blocks(path: Path) -> list[tuple[str, str | None, str]]:
    """(tag, id, text) of every text block of an HTML page, white space collapsed."""
    parser = HtmlBlocks()
    parser.feed(Path(path).read_text(encoding="utf-8"))
    parser.close()
    return [(tag, block_id, " ".join("".join(pieces).split())) for tag, block_id, pieces in parser.blocks]


LIBREOFFICE_HELP = "usr/share/libreoffice/help"


def libreoffice_help_documents(cache_dir, lang: str, counts: DocCounts) -> dict[str, Pairs]:
    english = libreoffice_help_root(unpacked_package("libreoffice-help-en-us", cache_dir))
    translated = libreoffice_help_root(unpacked_package(debian_package("libreoffice-help-", lang), cache_dir))
    return libreoffice_help_pairs(english, translated, counts)


def libreoffice_help_root(unpacked: Path) -> Path:
    # One language folder per package, named by its tag (en-US, de, pt-BR), which need not match the package name.
    roots = sorted(text.parent for text in unpacked.glob(f"{LIBREOFFICE_HELP}/*/text"))
    if len(roots) != 1:
        raise CorpusError(f"{unpacked}: expected one {LIBREOFFICE_HELP}/<language>/text/ folder, found {len(roots)}")
    return roots[0]


def libreoffice_help_pairs(english_root: Path, translated_root: Path, counts: DocCounts) -> dict[str, Pairs]:
    """{text/.../page.html: aligned pairs} for every English page with a translated page of the same name.

    Blocks pair by id: the help is written as XML with an id on every paragraph and heading, and every language's
    pages keep the English ids, so a paragraph missing on one side costs only that paragraph."""
    documents = {}
    for english_page in sorted(english_root.glob("text/**/*.html")):
        relative = english_page.relative_to(english_root)
        translated_page = translated_root / relative
        if not translated_page.is_file():
            continue
        counts.documents += 1
        english, translated = keyed_blocks(english_page), dict(keyed_blocks(translated_page))
        blocks = [(text, translated[key]) for key, text in english if key in translated]
        counts.unmatched += len(english) - len(blocks)
        documents[str(relative)] = sentence_pairs(blocks, counts)
    return documents


def keyed_blocks(path: Path) -> list[tuple[tuple[str, int], str]]:
    """((id, occurrence), text) of every block of a page that has an id and text; an id recurs when a page embeds
    the same paragraph of another page twice."""
    occurrences = Counter()
    keyed = []
    for _, block_id, text in html_blocks(path):
        if block_id and text:
            keyed.append(((block_id, occurrences[block_id]), text))
            occurrences[block_id] += 1
    return keyed


SECTION_HEADING = "h2"  # DocBook and Sphinx give a chapter's sections (2.1, 2.2, ...) second-level headings


@dataclass(frozen=True)
class HtmlBook:
    """A manual of HTML pages, one per chapter, whose translations keep the English structure block for block."""
    name: str
    english_package: str
    english_dir: str
    package_prefix: str      # the translated package is this and the language: debian-reference-de
    translated_dir: str      # {lang}: the language
    single_page: str = ""    # the whole book on one page: a copy of the chapters, left out

    def documents(self, cache_dir, lang: str, counts: DocCounts) -> dict[str, Pairs]:
        english = unpacked_package(self.english_package, cache_dir) / self.english_dir
        translated = unpacked_package(debian_package(self.package_prefix, lang), cache_dir)
        return book_pairs(self, english, translated / self.translated_dir.format(lang=lang), counts)


# Debian's own manuals, written in English and translated with po4a or Sphinx's gettext, so the structure is kept.
HTML_BOOKS = (
    HtmlBook("debian-reference", "debian-reference-en", "usr/share/debian-reference", "debian-reference-",
             "usr/share/debian-reference"),
    HtmlBook("debian-faq", "debian-faq", "usr/share/doc/debian/FAQ", "debian-faq-", "usr/share/doc/debian/FAQ/{lang}"),
    HtmlBook("maint-guide", "maint-guide", "usr/share/doc/maint-guide/html", "maint-guide-",
             "usr/share/doc/maint-guide-{lang}/html"),
    HtmlBook("developers-reference", "developers-reference", "usr/share/developers-reference",
             "developers-reference-", "usr/share/developers-reference/{lang}", single_page="developers-reference"),
)


def book_pairs(book: HtmlBook, english_dir: Path, translated_dir: Path, counts: DocCounts) -> dict[str, Pairs]:
    """{book/chapter#n: aligned pairs} for the n-th section of every chapter with a translated page (ch02.en.html
    and ch02.de.html, or l10n.html in both folders); blocks align by position, section by section.

    A book has a dozen or so chapters: too few to hold out one in twenty, so its sections are the documents held
    out. Symlinked pages (basic-defs.html -> basic-defs.en.html) are aliases, read once."""
    def chapters(folder: Path) -> dict[str, Path]:
        pages = sorted(page for page in folder.glob("*.html") if not page.is_symlink())
        return {page.name.split(".")[0]: page for page in pages if page.name.split(".")[0] != book.single_page}

    if not translated_dir.is_dir():
        raise CorpusError(f"{book.name}: no translated pages in {translated_dir}")
    translated_pages = chapters(translated_dir)
    documents = {}
    for chapter, english_page in chapters(english_dir).items():
        if chapter not in translated_pages:
            continue
        english, translated = sections(english_page), sections(translated_pages[chapter])
        if len(english) != len(translated):
            counts.documents += len(english)
            counts.misaligned += len(english)
            continue
        for n, (source, target) in enumerate(zip(english, translated)):
            pairs = aligned_in_order(source, target, counts)
            if pairs is not None:
                documents[f"{book.name}/{chapter}#{n}"] = pairs
    return documents


def sections(page: Path) -> list[list[str]]:
    """The block texts of a page, cut before each section heading; what precedes the first is a section too."""
    cut = [[]]
    for tag, _, text in html_blocks(page):
        if tag == SECTION_HEADING and cut[-1]:
            cut.append([])
        cut[-1].append(text)
    return cut


DOC_SOURCES = {"gnome-help": gnome_help_documents, "libreoffice-help": libreoffice_help_documents,
               **{book.name: book.documents for book in HTML_BOOKS}}
CATALOG_SOURCES = ("system", "libreoffice")
ALL_DOCS = "docs"  # every documentation source in one corpus


# ------------------------------------------------------------------------------------------------ CLI

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Build English->X parallel corpora (opus_books JSONL) from gettext "
                                                 "localization catalogs and translated documentation.")
    parser.add_argument("--langs", required=True, help="comma-separated target languages, e.g. it,de,fr,es")
    parser.add_argument("--source", default="system",
                        help="system: the catalogs under --locale_dir; libreoffice: Debian's libreoffice-l10n-<lang>; "
                             "gnome-help, libreoffice-help, debian-reference: translated documentation aligned "
                             "paragraph by paragraph, one or a comma-separated list of them united in one corpus; "
                             f"{ALL_DOCS}: all three")
    parser.add_argument("--out", default="corpora", help="writes <out>/<source>-en-<lang>/train.jsonl")
    parser.add_argument("--locale_dir", default=SYSTEM_LOCALE_DIR, help="where --source system looks for catalogs")
    parser.add_argument("--cache_dir", default=DEFAULT_CACHE_DIR,
                        help="where the sources other than system keep downloaded and unpacked packages")
    parser.add_argument("--max_pairs", type=int, help="also write a random sample of this many pairs to "
                                                      "<out>/<source>-en-<lang>-<N>/ (system and libreoffice)")
    args = parser.parse_args(argv)
    if args.max_pairs is not None and args.max_pairs < 1:
        parser.error("--max_pairs: must be positive")
    args.langs = [lang.strip() for lang in args.langs.split(",") if lang.strip()]
    if not args.langs:
        parser.error("--langs: give at least one language")
    args.sources = [source.strip() for source in args.source.split(",") if source.strip()]
    args.sources = list(DOC_SOURCES) if args.sources == [ALL_DOCS] else args.sources
    if not (len(args.sources) == 1 and args.sources[0] in CATALOG_SOURCES or
            args.sources and set(args.sources) <= set(DOC_SOURCES) and len(set(args.sources)) == len(args.sources)):
        parser.error(f"--source: one of {', '.join(CATALOG_SOURCES)}, {ALL_DOCS}, or documentation sources among "
                     f"{', '.join(DOC_SOURCES)} (comma-separated, each once)")
    args.name = ALL_DOCS if args.source.strip() == ALL_DOCS else "+".join(args.sources)
    return args


def write_doc_corpora(args: argparse.Namespace) -> None:
    """One corpus per language uniting the documentation sources asked for; prints what each source gave."""
    for lang in args.langs:
        counts = {source: DocCounts() for source in args.sources}
        documents = {source: DOC_SOURCES[source](args.cache_dir, lang, counts[source]) for source in args.sources}
        out = Path(args.out) / f"{args.name}-en-{lang}"
        write_aligned_corpus(documents, counts, lang, out)
        totals = {split: sum(c.splits[split] for c in counts.values()) for split in ("train", "validation", "test")}
        print(f"{out}: " + ", ".join(f"{split} {count}" for split, count in totals.items()) + " pairs")
        for source, source_counts in counts.items():
            print(f"  {source}: {source_counts.summary()}")


def write_catalog_corpora(args: argparse.Namespace) -> None:
    if args.name == "system":
        # Every language is checked before anything is written, so a typo costs no half-finished run.
        catalogs = {lang: system_catalogs(lang, args.locale_dir) for lang in args.langs}
    else:
        catalogs = {lang: libreoffice_catalogs(lang, args.cache_dir) for lang in args.langs}
    for lang, files in catalogs.items():
        out_file = Path(args.out) / f"{args.name}-en-{lang}" / "train.jsonl"
        counts = write_corpus(files, lang, out_file)
        print(f"{out_file}: {counts.pairs} pairs")
        print(f"  {args.name}-en-{lang}: {counts.summary()}")
        if args.max_pairs:
            sample = Path(args.out) / f"{args.name}-en-{lang}-{args.max_pairs}" / "train.jsonl"
            print(f"{sample}: {write_sample(out_file, args.max_pairs, sample)} pairs drawn at random")


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        if args.sources[0] in CATALOG_SOURCES:
            write_catalog_corpora(args)
        else:
            write_doc_corpora(args)
    except CorpusError as e:
        raise SystemExit(f"real_corpora.py: error: {e}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
