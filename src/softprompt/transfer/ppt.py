"""PPT (Gu et al. 2022): prompts pre-trained on self-supervised tasks built from unlabelled text.

Running text (sentences in document order) gives two tasks:
- sentence pair, 3 classes: the second sentence is the next one, a later/earlier one of the same
  document, or one from another document
- multiple choice: which of n options is the true next sentence
and any single sentences give a third: single-sentence classification with pseudo-labels (PPT
labels sentences with a sentiment classifier; here the frozen base model labels them itself, its
zero-shot scores calibrated over the corpus, and the most confident sentences of each label are kept).

Each task comes in a *format* that downstream tasks can share, with words as answers:
- ``unified``: a passage, a question with lettered options, the answer letter at {mask}, for every
  task (:func:`unified_task` turns a classification task into it)
- ``pair``: two sentences and the answer yes / maybe / no (next / same document / another document);
  :func:`pair_task` renders a sentence-pair task (entailment: yes / no) the same way
- ``single``: ``{text} It was {mask}`` with five sentiment words; :func:`single_task` renders a
  single-sentence task the same way with its own words
The prompt then starts downstream prompt tuning: ``method.init=artifact
method.init_from=[ppt.safetensors]``; its number of virtual tokens must equal the downstream
``method.num_virtual_tokens`` (a mismatch is refused with the number to set, never silently repeated or cut).
"""

from __future__ import annotations

import json
import random
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, DataError
from ..tasks.readers import Example

PAIR_LABELS = ("next", "same_document", "random")
UNIFIED_TEMPLATE = "{text}\n{text_b}\nAnswer: {mask}"
PAIR_QUESTION = "How is sentence 2 related to sentence 1?"
PAIR_OPTIONS = {"next": "it is the next sentence", "same_document": "it comes from the same text, but not next",
                "random": "it comes from another text"}
CHOICE_QUESTION = "Which sentence comes next?"
PAIR_TEMPLATE = "{text}\n{text_b}\nAnswer: {mask}"
PAIR_WORDS = {"next": "yes", "same_document": "maybe", "random": "no"}
SINGLE_TEMPLATE = "{text} It was {mask}"
SINGLE_WORDS = ("terrible", "bad", "okay", "good", "great")
FORMATS = ("unified", "pair", "single")
DOC_MARKER = "-DOCSTART-"
# A news dateline ("BRUSSELS 1996-08-22") opens an article: CoNLL-2003 copies without -DOCSTART- keep them.
_DATELINE = re.compile(r"^[A-Z][A-Z .,'&/-]*\s+\d{4}-\d{2}-\d{2}$")
_SPACE_BEFORE = re.compile(r" ([.,;:!?%)\]}'](?:s\b)?|n't\b|'s\b)")


@dataclass(frozen=True)
class Corpus:
    """Sentences grouped into documents. windowed: the documents are fixed windows of one stream
    (no markers in the file), so neighbouring windows may be one article."""

    documents: tuple[tuple[str, ...], ...]
    windowed: bool = False

    @property
    def num_sentences(self) -> int:
        return sum(len(d) for d in self.documents)


@dataclass(frozen=True)
class ChoiceExample:
    """A multiple-choice question: context, options and the index of the true one."""

    context: str
    options: tuple[str, ...]
    answer: int


def _detokenise(tokens: Sequence[str]) -> str:
    return _SPACE_BEFORE.sub(r"\1", " ".join(tokens)).replace("( ", "(")


def _is_prose(tokens: Sequence[str]) -> bool:
    """Mostly words: leaves out score tables and lists of numbers (CoNLL has many)."""
    return sum(any(c.isalpha() for c in t) for t in tokens) >= 0.7 * len(tokens)


