"""The subword tokenizers: byte-level BPE trained by rank 0, saved to and read back from the model folder, and
handed to every rank as JSON text (no rank reads a file another is writing).

Every tokenizer this trainer makes has the same special tokens at ids 0..3, and cuts the placeholders that
programs fill in (%s, {0}) out whole, so that decoding can count them.
"""

import hashlib
import logging
import os
import re

from errors import UserError
from progress import on_terminal
from storage import write_text

log = logging.getLogger("translation")

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)  # ids 0..3 in every tokenizer we train
PAD_ID, BOS_ID, EOS_ID = 0, 2, 3

# Placeholders that programs fill in (printf's %s, %-5d, %(name)s, %%; {0}, {name}) are cut out whole, before the
# usual byte-level split, which would cut "%s" into "%" + "s" and glue "%" to the character before it: real corpora
# copy them from source to target, and a wrong one crashes the program that prints the translation.
PLACEHOLDER = r"%(?:\([A-Za-z_][A-Za-z0-9_]*\))?[-+#0*]*\d*(?:\.\d+)?(?:hh|ll|[hlLqjzt])?[diouxXeEfFgGcrsaAp%]" \
              r"|\{[A-Za-z0-9_.]*\}"
# GPT-2's split (ByteLevel's own regex): contractions, letters, digits, other symbols, spaces.
WORD_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}%{]+| ?[%{]|\s+(?!\S)|\s+"


def placeholders(text: str) -> list[str]:
    """The placeholders of a sentence, in order."""
    return re.findall(PLACEHOLDER, text)


def placeholder_tokens(tokenizer) -> dict[str, list[int]]:
    """The tokens that spell one placeholder whole (alone or after a space), by placeholder: decoding holds
    translations to their source's placeholders through them."""
    ids = range(tokenizer.get_vocab_size())
    table: dict[str, list[int]] = {}
    for token_id, text in zip(ids, tokenizer.decode_batch([[i] for i in ids], skip_special_tokens=True)):
        text = text.removeprefix(" ")
        if re.fullmatch(PLACEHOLDER, text):
            table.setdefault(text, []).append(token_id)
    return table


def train_tokenizer(sentences: list[str], vocab_size: int):
    """Byte-level BPE: every string survives decode(encode(text)) == text, whatever its characters; placeholders
    are never split, and "[UNK]" or "[EOS]" written in a sentence is text, not a control token."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    log.info(f"training a {vocab_size}-token BPE vocabulary on {len(sentences):,} sentences")

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(f" ?(?:{PLACEHOLDER})|{WORD_SPLIT}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=on_terminal())
    tokenizer.train_from_iterator(sentences, trainer=trainer)
    tokenizer.encode_special_tokens = True
    return tokenizer


def tokenizer_path(folder: str, lang: str) -> str:
    return os.path.join(folder, f"tokenizer_{lang}.json")


def _read_saved(path: str):
    """A tokenizer this trainer saved; a clear error for a damaged or foreign file."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(path)
    except Exception as e:  # the tokenizers library raises a bare Exception for a damaged file
        raise UserError(f"{path} cannot be read ({e}): delete it or use another --model_folder") from None
    if [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] != list(range(len(SPECIAL_TOKENS))):
        raise UserError(f"{path} was not made by this trainer (special tokens differ): delete it or use "
                        f"another --model_folder")
    return tokenizer


def build_tokenizer_json(folder: str, langs: tuple[str, str], share_vocab: bool, vocab_size: int,
                         training_pairs) -> tuple[str, str]:
    """Rank 0 only: the source and target tokenizers as JSON, read from the model folder if there (a restart),
    else trained on the training split; with `share_vocab`, one tokenizer trained on both sides, saved under both
    names. `training_pairs()` gives the pairs to learn from, read only when a tokenizer is trained. Nothing is
    written here: see `save_tokenizers`."""
    paths = [tokenizer_path(folder, lang) for lang in langs]
    if share_vocab and not any(os.path.exists(path) for path in paths):
        joint = train_tokenizer([sentence for pair in training_pairs() for sentence in pair], vocab_size).to_str()
        return joint, joint
    out = []
    for side, path in enumerate(paths):
        if os.path.exists(path):
            tokenizer = _read_saved(path)
        else:
            tokenizer = train_tokenizer([pair[side] for pair in training_pairs()], vocab_size)
        out.append(tokenizer.to_str())
    if share_vocab and out[0] != out[1]:
        raise UserError(f"--share_vocab: {folder} holds two different tokenizers; drop --share_vocab or "
                        f"use another --model_folder")
    return out[0], out[1]


def save_tokenizers(folder: str, langs: tuple[str, str], texts: tuple[str, str]) -> None:
    """Rank 0 only, once start-up checks have passed: write the tokenizers a restart will reuse."""
    for lang, text in zip(langs, texts):
        path = tokenizer_path(folder, lang)
        if not os.path.exists(path):
            write_text(path, text)


def fingerprint(text: str) -> str:
    """The sha256 of a tokenizer's JSON: a checkpoint records its tokenizers' so that a resume or translate.py
    refuses a tokenizer the model was not trained with."""
    return hashlib.sha256(text.encode()).hexdigest()


def tokenizer_from_json(text: str):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(text)
    tokenizer.encode_special_tokens = True  # not saved in the JSON: literal "[EOS]" in a sentence stays text
    return tokenizer
