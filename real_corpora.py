"""Real English->X parallel corpora rebuilt offline from software localization catalogs (gettext .mo files) and from
translated documentation (GNOME's help pages).

Every translated program ships its user-visible strings as compiled gettext catalogs: English source text
(the msgid) next to a human translation (the msgstr).  This script turns those catalogs into corpora in the
opus_books JSONL schema that train.py reads with --data_files, one example per line:

    {"id": "17", "translation": {"en": "cannot open %s", "it": "impossibile aprire %s"}}

Three sources:

  system       the catalogs this machine already holds under /usr/share/locale/<lang>/LC_MESSAGES/*.mo
               (coreutils, apt, bash, binutils, ...): terse command-line messages.
  libreoffice  Debian's libreoffice-l10n-<lang> package, fetched with `apt-get download` into a cache folder
               and unpacked with `dpkg-deb -x`: office UI strings, a different domain (run `apt-get update`
               once beforehand; later runs reuse the cache and need no network).
  gnome-help   Debian's gnome-user-docs package (the GNOME desktop help and system administration guide) and the
               help of GNOME applications (Mallard pages under usr/share/help/<lang>/): natural, descriptive
               sentences. A translated page keeps
               the English page's structure, so paragraphs align one to one; paragraphs that split into the same
               number of sentences on both sides give one pair per sentence. Validation and test pairs are held out
               by page (about a twentieth of the pages each), written to validation.jsonl and test.jsonl beside
               train.jsonl: `python train.py --dataset corpora/gnome-help-en-de --lang_tgt de`.

    python real_corpora.py --langs it,de,fr,es --out corpora              # -> corpora/system-en-it/train.jsonl ...
    python real_corpora.py --source libreoffice --langs de --out corpora  # -> corpora/libreoffice-en-de/train.jsonl
    python real_corpora.py --langs de --max_pairs 27000 --out corpora     # also corpora/system-en-de-27000/
    python real_corpora.py --source gnome-help --langs de,it --out corpora  # -> corpora/gnome-help-en-de/...
    python train.py --data_files corpora/system-en-it/train.jsonl --lang_tgt it ...

Each catalog corpus folder holds only train.jsonl: the trainer holds out validation and test pairs itself.  Text is kept
exactly as the catalogs have it (placeholders such as %s or {0}, newlines, LibreOffice's ~ and _ mnemonics,
untranslated copies, duplicates across programs): cleaning is the trainer's loader's job.  The output depends
only on the catalogs: files in name order, entries in catalog order, ids running from 0.
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
from dataclasses import dataclass
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


def libreoffice_package(lang: str) -> str:
    # Debian names these packages in lower case with dashes: pt_BR -> libreoffice-l10n-pt-br.
    return "libreoffice-l10n-" + lang.lower().replace("_", "-")


def libreoffice_catalogs(lang: str, cache_dir) -> list[Path]:
    """The .mo files of libreoffice-l10n-<lang>, downloaded and unpacked into cache_dir unless already there."""
    package = libreoffice_package(lang)
    unpacked = Path(cache_dir) / package
    if not unpacked.is_dir():
        download_and_unpack(package, unpacked)
    # One resource/<tag>/ folder per package; its tag (de, pt-BR, ...) need not match the package name.
    catalogs = sorted(unpacked.glob(f"{LIBREOFFICE_RESOURCES}/*/LC_MESSAGES/*.mo"), key=lambda p: (p.name, str(p)))
    if not catalogs:
        raise CorpusError(f"{package} holds no .mo catalogs under {LIBREOFFICE_RESOURCES}/ (unpacked in {unpacked})")
    return catalogs


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


# ------------------------------------------------------------------------------------------------ help pages

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
HELD_OUT_PAGES = 20  # one page in twenty goes to validation, one to test
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'“„«(\[]?[^\W\d_])")


@dataclass
class HelpCounts:
    pages: int = 0            # English pages with a page of the same name in the language
    misaligned: int = 0       # of which skipped: a different number of text blocks on the two sides
    blocks: int = 0           # text blocks (paragraphs, titles) of the aligned pages
    sentence_split: int = 0   # blocks that split into as many sentences on both sides, one pair per sentence
    untranslated: int = 0     # dropped: the translation equals the English
    no_text: int = 0          # dropped: a side without a letter (markup, numbers, symbols only)
    duplicates: int = 0       # dropped: a pair seen before
    splits: dict | None = None

    def summary(self) -> str:
        kept = ", ".join(f"{name} {count}" for name, count in (self.splits or {}).items())
        return (f"{kept} pairs from {self.blocks} aligned blocks of {self.pages - self.misaligned} pages "
                f"({self.misaligned} of {self.pages} pages skipped as misaligned; {self.sentence_split} blocks split "
                f"into sentences; dropped {self.untranslated} untranslated, {self.no_text} without text, "
                f"{self.duplicates} duplicates)")


def gnome_help_roots(cache_dir) -> list[Path]:
    """usr/share/help of every package of GNOME_HELP_PACKAGES (each holds all its languages), unpacked into
    cache_dir unless already there."""
    roots = []
    for package in GNOME_HELP_PACKAGES:
        unpacked = Path(cache_dir) / package
        if not unpacked.is_dir():
            download_and_unpack(package, unpacked)
        roots.append(unpacked / HELP_DIR)
    return roots


def page_blocks(path: Path) -> list[str]:
    """The text of every paragraph, title and description of a Mallard page, in document order, with inline
    markup (<gui>, <em>, <link>) kept as its text and white space collapsed."""
    import xml.etree.ElementTree as ElementTree

    blocks = []
    for element in ElementTree.parse(path).iter():
        if element.tag.rsplit("}", 1)[-1] in MALLARD_TEXT_BLOCKS:
            blocks.append(" ".join("".join(element.itertext()).split()))
    return blocks


def block_pairs(english: str, translation: str) -> list[tuple[str, str]]:
    """One pair per sentence when both sides split into the same number of sentences, else the block whole."""
    sources, targets = SENTENCE_END.split(english), SENTENCE_END.split(translation)
    return list(zip(sources, targets)) if len(sources) == len(targets) > 1 else [(english, translation)]


def help_page_pairs(help_roots: list[Path], lang: str, counts: HelpCounts) -> dict[str, list[tuple[str, str]]]:
    """{document/page.page: aligned pairs} for every English page that has a page in the language."""
    pages = {}
    english_pages = [(root, page) for root in help_roots for page in sorted((root / "C").glob("*/*.page"))]
    for help_root, english_page in english_pages:
        relative = english_page.relative_to(help_root / "C")
        translated_page = help_root / lang / relative
        if not translated_page.is_file():
            continue
        counts.pages += 1
        english, translated = page_blocks(english_page), page_blocks(translated_page)
        if len(english) != len(translated):
            counts.misaligned += 1
            continue
        counts.blocks += len(english)
        pairs = []
        for source, target in zip(english, translated):
            split = block_pairs(source, target)
            counts.sentence_split += len(split) > 1
            pairs.extend(split)
        pages[str(relative)] = pairs
    return pages


def held_out_split(page: str) -> str:
    """The split a page's pairs go to, from its name alone: the same on every run and for every language."""
    bucket = zlib.crc32(page.encode()) % HELD_OUT_PAGES
    return "validation" if bucket == 0 else "test" if bucket == 1 else "train"


