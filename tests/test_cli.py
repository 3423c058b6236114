"""The command line as users of torchrun and Hugging Face expect it: both spellings of every flag, --help in
sections, settings from a JSON or YAML file with command-line flags winning, and the resolved settings written to
the model folder."""

import json
import os

import pytest

import train
from config import Config, build_parser, parse_config, to_dict


def test_every_flag_takes_the_dash_spelling_too():
    assert parse_config(["--model-folder", "w", "--batch-size", "8", "--no-tie-embeddings"]) == \
        parse_config(["--model_folder", "w", "--batch_size", "8", "--no-tie_embeddings"])
    assert parse_config(["--max-time", "14m"]).max_time == "14m" and parse_config([]) == Config()


def test_help_is_grouped_by_what_flags_are_about():
    help_text = build_parser().format_help()
    sections = [line[:-1] for line in help_text.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert [s for s in sections if s != "options"] == ["data", "model", "training", "distributed", "evaluation",
                                                       "checkpoints", "logging"]
    distributed = help_text.split("\ndistributed:")[1].split("\nevaluation:")[0]
    assert "--strategy" in distributed and "--dist_timeout" in distributed and "--cpu_offload" in distributed


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_a_settings_file_sets_any_flag_and_the_command_line_wins(tmp_path, suffix):
    settings = {"batch_size": 8, "max-time": "14m", "tie_embeddings": False, "lr": 0.0005}
    path = tmp_path / f"run{suffix}"
    path.write_text(json.dumps(settings) if suffix == ".json" else
                    "batch_size: 8\nmax-time: 14m\ntie_embeddings: false\nlr: 0.0005\n")
    cfg = parse_config(["--config", str(path), "--lr", "0.002"])
    assert (cfg.batch_size, cfg.max_time, cfg.tie_embeddings, cfg.lr) == (8, "14m", False, 0.002)


def test_a_settings_file_with_an_unknown_setting_or_missing_is_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"batch_szie": 8}))
    for argv, message in ((["--config", str(path)], "no such setting: batch_szie"),
                          (["--config", str(tmp_path / "missing.json")], "cannot read it")):
        with pytest.raises(SystemExit) as stop:
            parse_config(argv)
        assert stop.value.code == 2 and message in capsys.readouterr().err


def test_the_resolved_settings_are_written_to_the_model_folder(tmp_path, monkeypatch):
    folder = tmp_path / "w"
    cfg = parse_config(["--model_folder", str(folder), "--num_layers", "2", "--d_ff", "64"])
    run_data = train.RunData({}, None, None, ("{}", "{}"), {}, None, None, None, 0)
    train.claim_folder(cfg, run_data)
    train.claim_folder(cfg, run_data)  # a restart writes it again, over the first
    assert json.loads((folder / "config.json").read_text()) == to_dict(cfg)
    assert not [name for name in os.listdir(folder) if ".tmp-" in name]
