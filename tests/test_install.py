"""The install recipes stay true: requirements-gpu-image.txt is requirements.txt with torch as a range that holds
the pin, the documented commands name files that exist and the pinned torch, and the recipe for a machine with its
own torch resolves, offline, to keeping the installed torch (docs/install.md#a-machine-with-its-own-torch)."""

import importlib.metadata
import json
import os
import re
import subprocess
import sys

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU_IMAGE = "requirements-gpu-image.txt"
# The oldest torch with torch.compiler.set_stance (runtime.eager) and torch.distributed.fsdp.fully_shard (parallel).
TORCH_FLOOR = "2.6"
# What docs/install.md tells a machine with its own torch to run, line by line.
RECIPE = ("python -c \"from importlib.metadata import version; print('torch==' + version('torch'))\" "
          "> /tmp/image-torch.txt &&",
          "pip install -r requirements-gpu-image.txt -c /tmp/image-torch.txt")


def read(name: str) -> str:
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def requirements(name: str) -> dict[str, Requirement]:
    """The requirements a file lists itself (not those of the files it includes with -r), by name."""
    lines = (line.split("#")[0].strip() for line in read(name).splitlines())
    found = [Requirement(line) for line in lines if line and not line.startswith("-")]
    return {req.name.lower(): req for req in found}


def pinned_torch() -> str:
    (spec,) = requirements("requirements.txt")["torch"].specifier
    assert spec.operator == "==", "requirements.txt pins torch: an unpinned one pulls a multi-GB CUDA build"
    return spec.version


def test_the_gpu_image_file_is_requirements_txt_with_torch_as_a_range_around_the_pin():
    runtime, gpu_image = requirements("requirements.txt"), requirements(GPU_IMAGE)
    torch_range = gpu_image.pop("torch").specifier
    runtime.pop("torch")
    assert {name: str(req) for name, req in gpu_image.items()} == {name: str(req) for name, req in runtime.items()}
    assert Version(pinned_torch()) in torch_range, f"bump {GPU_IMAGE}'s torch range with the pin"
    assert TORCH_FLOOR in torch_range and not torch_range.contains("2.5.1")
    # A build's local label (+cu126, +cpu) must not matter: the image's torch is one of those.
    assert torch_range.contains(f"{pinned_torch()}+cu126")


def test_the_documented_commands_name_files_that_exist_and_the_pinned_torch():
    readme, install = read("README.md"), read("docs/install.md")
    for text in (readme, install):
        for flag, path in re.findall(r"(?:^|\s)(-r|-c)\s+([\w./-]+)", text):
            if not path.startswith("/"):  # /tmp/image-torch.txt is written by the recipe's first line
                assert os.path.exists(os.path.join(ROOT, path)), f"{flag} {path}"
    assert GPU_IMAGE in readme and "docs/install.md#a-machine-with-its-own-torch" in readme
    assert "## A machine with its own torch" in install and "\n".join(RECIPE) in install
    assert "--no-deps" not in readme, "--no-deps replaced the image's torch and skipped the dependencies' own"
    for name in ("README.md", "docs/install.md", "runtime.py"):
        for version in re.findall(r"pip install torch==([\w.+]+)", read(name)):
            assert version == pinned_torch(), f"{name} installs torch {version}, requirements.txt pins it"


def test_the_recipe_keeps_the_installed_torch_offline(tmp_path):
    """The recipe's second line, resolved by pip against this environment without an index: the installed torch
    satisfies the range and the constraint written by the first line, so nothing is to be installed."""
    constraint = tmp_path / "image-torch.txt"
    constraint.write_text(f"torch=={importlib.metadata.version('torch')}\n")
    result = subprocess.run([sys.executable, "-m", "pip", "install", "-r", GPU_IMAGE, "-c", str(constraint),
                             "--dry-run", "--no-index", "--quiet", "--report", "-"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert [item["metadata"]["name"] for item in json.loads(result.stdout)["install"]] == []
