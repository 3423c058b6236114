"""Translate with a trained model folder, score it on a test set, or average its last checkpoints.

    python translate.py --model_folder weights "The cat sees the dog."        # sentences as arguments
    echo "The cat sees the dog." | python translate.py --model_folder weights  # or one per line on stdin
    python translate.py --model_folder weights --input in.en --output out.it
    python translate.py --model_folder weights --evaluate                      # the training corpus's test split
    python translate.py --model_folder weights --evaluate --source test.en --reference test.it --output hyp.it
    python translate.py --model_folder weights --average_last 5                # writes averaged_<a>-<b>.pt

The folder is what train.py leaves: checkpoints and the two tokenizers. The best checkpoint by validation BLEU is
used unless --checkpoint says otherwise. Runs on the GPU when there is one, else on the CPU.
"""

import argparse
import logging
import os
import re
import sys

import torch

import checkpoint
import runtime
import tokenizer
from config import Config, model_config
from corpus import load_corpus
from dataset import tokenize_pairs
from decoding import PlaceholderBudget, decode_tokens
from errors import UserError
from evaluation import corpus_scores
from model import Transformer
from monitor import setup_logging

log = logging.getLogger("translation")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Translate with a model folder written by train.py.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("sentences", nargs="*", help="sentences to translate (default: lines of --input or stdin)")
    parser.add_argument("--model_folder", required=True, help="the --model_folder of a training run")
    parser.add_argument("--checkpoint", default="best",
                        help="'best' (by validation BLEU), 'latest', a step number or a checkpoint path")
    parser.add_argument("--input", help="read sentences from this file, one per line")
    parser.add_argument("--output", help="write translations (or, with --evaluate, hypotheses) to this file")
    parser.add_argument("--beam_size", type=int, default=4, help="1 = greedy decoding")
    parser.add_argument("--length_penalty", type=float, default=1.0,
                        help="hypotheses are ranked by log-probability / length ** this")
    parser.add_argument("--batch_size", type=int, default=64, help="sentences decoded together")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--evaluate", action="store_true",
                        help="score BLEU and chrF (sacreBLEU) on the test split, or on --source/--reference")
    parser.add_argument("--source", help="with --evaluate: source sentences, one per line")
    parser.add_argument("--reference", help="with --evaluate: reference translations, one per line")
    parser.add_argument("--average_last", type=int, default=0,
                        help="average the last N checkpoints of the folder into a new file, then stop")
    return parser


def choose_checkpoint(folder: str, choice: str) -> tuple[str, dict]:
    """(path, loaded state) of the checkpoint that --checkpoint names; each file is read once."""
    if choice not in ("best", "latest"):
        path = checkpoint.named_path(folder, choice, "checkpoint", "'best', 'latest'")
        return path, checkpoint.load_checkpoint(path, weights_will_do=True)
    found = checkpoint.list_checkpoints(folder)
    if not found:
        raise UserError(f"--model_folder {folder}: no complete checkpoint there; train first, or check the path")
    newest_step, newest = found[-1]
    state = checkpoint.load_checkpoint(newest)
    best_step = state.get("best_step")
    best = checkpoint.checkpoint_path(folder, best_step) if best_step is not None else None
    if choice == "best" and best_step != newest_step and (best_step, best) in found:
        return best, checkpoint.load_checkpoint(best)  # the newest names the best: it is kept through pruning
    return newest, state