def read_corpus(path: str | Path | Sequence[str | Path], *, window: int = 20, min_words: int = 4) -> Corpus:
    """Running text of a file (or several, pooled): CoNLL token-per-line (blank line between
    sentences) or one sentence per line. `-DOCSTART-` lines split documents, and so do news datelines
    ("BRUSSELS 1996-08-22": the headline just before one moves with it); a file with neither is cut
    into windows of `window` sentences that count as documents. Sentences under `min_words` words
    (bylines) or mostly numbers (score tables) are left out."""
    if not isinstance(path, (str, Path)):
        parts = [read_corpus(p, window=window, min_words=min_words) for p in path]
        if not parts:
            raise DataError("no text files given")
        return Corpus(tuple(d for c in parts for d in c.documents), windowed=any(c.windowed for c in parts))
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: file not found (give running text: one sentence per line, or CoNLL)")
    lines = p.read_text(encoding="utf-8").splitlines()
    conll = any(not line.strip() for line in lines[:200]) and all(
        len(line.split()) >= 2 for line in lines[:200] if line.strip() and not line.startswith(DOC_MARKER))
    docs: list[list[str]] = [[]]
    marked = False
    current: list[str] = []
    raw = {"sentences": 0, "last_kept": -10}  # sentences seen, and the number of the last one kept

    def end_sentence():
        nonlocal marked
        if current:
            raw["sentences"] += 1
            sentence = " ".join(current)
            if _DATELINE.match(sentence):
                marked = True
                # the headline (kept just before, a byline at most between) opens the new article
                headline = docs[-1].pop() if docs[-1] and raw["sentences"] - raw["last_kept"] <= 3 else None
                if docs[-1]:
                    docs.append([])
                if headline:
                    docs[-1].append(headline)
            elif len(current) >= min_words and _is_prose(current):
                docs[-1].append(_detokenise(current))
                raw["last_kept"] = raw["sentences"]
            current.clear()

    for line in lines:
        text = line.strip()
        if text.startswith(DOC_MARKER):
            end_sentence()
            marked = True
            if docs[-1]:
                docs.append([])
        elif conll:
            if text:
                current.append(text.split()[0])
            else:
                end_sentence()
        elif text:
            current.extend(text.split())
            end_sentence()
    end_sentence()
    if not marked:
        if not isinstance(window, int) or window < 3:
            raise ConfigError(f"window={window!r} must be a whole number >= 3 (sentences per pseudo-document)")
        stream = docs[0]
        docs = [stream[i:i + window] for i in range(0, len(stream), window)]
    found = tuple(tuple(d) for d in docs if len(d) >= 2)
    if len(found) < 2:
        raise DataError(f"{path}: found {sum(len(d) for d in found)} usable sentences in {len(found)} document(s); "
                        f"self-supervised examples need at least 2 documents of 2+ sentences of {min_words}+ words")
    return Corpus(found, windowed=not marked)


def _other_document(corpus: Corpus, d: int, rng: random.Random) -> int:
    """A document index that is not d (nor, for windows of one stream, a neighbour of d)."""
    n = len(corpus.documents)
    near = {d - 1, d, d + 1} if corpus.windowed and n > 3 else {d}
    choices = [i for i in range(n) if i not in near]
    return rng.choice(choices)


def sentence_pair_examples(corpus: Corpus, n: int, seed: int = 0) -> list[Example]:
    """n sentence pairs, labels next / same_document / random in equal thirds (seeded, shuffled).

    No pair has one sentence twice (also not as two equal strings)."""
    if not isinstance(n, int) or n < 3:
        raise ConfigError(f"n={n!r}: ask for at least 3 sentence-pair examples (one per class)")
    rng = random.Random(seed)
    docs = corpus.documents
    long_docs = [i for i, d in enumerate(docs) if len(d) >= 3]
    if not long_docs:
        raise DataError("no document has 3 sentences: the 'same_document' class cannot be built")
    out: list[Example] = []
    for k in range(n):
        label = PAIR_LABELS[k % 3]
        for _ in range(100):
            if label == "next":
                d = rng.randrange(len(docs))
                i = rng.randrange(len(docs[d]) - 1)
                a, b = docs[d][i], docs[d][i + 1]
            elif label == "same_document":
                d = rng.choice(long_docs)
                i = rng.randrange(len(docs[d]))
                j = rng.choice([j for j in range(len(docs[d])) if j not in (i, i + 1)])
                a, b = docs[d][i], docs[d][j]
            else:
                d = rng.randrange(len(docs))
                a = rng.choice(docs[d])
                b = rng.choice(docs[_other_document(corpus, d, rng)])
            if a != b:
                break
        else:
            raise DataError("the text repeats one sentence too often to build distinct pairs")
        out.append(Example(a, b, label, source=f"ppt:pair:{k}"))
    rng.shuffle(out)
    return out


