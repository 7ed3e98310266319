"""PPT: self-supervised examples from running text, the unified multiple-choice format, pre-training
a prompt on a tiny model and starting a downstream run from it."""

import collections
import json

import pytest
import torch
from helpers import run_config
from tiny import save_tiny

from softprompt import api
from softprompt.core import PromptArtifact
from softprompt.errors import ConfigError, DataError
from softprompt.methods.prompt_tuning import PromptTuning, PromptTuningConfig
from softprompt.transfer import init_overrides
from softprompt.transfer.ppt import (
    PAIR_LABELS,
    next_sentence_choices,
    ppt_examples,
    pretrain_prompt,
    read_corpus,
    sentence_pair_examples,
    unified_pair,
    unified_task,
)

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "warm", "funny", "film", "great", "cast", "plot", "dull", "acting"]


def write_text(path, docs=6, per_doc=5, marked=True):
    """Documents of distinct sentences 'dD sS w w w': a sentence names its document and position."""
    lines = []
    for d in range(docs):
        if marked:
            lines.append("-DOCSTART-")
        lines += [f"doc{d} s{s} " + " ".join(WORDS[(d + s + k) % len(WORDS)] for k in range(4)) for s in range(per_doc)]
    path.write_text("\n".join(lines) + "\n")
    return path


def where(sentence):
    d, s = sentence.split()[:2]
    return int(d[3:]), int(s[1:])


def test_corpus_reads_documents_conll_and_windows(tmp_path):
    corpus = read_corpus(write_text(tmp_path / "t.txt"))
    assert len(corpus.documents) == 6 and not corpus.windowed and corpus.num_sentences == 30
    windows = read_corpus(write_text(tmp_path / "w.txt", marked=False), window=5)
    assert windows.windowed and [len(d) for d in windows.documents] == [5] * 6
    conll = tmp_path / "c.txt"
    conll.write_text("EU B-ORG\nrejects O\nGerman B-MISC\ncall O\n. O\n\nPeter B-PER\n\n"
                     "It O\nsaid O\nso O\ntoday O\n. O\n\n" * 3)
    found = read_corpus(conll, window=3)
    assert found.documents[0][:2] == ("EU rejects German call.", "It said so today.")  # "Peter": too short
    with pytest.raises(DataError, match="at least 2 documents"):
        read_corpus(write_text(tmp_path / "one.txt", docs=1))


def test_sentence_pairs_are_seeded_balanced_and_true_to_their_labels(tmp_path):
    corpus = read_corpus(write_text(tmp_path / "t.txt"))
    pairs = sentence_pair_examples(corpus, 60, seed=3)
    assert pairs == sentence_pair_examples(corpus, 60, seed=3) != sentence_pair_examples(corpus, 60, seed=4)
    assert collections.Counter(e.label for e in pairs) == {k: 20 for k in PAIR_LABELS}
    for e in pairs:
        (da, sa), (db, sb) = where(e.text), where(e.text_b)
        assert e.text != e.text_b
        if e.label == "next":
            assert (da, sb) == (db, sa + 1)
        elif e.label == "same_document":
            assert da == db and sb not in (sa, sa + 1)
        else:
            assert da != db
    unified = unified_pair(pairs[0])
    assert unified.label == "ABC"[PAIR_LABELS.index(pairs[0].label)] and "C. it comes from another text" in unified.text_b


def test_multiple_choice_has_one_true_next_sentence_at_a_seeded_position(tmp_path):
    corpus = read_corpus(write_text(tmp_path / "t.txt"))
    questions = next_sentence_choices(corpus, 40, n_options=4, seed=1)
    assert questions == next_sentence_choices(corpus, 40, n_options=4, seed=1)
    assert len({q.answer for q in questions}) == 4  # the true option moves around
    for q in questions:
        d, s = where(q.context)
        truths = [i for i, o in enumerate(q.options) if where(o) == (d, s + 1)]
        assert truths == [q.answer] and len(set(q.options)) == 4 and q.context not in q.options
    mixed = ppt_examples(corpus, 30, seed=0)
    assert len(mixed) == 30 and {e.label for e in mixed} <= set("ABC")
    assert sum("Which sentence comes next?" in e.text_b for e in mixed) == 15
    with pytest.raises(ConfigError, match="choose from pair, choice"):
        ppt_examples(corpus, 30, tasks=("nsp",))


def test_unified_task_renders_labels_as_lettered_options():
    task = unified_task({"0": "negative", "1": "positive"}, "What is the sentiment?")
    assert task["template"] == "{text}\nQuestion: What is the sentiment?\nOptions:\nA. negative\nB. positive\nAnswer: {mask}"
    assert task["verbalizer"] == {"0": "A", "1": "B"} and task["labels"] == ["0", "1"]
    assert "{{x}}" in unified_task({"a": "{x}", "b": "y"}, "q")["template"]  # braces stay literal


