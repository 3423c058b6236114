"""Tests only: launched by torchrun in place of train.py, runs train.py's main with the same arguments but the
--model_folder of this worker's global rank, $FOLDER_OF_RANK_<RANK>. Agents in a c10d rendezvous get their ranks in
no promised order; this way each global rank still sees the folder a test chose for it, as nodes that do not share
their drive would."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train  # noqa: E402

train.main([*sys.argv[1:], "--model_folder", os.environ[f"FOLDER_OF_RANK_{os.environ['RANK']}"]])