def next_sentence_choices(corpus: Corpus, n: int, n_options: int = 3, seed: int = 0) -> list[ChoiceExample]:
    """n questions 'which option is the next sentence': one true option at a seeded position; one
    distractor from the same document where it has one, the others from other documents."""
    if not isinstance(n_options, int) or not 2 <= n_options <= 26:
        raise ConfigError(f"n_options={n_options!r} must be 2..26")
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"n={n!r}: ask for at least one multiple-choice example")
    rng = random.Random(seed)
    docs = corpus.documents
    out = []
    for k in range(n):
        for _ in range(100):
            d = rng.randrange(len(docs))
            i = rng.randrange(len(docs[d]) - 1)
            context, true = docs[d][i], docs[d][i + 1]
            same = [s for j, s in enumerate(docs[d]) if j not in (i, i + 1)]
            wrong = [rng.choice(same)] if same else []
            while len(wrong) < n_options - 1:
                wrong.append(rng.choice(docs[_other_document(corpus, d, rng)]))
            if len({context, true, *wrong}) == n_options + 1:
                break
        else:
            raise DataError("the text repeats sentences too often to build distinct options")
        answer = rng.randrange(n_options)
        options = wrong[:answer] + [true] + wrong[answer:]
        out.append(ChoiceExample(context, tuple(options), answer))
    return out


def letters(n: int) -> list[str]:
    """Option letters A, B, C, ... (the label words of the unified format)."""
    return list(string.ascii_uppercase[:n])


def render_options(question: str, options: Sequence[str]) -> str:
    """'Question: ...' and one lettered line per option."""
    return "\n".join([f"Question: {question}", "Options:", *(f"{k}. {o}" for k, o in zip(letters(len(options)), options))])


def unified_pair(example: Example) -> Example:
    """A 3-class sentence pair in the unified multiple-choice format (label: an option letter)."""
    text = f"Sentence 1: {example.text}\nSentence 2: {example.text_b}"
    letter = letters(3)[PAIR_LABELS.index(example.label)]
    return Example(text, render_options(PAIR_QUESTION, [PAIR_OPTIONS[k] for k in PAIR_LABELS]), letter, example.source)


def unified_choice(example: ChoiceExample) -> Example:
    """A next-sentence question in the unified multiple-choice format."""
    return Example(example.context, render_options(CHOICE_QUESTION, example.options), letters(len(example.options))[example.answer])


def unified_task(words: Mapping[str, str], question: str, *, max_length: int = 256) -> dict:
    """A classification task section rendered in the unified multiple-choice format.

    words: label -> the option text shown for it (e.g. {"0": "negative", "1": "positive"}); the
    model answers with the option's letter."""
    if len(words) < 2:
        raise ConfigError("a multiple-choice task needs at least two labels")
    keys = letters(len(words))
    options = render_options(question, list(words.values())).replace("{", "{{").replace("}", "}}")
    return {"kind": "classification", "template": "{text}\n" + options + "\nAnswer: {mask}",
            "labels": [str(k) for k in words], "verbalizer": dict(zip(map(str, words), keys)),
            "max_length": max_length}


def pair_task(words: Mapping[str, str], *, max_length: int = 256) -> dict:
    """A sentence-pair classification task section in the PPT pair format: both texts, then the
    answer word (pre-training answers yes / maybe / no; entailment would answer yes / no)."""
    if len(words) < 2:
        raise ConfigError("a sentence-pair task needs at least two labels")
    return {"kind": "classification", "template": PAIR_TEMPLATE, "labels": [str(k) for k in words],
            "verbalizer": {str(k): v for k, v in words.items()}, "pair": True, "max_length": max_length}


