import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, torch.get_num_threads()))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# model.dtype auto picks bfloat16 on a CPU with AMX or AVX-512 BF16; the exactness tests compare float32
# results, so auto means float32 here on every machine (tests of precision set their dtype themselves).
os.environ["SOFTPROMPT_DTYPE"] = "float32"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Tests never write to the user's cache, except the embedded-model tests that opt in.
    if "SOFTPROMPT_TEST_CACHE" not in os.environ:
        monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def missing_tool():
    """missing_tool(what, install) ends a test whose tool is not here: a skip locally, a failure under
    CI=true, where `make test` installs every such tool, so a skip would hide a test that never ran."""
    def missing(what: str, install: str):
        message = f"{what} is not installed: {install}"
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"{message} (CI=true: this test must run, not skip)", pytrace=False)
        pytest.skip(message)

    return missing
