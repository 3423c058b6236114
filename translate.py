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
from corpus import load_corpus
from decoding import Translator
from errors import UserError
from evaluation import corpus_scores
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
    if not test:
        raise UserError("the training corpus has no test split (--test_size 0): pass --source and --reference")
    # All of the split, as training's test score counts it. A source longer than --seq_len is translated in pieces
    # here, where training's score cuts it to fit: the two agree unless the split holds such sources.
    too_long = sum(len(ids) + 1 > translator.config.seq_len
                   for ids in (e.ids for e in translator.src_tok.encode_batch([s for s, _ in test],
                                                                              add_special_tokens=False)))
    what = "the test split" + (f" ({too_long} sources longer than --seq_len translated in pieces)" if too_long else "")
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