def single_task(words: Mapping[str, str], *, max_length: int = 256) -> dict:
    """A single-sentence classification task section in the PPT single-sentence format
    (``{text} It was {mask}``) with the task's own label words."""
    if len(words) < 2:
        raise ConfigError("a classification task needs at least two labels")
    return {"kind": "classification", "template": SINGLE_TEMPLATE, "labels": [str(k) for k in words],
            "verbalizer": {str(k): v for k, v in words.items()}, "max_length": max_length}


def pseudo_labelled(base, sentences: Sequence[str], n: int, *, words: Sequence[str] = SINGLE_WORDS, seed: int = 0,
                    pool: int = 4, batch_size: int = 32, max_length: int = 128) -> list[Example]:
    """About n sentences labelled by the frozen base model itself, the same number per word.

    The model scores every word at the answer slot of SINGLE_TEMPLATE for up to pool * n sentences
    (seeded sample); each word's mean score over them is subtracted (the corpus-level prior, as
    contextual calibration subtracts a content-free one), and each word keeps the sentences that
    prefer it by the widest margin. Each sentence is used once; a word that fewer sentences prefer
    keeps fewer."""
    import torch

    from ..core import PromptedModel
    from ..tasks.classification import ClassificationConfig, ClassificationTask
    from ..tasks.runner import Prepared, TaskPrompt, predict_logits

    if not isinstance(n, int) or n < len(words):
        raise ConfigError(f"n={n!r}: ask for at least one pseudo-labelled sentence per word ({len(words)})")
    rng = random.Random(seed)
    unique = sorted(set(sentences))
    picked = rng.sample(unique, min(len(unique), pool * n))
    verbalizer = {w: w for w in words}
    task = ClassificationTask(ClassificationConfig(template=SINGLE_TEMPLATE, verbalizer=verbalizer,
                                                   max_length=max_length), base, list(words))
    unit = TaskPrompt("ppt-label", None, task)
    items = [Prepared(unit.key, task.prepare(Example(text, source=f"ppt:sentence:{i}"))) for i, text in enumerate(picked)]
    scores = torch.stack(predict_logits(PromptedModel(base), {unit.key: unit}, items, batch_size))
    calibrated = torch.log_softmax(scores, dim=1)
    calibrated = calibrated - calibrated.mean(0, keepdim=True)
    top2 = calibrated.topk(2, dim=1)
    choice, margin = top2.indices[:, 0], top2.values[:, 0] - top2.values[:, 1]
    per_word = n // len(words)
    out = []
    for c, word in enumerate(words):
        mine = [i for i in range(len(picked)) if int(choice[i]) == c]
        mine.sort(key=lambda i: -float(margin[i]))
        out += [Example(picked[i], None, word, source=f"ppt:single:{i}") for i in mine[:per_word]]
    rng.shuffle(out)
    return out


