"""--data_files s3://...: corpora read through fsspec (s3fs) from a real S3-compatible server, moto's, started on
127.0.0.1 for these tests; credentials and the endpoint from the standard AWS environment variables."""

import io
import json
import re
import subprocess
import sys
import threading
import uuid

import pytest

import checkpoint
import corpus as corpora
from config import parse_config, validate
from errors import UserError
from helpers import TINY_MODEL, failure_report, toy_pairs, torchrun

AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on a port it binds itself (port 0: the system's choice); ready once it prints the address
    it serves on."""
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in server.stderr:  # werkzeug announces "Running on http://127.0.0.1:PORT" when it listens
            if listening := re.search(r"Running on (http://127\.0\.0\.1:\d+)", line):
                break
        else:
            raise AssertionError(f"moto's server exited with code {server.wait()} before listening")
        # It logs every request there: read on, or a full pipe would stop it.
        threading.Thread(target=server.stderr.read, daemon=True).start()
        yield listening.group(1)
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def bucket(s3_server, monkeypatch):
    """A new bucket holding the toy corpus as two jsonl files and one parquet file; the AWS variables set."""
    import boto3
    import pyarrow as pa
    import pyarrow.parquet as pq

    for key, value in {**AWS_ENV, "AWS_ENDPOINT_URL": s3_server}.items():
        monkeypatch.setenv(key, value)
    name = f"corpus-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_server)
    client.create_bucket(Bucket=name)
    rows = [{"id": str(i), "translation": {"en": en, "it": it}} for i, (en, it) in enumerate(toy_pairs(400))]
    for k, part in enumerate((rows[:250], rows[250:])):
        body = "".join(json.dumps(row) + "\n" for row in part)
        client.put_object(Bucket=name, Key=f"toy/part-{k}.jsonl", Body=body.encode())
    table = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), table)
    client.put_object(Bucket=name, Key="parquet/all.parquet", Body=table.getvalue())
    return name, rows


def test_parquet_and_jsonl_load_from_s3_in_memory_and_as_a_stream(bucket, monkeypatch):
    name, rows = bucket
    import datasets

    # A non-streaming remote load goes through the datasets cache, which offline mode (set for every test, and read
    # by datasets once, at import) refuses.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    pairs = [(r["translation"]["en"], r["translation"]["it"]) for r in rows]
    corpus = corpora.load_corpus(parse_config(["--data_files", f"s3://{name}/parquet/*.parquet", "--valid_size", "10",
                                            "--test_size", "10"]))
    assert sorted(corpus["train"] + corpus["validation"] + corpus["test"]) == sorted(pairs)
    cfg = parse_config(["--data_files", f"s3://{name}/toy/*.jsonl", "--streaming", "--max_steps", "5",
                        "--valid_size", "10", "--test_size", "10"])
    validate(cfg)
    stream = corpora.load_corpus(cfg)
    assert stream["validation"] == pairs[:10] and stream["test"] == pairs[10:20]
    assert corpora.take_pairs(stream["train"], 400, cfg) == pairs  # both files, in order, through the glob


def test_missing_s3_files_are_a_clear_error(bucket):
    name, _ = bucket
    with pytest.raises(UserError, match=r"^--data_files: cannot load"):
        corpora.load_corpus(parse_config(["--data_files", f"s3://{name}/nothing/*.jsonl", "--streaming",
                                       "--max_steps", "5"]))
    with pytest.raises(UserError, match="only local files or only remote"):
        corpora.load_corpus(parse_config(["--data_files", f"s3://{name}/toy/*.jsonl,local.jsonl"]))


def test_checkpoints_need_a_mounted_folder():
    with pytest.raises(UserError, match="^--model_folder: must be a mounted folder"):
        validate(parse_config(["--model_folder", "s3://bucket/weights"]))


@pytest.mark.e2e
def test_two_ranks_train_streaming_from_s3(bucket, s3_server, tmp_path):
    name, _ = bucket
    folder = tmp_path / "weights"
    result = torchrun(2, [*TINY_MODEL, "--data_files", f"s3://{name}/toy/*.jsonl", "--streaming", "--max_steps", "4",
                          "--save_every", "2", "--valid_size", "20", "--test_size", "20", "--beam_size", "1",
                          "--model_folder", str(folder)],
                      extra=["--standalone"], env={**AWS_ENV, "AWS_ENDPOINT_URL": s3_server})
    assert result.returncode == 0, failure_report(result)
    assert "world size 2" in result.stdout and "done: 4 steps" in result.stdout
    assert [step for step, _ in checkpoint.list_checkpoints(str(folder))] == [2, 4]
