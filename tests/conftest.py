import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, torch.get_num_threads()))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Tests never write to the user's cache, except the embedded-model tests that opt in.
    if "SOFTPROMPT_TEST_CACHE" not in os.environ:
        monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