def write_help_corpus(help_roots: list[Path], lang: str, out: Path) -> HelpCounts:
    """train.jsonl, validation.jsonl and test.jsonl of the aligned help pages of `lang`, held out by page."""
    if not any((root / lang).is_dir() for root in help_roots):
        raise CorpusError(f"no help pages for language {lang!r} in {', '.join(map(str, help_roots))}")
    counts, seen = HelpCounts(), set()
    splits = {"train": [], "validation": [], "test": []}
    for page, pairs in help_page_pairs(help_roots, lang, counts).items():
        for pair in pairs:
            if pair[0] == pair[1]:
                counts.untranslated += 1
            elif not all(re.search(r"[^\W\d_]", side) for side in pair):
                counts.no_text += 1
            elif pair in seen:
                counts.duplicates += 1
            else:
                seen.add(pair)
                splits[held_out_split(page)].append(pair)
    for split, pairs in splits.items():
        lines = [jsonl_line({"id": str(i), "translation": {"en": en, lang: text}})
                 for i, (en, text) in enumerate(pairs)]
        out.mkdir(parents=True, exist_ok=True)
        partial = out / f"{split}.jsonl.partial"
        partial.write_text("".join(lines), encoding="utf-8")
        os.replace(partial, out / f"{split}.jsonl")
    counts.splits = {split: len(pairs) for split, pairs in splits.items()}
    return counts


# ------------------------------------------------------------------------------------------------ CLI

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Build English->X parallel corpora (opus_books JSONL) from gettext "
                                                 "localization catalogs.")
    parser.add_argument("--langs", required=True, help="comma-separated target languages, e.g. it,de,fr,es")
    parser.add_argument("--source", choices=("system", "libreoffice", "gnome-help"), default="system",
                        help="system: the catalogs under --locale_dir; libreoffice: Debian's libreoffice-l10n-<lang>; "
                             "gnome-help: Debian's gnome-user-docs, aligned paragraph by paragraph")
    parser.add_argument("--out", default="corpora", help="writes <out>/<source>-en-<lang>/train.jsonl")
    parser.add_argument("--locale_dir", default=SYSTEM_LOCALE_DIR, help="where --source system looks for catalogs")
    parser.add_argument("--cache_dir", default=DEFAULT_CACHE_DIR,
                        help="where --source libreoffice and gnome-help keep downloaded and unpacked packages")
    parser.add_argument("--max_pairs", type=int,
                        help="also write a random sample of this many pairs to <out>/<source>-en-<lang>-<N>/")
    args = parser.parse_args(argv)
    if args.max_pairs is not None and args.max_pairs < 1:
        parser.error("--max_pairs: must be positive")
    args.langs = [lang.strip() for lang in args.langs.split(",") if lang.strip()]
    if not args.langs:
        parser.error("--langs: give at least one language")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        if args.source == "gnome-help":
            help_roots = gnome_help_roots(args.cache_dir)
            for lang in args.langs:
                out = Path(args.out) / f"gnome-help-en-{lang}"
                counts = write_help_corpus(help_roots, lang, out)
                print(f"{out}: {counts.summary()}")
            return
        if args.source == "system":
            # Every language is checked before anything is written, so a typo costs no half-finished run.
            catalogs = {lang: system_catalogs(lang, args.locale_dir) for lang in args.langs}
        else:
            catalogs = {lang: libreoffice_catalogs(lang, args.cache_dir) for lang in args.langs}
        for lang, files in catalogs.items():
            out_file = Path(args.out) / f"{args.source}-en-{lang}" / "train.jsonl"
            counts = write_corpus(files, lang, out_file)
            print(f"{out_file}: {counts.pairs} pairs")
            print(f"  {args.source}-en-{lang}: {counts.summary()}")
            if args.max_pairs:
                sample = Path(args.out) / f"{args.source}-en-{lang}-{args.max_pairs}" / "train.jsonl"
                print(f"{sample}: {write_sample(out_file, args.max_pairs, sample)} pairs drawn at random")
    except CorpusError as e:
        raise SystemExit(f"real_corpora.py: error: {e}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
