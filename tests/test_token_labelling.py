"""Token labelling (BIO tags) with deep and input prompts on encoders: reader, training, seqeval
metrics, round trip, prediction, and clear errors."""

import pytest

from softprompt import api
from softprompt.core import PromptArtifact
from softprompt.errors import ConfigError, DataError
from softprompt.tasks.conll import read_token_examples
from tiny import save_tiny

SENTENCES = [
    [("the", "O"), ("quick", "B-PER"), ("brown", "I-PER"), ("fox", "O")],
    [("a", "O"), ("great", "B-ORG"), ("cast", "I-ORG"), ("film", "O"), ("was", "O")],
    [("the", "O"), ("lazy", "B-LOC"), ("dog", "I-LOC")],
    [("boring", "O"), ("and", "O"), ("slow", "O"), ("quick", "B-PER")],
]


def write_conll(path, sentences, wikiann=False):
    lines = []
    for sentence in sentences:
        for word, tag in sentence:
            lines.append(f"en:{word}\t{tag}" if wikiann else f"{word} {tag}")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_reader_handles_conll_and_wikiann(tmp_path):
    conll = read_token_examples(write_conll(tmp_path / "a.txt", SENTENCES))
    wiki = read_token_examples(write_conll(tmp_path / "b", SENTENCES, wikiann=True))
    assert [e.tokens for e in conll] == [e.tokens for e in wiki]
    assert conll[1].tokens == ("a", "great", "cast", "film", "was") and conll[1].tags[1] == "B-ORG"
    assert conll[2].source.endswith("a.txt:12")


def test_reader_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("the O\nquick\n")
    with pytest.raises(DataError, match=r"bad\.txt:2: expected 'token tag'"):
        read_token_examples(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="no sentences"):
        read_token_examples(empty)
    with pytest.raises(DataError, match="file not found"):
        read_token_examples(tmp_path / "none.txt")


def _config(tmp_path, family, method):
    model = tmp_path / f"tiny-{family}"
    if not model.exists():
        save_tiny(family, model)
    train = write_conll(tmp_path / "train.txt", SENTENCES * 6)
    dev = write_conll(tmp_path / "dev.txt", SENTENCES)
    methods = {"ptuning_v2": {"name": "ptuning_v2", "prefix_length": 3},
               "prompt_tuning": {"name": "prompt_tuning", "num_virtual_tokens": 3, "init": "vocab"}}
    return {"name": "ner", "model": {"name": str(model)}, "task": {"kind": "token_labelling", "max_length": 32},
            "method": methods[method], "data": {"train": str(train), "dev": str(dev)},
            "training": {"steps": 40, "batch_size": 4, "lr": 0.05, "head_lr": 0.05, "eval_every": 20},
            "output": str(tmp_path / "runs" / f"{family}-{method}")}


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
@pytest.mark.parametrize("method", ["ptuning_v2", "prompt_tuning"])
def test_train_evaluate_round_trip_predict(tmp_path, family, method):
    result = api.train(_config(tmp_path, family, method), progress=False, log=lambda s: None)
    dev = result.metrics["dev"]
    assert {"f1", "precision", "recall", "accuracy"} <= set(dev)
    assert dev["accuracy"] > 0.6  # the tiny task is learnable: better than all-'O' (0.5)
    assert PromptArtifact.load(result.artifact).meta["task"]["labels"][0] == "O"
    again = api.evaluate(result.artifact, tmp_path / "dev.txt")
    assert again["f1"] == pytest.approx(dev["f1"]) and again["accuracy"] == pytest.approx(dev["accuracy"])
    (pred,) = api.predict(result.artifact, ["the quick brown fox"])
    assert len(pred.tags) == 4 and all(t in ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC") for t in pred.tags)


def test_token_labelling_on_a_causal_model_fails_at_configuration(tmp_path):
    config = _config(tmp_path, "gpt2", "ptuning_v2")
    with pytest.raises(ConfigError, match="needs an encoder model"):
        api.train(config, progress=False, log=lambda s: None)


def test_unknown_tag_in_dev_names_the_sentence(tmp_path):
    config = _config(tmp_path, "bert", "ptuning_v2")
    write_conll(tmp_path / "dev.txt", [[("the", "O"), ("fox", "B-ANIMAL")]])
    with pytest.raises(DataError, match=r"dev\.txt:1: unknown tag 'B-ANIMAL'"):
        api.train(config, progress=False, log=lambda s: None)