def ppt_examples(corpus: Corpus, n: int, *, tasks: Sequence[str] = ("pair", "choice"), n_options: int = 3,
                 seed: int = 0) -> list[Example]:
    """n unified examples, split evenly over the self-supervised tasks, shuffled (seeded)."""
    unknown = sorted(set(tasks) - {"pair", "choice"})
    if unknown or not tasks:
        raise ConfigError(f"tasks={list(tasks)!r}: choose from pair, choice")
    share = [n // len(tasks) + (i < n % len(tasks)) for i in range(len(tasks))]
    out: list[Example] = []
    for task, m in zip(tasks, share):
        if task == "pair":
            out += [unified_pair(e) for e in sentence_pair_examples(corpus, max(m, 3), seed)]
        else:
            out += [unified_choice(e) for e in next_sentence_choices(corpus, m, n_options, seed + 1)]
    random.Random(seed).shuffle(out)
    return out


def write_jsonl(examples: Sequence[Example], path: str | Path) -> Path:
    """Examples as JSONL rows {text, text_b, label}."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for e in examples:
            handle.write(json.dumps({"text": e.text, "text_b": e.text_b, "label": e.label}) + "\n")
    return path


def pretrain_prompt(model, text_path: str | Path | Sequence[str | Path], out: str | Path, *, steps: int = 200,
                    n_examples: int = 2000, tasks: Sequence[str] = ("pair", "choice"), num_virtual_tokens: int = 20,
                    n_options: int = 3, lr: float = 0.03, batch_size: int = 8, seed: int = 0, window: int = 20,
                    max_length: int = 256, format: str = "unified", sentences: Sequence[str] | None = None,
                    overrides: Sequence[str] = (), base=None, progress: bool = False,
                    log: Callable[[str], None] = print) -> Path:
    """Pre-train a prompt-tuning prompt on self-supervised tasks from running text; returns the artifact path.

    model: a model name or path (or a model section). format: ``unified`` (the tasks in lettered
    multiple choice), ``pair`` (3-class sentence pairs answered yes / maybe / no; `tasks` unused) or
    ``single`` (sentences pseudo-labelled with five sentiment words, see :func:`pseudo_labelled`;
    from `sentences`, else from the running text). The generated examples go to out/data/*.jsonl (a
    tenth held out as dev); the run goes to out/ and the prompt to out/prompt.safetensors.
    """
    from ..core import PromptArtifact
    from ..training.distributed import processes
    from ..training.run import load_model
    from ..training.run import train as train_run

    if format not in FORMATS:
        raise ConfigError(f"format={format!r} is not one of: {', '.join(FORMATS)}")
    corpus = read_corpus(text_path, window=window)
    out = Path(out)
    model_section = model if isinstance(model, Mapping) else {"name": str(model)}
    if format == "unified":
        examples = ppt_examples(corpus, n_examples, tasks=tasks, n_options=n_options, seed=seed)
        labels = letters(max(3 if "pair" in tasks else 0, n_options if "choice" in tasks else 0))
        task = {"kind": "classification", "template": UNIFIED_TEMPLATE, "labels": labels, "pair": True,
                "max_length": max_length}
        what = ", ".join(tasks)
    elif format == "pair":
        examples = sentence_pair_examples(corpus, n_examples, seed)
        task = pair_task(PAIR_WORDS, max_length=max_length)
        what = "sentence pairs, yes / maybe / no"
    else:
        base = base or load_model(model_section)
        pool = list(sentences) if sentences is not None else [t for d in corpus.documents for t in d]
        examples = pseudo_labelled(base, pool, n_examples, seed=seed, max_length=max_length)
        task = single_task({w: w for w in SINGLE_WORDS}, max_length=max_length)
        what = "single sentences, pseudo-labelled " + " / ".join(SINGLE_WORDS)
    n_dev = max(3, len(examples) // 10)
    # Under `accelerate launch` every process makes the same examples (seeded); the main one writes them.
    procs = processes()
    if not procs.main:
        log = lambda message: None  # noqa: E731
    train, dev = out / "data" / "train.jsonl", out / "data" / "dev.jsonl"
    if procs.main:
        write_jsonl(examples[n_dev:], train)
        write_jsonl(examples[:n_dev], dev)
    procs.barrier()
    config = {
        "name": "ppt",
        "model": model_section,
        "task": task,
        "method": {"name": "prompt_tuning", "num_virtual_tokens": num_virtual_tokens, "init": "vocab", "seed": seed},
        "data": {"train": str(train), "dev": str(dev), "text_b_field": "text_b" if task.get("pair") else None},
        "training": {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                     "eval_every": max(1, steps // 4), "log_every": max(1, steps // 10)},
        "output": str(out),
    }
    log(f"ppt ({format}): {corpus.num_sentences} sentences in {len(corpus.documents)} documents"
        f"{' (windows)' if corpus.windowed else ''}; {len(examples) - n_dev} training examples ({what})")
    run = train_run(config, overrides, base=base, progress=progress, log=log)
    artifact = PromptArtifact.load(run.artifact)
    texts = [str(text_path)] if isinstance(text_path, (str, Path)) else [str(t) for t in text_path]
    artifact.meta["transfer"] = {"strategy": "ppt", "format": format, "text": texts[0] if len(texts) == 1 else texts,
                                 "tasks": list(tasks) if format == "unified" else [format],
                                 "n_examples": len(examples), "n_options": n_options, "window": window}
    if procs.main:
        artifact.save(run.artifact)
    procs.barrier()
    return run.artifact
