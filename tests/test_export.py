"""export.py: a trained model folder as plain safetensors and as a CTranslate2 model, each translating as
translate.py does (greedy)."""

import json
import os

import pytest
import torch

import decoding
import export
import tokenizer as tok
from helpers import toy_pairs
from model import ModelConfig, Transformer
from decoding import Translator

pytestmark = pytest.mark.e2e  # reads the model trained for the session

SENTENCES = [source for source, _ in toy_pairs(12, seed=5)]


def translations_of(model: Transformer, src_tok, tgt_tok) -> list[str]:
    out = []
    for sentence in SENTENCES:
        src = torch.tensor([src_tok.encode(sentence, add_special_tokens=False).ids + [tok.EOS_ID]])
        ids = decoding.decode_tokens(model.eval(), src, beam_size=1)
        out.append(tgt_tok.decode_batch(ids.tolist(), skip_special_tokens=True)[0])
    return out


def test_safetensors_export_loads_with_plain_safetensors_and_translates_as_translate_py(trained, tmp_path):
    from safetensors.torch import load_file

    folder, _ = trained
    export.main(["--model_folder", str(folder), "--out", str(tmp_path / "st")])
    expected = Translator(str(folder), "best", torch.device("cpu")).translate(SENTENCES, 1, 1.0, 4)
    config = json.loads((tmp_path / "st" / "config.json").read_text())
    model = Transformer(ModelConfig(**config["model"]))
    model.load_state_dict(load_file(tmp_path / "st" / "model.safetensors"))
    src_tok, tgt_tok = (tok.tokenizer_from_json((tmp_path / "st" / f"tokenizer_{lang}.json").read_text())
                        for lang in ("en", "it"))
    assert translations_of(model, src_tok, tgt_tok) == expected
    assert sum(text == "" for text in expected) < len(expected)  # the model translates: a comparison of substance
    with pytest.raises(SystemExit) as refused:  # an existing folder is never overwritten
        export.main(["--model_folder", str(folder), "--out", str(tmp_path / "st")])
    assert refused.value.code == 2


def test_ctranslate2_export_translates_greedily_as_translate_py(trained, tmp_path):
    import ctranslate2  # in requirements-dev.txt: an optional dependency of export.py, never of training

    folder, _ = trained
    export.main(["--model_folder", str(folder), "--out", str(tmp_path / "ct2"), "--format", "ctranslate2"])
    assert {"model.bin", "tokenizer_en.json", "tokenizer_it.json"} <= set(os.listdir(tmp_path / "ct2"))
    translator = Translator(str(folder), "best", torch.device("cpu"))
    expected = translator.translate(SENTENCES, 1, 1.0, 4)
    ct2 = ctranslate2.Translator(str(tmp_path / "ct2"), device="cpu")
    got = []
    for sentence in SENTENCES:
        tokens = translator.src_tok.encode(sentence, add_special_tokens=False).tokens + ["[EOS]"]
        limit = decoding.max_output_length(len(tokens))
        (result,) = ct2.translate_batch([tokens], beam_size=1, max_decoding_length=limit)
        ids = [translator.tgt_tok.token_to_id(t) for t in result.hypotheses[0]]
        got.append(translator.tgt_tok.decode(ids, skip_special_tokens=True))
    assert got == expected
