"""Export a trained model folder for use elsewhere: safetensors weights, or a CTranslate2 model.

    python export.py --model_folder weights --out exported                          # model.safetensors + config
    python export.py --model_folder weights --out exported-ct2 --format ctranslate2  # pip install ctranslate2

safetensors: `model.safetensors` (every parameter by name, loadable with plain `safetensors.torch.load_file`),
`config.json` (the network's shape, `model`, and the run's settings, `settings`) and the two tokenizers. Load it
with `model.Transformer(model.ModelConfig(**config["model"]))` and `load_state_dict`.

ctranslate2: CTranslate2's own `model.bin` and vocabularies, written through its converter API from a spec of our
layer layout (pre-norm, GELU, sinusoidal positions, embeddings scaled by sqrt(d_model)), and the tokenizers. A
source is its tokenizer's tokens followed by "[EOS]"; decoding starts at "[BOS]" (decode the output tokens' ids
with the target tokenizer).
"""

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys

import torch

import runtime
import tokenizer
from errors import UserError
from decoding import Translator
from model import Transformer, sinusoidal_positions
from monitor import setup_logging

log = logging.getLogger("translation")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Export a model folder written by train.py.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model_folder", "--model-folder", required=True, help="the --model_folder of a run")
    parser.add_argument("--checkpoint", default="best",
                        help="'best' (by validation BLEU), 'latest', a step number or a checkpoint path")
    parser.add_argument("--out", required=True, help="the folder to write (must not exist yet)")
    parser.add_argument("--format", choices=("safetensors", "ctranslate2"), default="safetensors")
    return parser


def copy_tokenizers(translator: Translator, folder: str, out: str) -> None:
    for lang in (translator.config.lang_src, translator.config.lang_tgt):
        shutil.copy(tokenizer.tokenizer_path(folder, lang), os.path.join(out, f"tokenizer_{lang}.json"))


def export_safetensors(translator: Translator, out: str) -> None:
    from safetensors.torch import save_file

    # Tied and shared embeddings are one tensor under several names: safetensors stores each name on its own.
    weights = {name: value.detach().cpu().contiguous().clone() for name, value in translator.model.state_dict().items()}
    save_file(weights, os.path.join(out, "model.safetensors"), metadata={"step": str(translator.step)})
    config = {"model": dataclasses.asdict(translator.model.config), "settings": dataclasses.asdict(translator.config),
              "step": translator.step, "special_tokens": list(tokenizer.SPECIAL_TOKENS)}
    with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)


def ctranslate2_spec(model: Transformer, src_vocab: list[str], tgt_vocab: list[str]):
    """Our network as a CTranslate2 TransformerSpec, weight by weight."""
    from ctranslate2.specs import common_spec, transformer_spec

    c = model.config
    spec = transformer_spec.TransformerSpec.from_config(c.num_layers, c.num_heads, pre_norm=True,
                                                        activation=common_spec.Activation.GELU)
    positions = sinusoidal_positions(c.max_len, c.d_model).numpy()
    for side, embedding, layers, norm in ((spec.encoder, model.src_embed, model.encoder_layers, model.encoder_norm),
                                          (spec.decoder, model.tgt_embed, model.decoder_layers, model.decoder_norm)):
        (side.embeddings[0] if isinstance(side.embeddings, list) else side.embeddings).weight = _array(embedding.weight)
        side.scale_embeddings = True
        side.position_encodings.encodings = positions
        _set_norm(side.layer_norm, norm)
    for ours, theirs in zip(model.encoder_layers, spec.encoder.layer):
        _set_self_attention(theirs.self_attention, ours.attn, ours.norm_attn)
        _set_feed_forward(theirs.ffn, ours.ff, ours.norm_ff)
    for ours, theirs in zip(model.decoder_layers, spec.decoder.layer):
        _set_self_attention(theirs.self_attention, ours.self_attn, ours.norm_self)
        _set_norm(theirs.attention.layer_norm, ours.norm_cross)
        for linear, weight, bias in ((theirs.attention.linear[0], ours.cross_attn.q_proj.weight,
                                      ours.cross_attn.q_proj.bias),
                                     (theirs.attention.linear[1], ours.cross_attn.kv_proj.weight,
                                      ours.cross_attn.kv_proj.bias),
                                     (theirs.attention.linear[2], ours.cross_attn.out_proj.weight,
                                      ours.cross_attn.out_proj.bias)):
            linear.weight, linear.bias = _array(weight), _array(bias)
        _set_feed_forward(theirs.ffn, ours.ff, ours.norm_ff)
    spec.decoder.projection.weight = _array(model.output.weight)
    spec.config.layer_norm_epsilon = model.encoder_norm.eps
    pad, unk, bos, eos = tokenizer.SPECIAL_TOKENS
    spec.config.unk_token, spec.config.bos_token, spec.config.eos_token = unk, bos, eos
    spec.config.decoder_start_token = bos
    spec.register_source_vocabulary(src_vocab)
    spec.register_target_vocabulary(tgt_vocab)
    return spec


def _array(tensor: torch.Tensor):
    return tensor.detach().float().cpu().numpy()


def _set_norm(theirs, ours) -> None:
    theirs.gamma, theirs.beta = _array(ours.weight), _array(ours.bias)


def _set_self_attention(theirs, ours, norm) -> None:
    """q, k and v in one matrix, as CTranslate2 computes self-attention (our kv_proj already holds k then v)."""
    _set_norm(theirs.layer_norm, norm)
    theirs.linear[0].weight = _array(torch.cat([ours.q_proj.weight, ours.kv_proj.weight]))
    theirs.linear[0].bias = _array(torch.cat([ours.q_proj.bias, ours.kv_proj.bias]))
    theirs.linear[1].weight, theirs.linear[1].bias = _array(ours.out_proj.weight), _array(ours.out_proj.bias)


def _set_feed_forward(theirs, ours, norm) -> None:
    _set_norm(theirs.layer_norm, norm)
    theirs.linear_0.weight, theirs.linear_0.bias = _array(ours.up.weight), _array(ours.up.bias)
    theirs.linear_1.weight, theirs.linear_1.bias = _array(ours.down.weight), _array(ours.down.bias)


def vocabulary(tok) -> list[str]:
    """The tokenizer's tokens in id order."""
    by_id = {i: token for token, i in tok.get_vocab().items()}
    return [by_id[i] for i in range(tok.get_vocab_size())]


def export_ctranslate2(translator: Translator, out: str) -> None:
    try:
        from ctranslate2.converters.converter import Converter
    except ImportError:
        raise UserError("--format ctranslate2 needs CTranslate2: pip install ctranslate2") from None

    spec = ctranslate2_spec(translator.model, vocabulary(translator.src_tok), vocabulary(translator.tgt_tok))

    class OurConverter(Converter):
        def _load(self):
            return spec

    OurConverter().convert(out, force=True)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(rank=0, stream=sys.stderr)
    try:
        if os.path.exists(args.out):
            raise UserError(f"--out {args.out}: already exists; choose a new folder")
        translator = Translator(args.model_folder, args.checkpoint, runtime.choose_device("cpu"))
        os.makedirs(args.out)
        (export_safetensors if args.format == "safetensors" else export_ctranslate2)(translator, args.out)
        copy_tokenizers(translator, args.model_folder, args.out)
        log.info(f"exported {translator.path} (step {translator.step}) as {args.format} to {args.out}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