class Translator:
    """A trained model and its tokenizers, loaded from a model folder and checked against each other."""

    def __init__(self, folder: str, choice: str, device: torch.device):
        if not os.path.isdir(folder):
            raise UserError(f"--model_folder {folder}: no such folder")
        self.path, state = choose_checkpoint(folder, choice)
        self.config = Config.from_dict(state["config"])
        tokenizers = []
        for side, lang in (("src", self.config.lang_src), ("tgt", self.config.lang_tgt)):
            path = tokenizer.tokenizer_path(folder, lang)
            if not os.path.exists(path):
                raise UserError(f"--model_folder {folder}: {os.path.basename(path)} is missing; the tokenizers of "
                                f"the run must sit beside its checkpoints")
            text = open(path, encoding="utf-8").read()
            if tokenizer.fingerprint(text) != state["tokenizers"][side]:
                raise UserError(f"{path} is not the tokenizer {os.path.basename(self.path)} was trained with")
            tokenizers.append(tokenizer.tokenizer_from_json(text))
        self.src_tok, self.tgt_tok = tokenizers
        self.model = Transformer(model_config(self.config, self.src_tok.get_vocab_size(),
                                              self.tgt_tok.get_vocab_size(), tokenizer.PAD_ID, dropout=0.0))
        self.model.load_state_dict(state["model"])
        self.model.to(device).eval()
        self.placeholders_kept = PlaceholderBudget(self.tgt_tok)
        self.device = device
        # The run's own --precision, resolved for this device: on the same machine, training's test score and
        # --evaluate's are the same numbers (fp16 needs a GPU: elsewhere what auto picks).
        saved = self.config.precision
        self.precision = runtime.resolve_precision("auto" if saved == "fp16" and device.type != "cuda" else saved,
                                                   device)
        self.autocast = runtime.make_autocast(self.precision, device)
        self.step = state["step"]

    def pieces(self, text: str) -> list[str]:
        """`text` as pieces that fit the model's positions: itself when it fits, else its sentences (split after
        . ! ? and line breaks), and any sentence still too long in runs of whole words (a single word longer than the
        model's positions, which no model can take, is cut)."""
        limit = self.config.seq_len - 1  # room for EOS
        if len(self.src_tok.encode(text, add_special_tokens=False).ids) <= limit:
            return [text]
        out = []
        for sentence in (s for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()):
            current = ""
            for word in sentence.split(" "):
                longer = f"{current} {word}" if current else word
                if current and len(self.src_tok.encode(longer, add_special_tokens=False).ids) > limit:
                    out.append(current)
                    longer = word
                current = longer
            out.append(current)
        return out

    @torch.no_grad()
    def translate(self, sentences: list[str], beam_size: int, length_penalty: float, batch_size: int) -> list[str]:
        """Translations in input order, in batches of similar length. A source longer than the model's positions is
        translated sentence by sentence (see `pieces`) and the translations joined, never truncated."""
        pieces = [self.pieces(text) for text in sentences]
        if any(len(p) > 1 for p in pieces):
            split = sum(len(p) > 1 for p in pieces)
            log.info(f"{split} inputs longer than {self.config.seq_len - 1} tokens were translated in pieces "
                     f"(sentences)")
            flat = self._translate([piece for p in pieces for piece in p], beam_size, length_penalty, batch_size)
            joined, at = [], 0
            for p in pieces:
                joined.append(" ".join(flat[at:at + len(p)]))
                at += len(p)
            return joined
        return self._translate(sentences, beam_size, length_penalty, batch_size)

    def _translate(self, sentences: list[str], beam_size: int, length_penalty: float, batch_size: int) -> list[str]:
        limit = self.config.seq_len - 1
        encoded = [e.ids for e in self.src_tok.encode_batch(sentences, add_special_tokens=False)]
        sources = [torch.tensor(ids[:limit] + [tokenizer.EOS_ID]) for ids in encoded]
        order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
        out = [""] * len(sources)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            src = torch.nn.utils.rnn.pad_sequence([sources[i] for i in chunk], batch_first=True,
                                                  padding_value=tokenizer.PAD_ID).to(self.device)
            budget = self.placeholders_kept.for_sources([sentences[i] for i in chunk], self.device)
            with self.autocast():
                tokens = decode_tokens(self.model, src, beam_size, length_penalty, budget)
            for i, text in zip(chunk, self.tgt_tok.decode_batch(tokens.tolist(), skip_special_tokens=True)):
                out[i] = text  # as training's evaluation scores it: no stripping
        return out


def read_lines(path: str | None) -> list[str]:
    if path is None:
        return [line.rstrip("\n") for line in sys.stdin]
    if not os.path.isfile(path):
        raise UserError(f"no such file: {path}")
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def write_lines(path: str | None, lines: list[str]) -> None:
    if path is None:
        print("\n".join(lines))
        return
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


def evaluation_pairs(args, translator: Translator) -> tuple[list[str], list[str], str]:
    if args.source or args.reference:
        if not (args.source and args.reference):
            raise UserError("--source and --reference go together")
        sources, references = read_lines(args.source), read_lines(args.reference)
        if len(sources) != len(references):
            raise UserError(f"--source has {len(sources)} lines but --reference has {len(references)}")
        return sources, references, args.source
    test = load_corpus(translator.config)["test"]  # the same corpus and held-out split as in training
    # The pairs training's own test score covers: those that fit --seq_len, as tokenized for training.
    tokenized = tokenize_pairs(test, translator.src_tok, translator.tgt_tok, translator.config.seq_len)
    if not tokenized.kept:
        raise UserError("the training corpus has no test split (--test_size 0): pass --source and --reference")
    left_out = len(test) - len(tokenized.kept)
    test = [test[i] for i in tokenized.kept]
    what = "the test split" + (f" ({left_out} pairs longer than --seq_len left out, as in training)"
                               if left_out else "")
    return [s for s, _ in test], [t for _, t in test], what


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(rank=0, stream=sys.stderr)  # stdout carries the translations
    try:
        if args.beam_size < 1 or args.batch_size < 1:
            raise UserError("--beam_size and --batch_size must be at least 1")
        if args.average_last:
            if args.average_last < 2:
                raise UserError(f"--average_last: average at least 2 checkpoints, got {args.average_last}")
            path = checkpoint.write_average_of_last(args.model_folder, args.average_last)
            if path is None:
                raise UserError(f"--average_last: {args.model_folder} holds fewer than two complete checkpoints")
            steps = checkpoint.load_checkpoint(path, weights_will_do=True)["averaged_from"]
            print(f"averaged steps {steps} into {path}")
            return
        device = runtime.choose_device("auto") if args.device == "auto" else torch.device(args.device)
        runtime.check_gpu_supported(device)
        runtime.configure_cuda(device)
        translator = Translator(args.model_folder, args.checkpoint, device)
        log.info(f"{translator.path} (step {translator.step}), beam {args.beam_size}, device {device}, precision "
                 f"{translator.precision}")
        if args.evaluate:
            sources, references, what = evaluation_pairs(args, translator)
            hypotheses = translator.translate(sources, args.beam_size, args.length_penalty, args.batch_size)
            bleu, chrf, bleu_signature, chrf_signature = corpus_scores(hypotheses, references)
            print(f"{what}: {len(sources)} sentences | BLEU {bleu:.2f} | chrF {chrf:.2f} | BLEU signature "
                  f"{bleu_signature} | chrF signature {chrf_signature}")
            if args.output:
                write_lines(args.output, hypotheses)
            return
        sentences = args.sentences or read_lines(args.input)
        write_lines(args.output, translator.translate(sentences, args.beam_size, args.length_penalty,
                                                      args.batch_size))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