def test_pretrained_prompt_starts_a_downstream_run(tmp_path):
    model = save_tiny("gpt2", tmp_path / "tiny-gpt2")
    base = api.load_model(model)
    path = pretrain_prompt(model, write_text(tmp_path / "t.txt"), tmp_path / "ppt", steps=2, n_examples=30,
                           num_virtual_tokens=4, batch_size=4, base=base, log=lambda _: None)
    art = PromptArtifact.load(path)
    assert art.meta["transfer"]["strategy"] == "ppt" and art.meta["task"]["labels"] == ["A", "B", "C"]
    rows = [json.loads(line) for line in (tmp_path / "ppt" / "data" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 27 and all(r["text_b"].startswith("Question:") for r in rows)
    start = PromptTuning.initialise(PromptTuningConfig(4, init="artifact", init_from=[str(path)]), base)
    assert torch.equal(start.embedding, art.tensors["prompt.input"])
    with pytest.raises(ConfigError, match="set it to 4"):
        PromptTuning.initialise(PromptTuningConfig(6, init="artifact", init_from=[str(path)]), base)
    config = run_config(tmp_path, steps=1, eval_every=1)
    config["task"] = {**unified_task({"negative": "bad", "positive": "good"}, "How is it?"), "max_length": 64}
    run = api.train(config, init_overrides([path]), base=base, progress=False, log=lambda _: None)
    assert PromptArtifact.load(run.artifact).meta["method_config"]["init_from"] == [str(path)]


def test_news_datelines_open_documents_with_their_headline(tmp_path):
    """CoNLL copies without -DOCSTART- keep each article's headline, byline and dateline: an article
    starts at the headline before its dateline, and no windows are cut."""
    article = ("{head} B-ORG\nsays O\nit O\nwill O\nwin O\n. O\n\nPeter B-PER\nSmith I-PER\n\n{city} B-LOC\n1996-08-22 O\n\n"
               "The O\n{head} B-ORG\nteam O\nplayed O\nwell O\n. O\n\nIt O\nwas O\na O\ngood O\nday O\n. O\n\n")
    path = tmp_path / "news.txt"
    path.write_text("".join(article.format(head=h, city=c) for h, c in (("Acme", "LONDON"), ("Bolt", "NEW YORK"))))
    corpus = read_corpus(path)
    assert not corpus.windowed
    assert corpus.documents == (("Acme says it will win.", "The Acme team played well.", "It was a good day."),
                                ("Bolt says it will win.", "The Bolt team played well.", "It was a good day."))
    pooled = read_corpus([path, path])
    assert len(pooled.documents) == 4


def test_pair_and_single_formats_answer_with_words(tmp_path):
    from softprompt.transfer.ppt import PAIR_WORDS, pair_task, single_task

    pair = pair_task({"entailment": "yes", "not_entailment": "no"})
    assert pair["pair"] and pair["template"].endswith("Answer: {mask}") and pair["verbalizer"]["entailment"] == "yes"
    assert set(PAIR_WORDS.values()) == {"yes", "maybe", "no"}
    single = single_task({"0": "bad", "1": "good"})
    assert single["template"] == "{text} It was {mask}" and single["labels"] == ["0", "1"]
    with pytest.raises(ConfigError, match="at least two labels"):
        single_task({"0": "bad"})


def test_pseudo_labels_come_from_the_model_balanced_over_words(tmp_path):
    from softprompt.transfer.ppt import SINGLE_WORDS, pseudo_labelled

    base = api.load_model(save_tiny("gpt2", tmp_path / "tiny-gpt2"))
    sentences = [f"{a} {b} {c}" for a in WORDS[:6] for b in WORDS[6:12] for c in WORDS[12:]]
    labelled = pseudo_labelled(base, sentences, 40, seed=1)
    counts = collections.Counter(e.label for e in labelled)
    assert set(counts) <= set(SINGLE_WORDS) and max(counts.values()) <= 40 // len(SINGLE_WORDS)
    assert len({e.text for e in labelled}) == len(labelled) and {e.text for e in labelled} <= set(sentences)
    assert labelled == pseudo_labelled(base, sentences, 40, seed=1)


@pytest.mark.parametrize("fmt,labels", [("pair", ["next", "same_document", "random"]),
                                        ("single", ["terrible", "bad", "okay", "good", "great"])])
def test_pretraining_in_a_word_format_starts_a_task_in_that_format(tmp_path, fmt, labels):
    from softprompt.transfer.ppt import pair_task, single_task

    model = save_tiny("gpt2", tmp_path / "tiny-gpt2")
    base = api.load_model(model)
    path = pretrain_prompt(model, write_text(tmp_path / "t.txt"), tmp_path / "ppt", steps=2, n_examples=30,
                           num_virtual_tokens=4, batch_size=4, base=base, format=fmt, log=lambda _: None)
    art = PromptArtifact.load(path)
    assert art.meta["transfer"]["format"] == fmt and art.meta["task"]["labels"] == labels
    config = run_config(tmp_path, steps=1, eval_every=1)
    words = {"negative": "bad", "positive": "good"}
    config["task"] = {**(pair_task(words) if fmt == "pair" else single_task(words)), "max_length": 64}
    if fmt == "pair":
        config["data"]["text_b_field"] = "text"  # the toy data has one text: pair it with itself
    run = api.train(config, init_overrides([path]), base=base, progress=False, log=lambda _: None)
    assert PromptArtifact.load(run.artifact).meta["task"]["template"] == config["task"]["template"]
    with pytest.raises(ConfigError, match="format='letters' is not one of: unified, pair, single"):
        pretrain_prompt(model, tmp_path / "t.txt", tmp_path / "x", format="letters", base=base)
