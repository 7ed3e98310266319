"""Hard-prompt search on tiny models: calibration, demonstrations, candidate reports, APE,
AutoPrompt and soft-to-hard reading."""

import copy
import json

import pytest
import torch

from softprompt.errors import ConfigError, DataError
from softprompt.models import wrap_model
from softprompt.search import (HardPrompt, calibrate, content_free_probs, evaluate_candidates, expand_candidates,
                               hard_task, inspect_prompt, label_scores, sample_demonstrations, score_prompt,
                               search_autoprompt)
from softprompt.search.ape import APEConfig, clean_instruction, propose_instructions, search_ape
from softprompt.search.autoprompt import AutoPromptConfig
from softprompt.tasks.readers import Example
from softprompt.templates import TemplateError
from tiny import tiny_base, tiny_model

POS = ["a warm and funny film", "what a wonderful surprise", "a great film with a great cast", "good and great"]
NEG = ["boring and slow", "the plot is dull", "terrible acting", "slow and far too long"]
TRAIN = [Example(t, label="pos", source=f"train:{i}") for i, t in enumerate(POS)] + \
        [Example(t, label="neg", source=f"train:{i + 4}") for i, t in enumerate(NEG)]
DEV = [Example(t, label=label) for t, label in [("a great film", "pos"), ("dull and slow", "neg"),
                                                 ("funny and warm", "pos"), ("terrible plot", "neg")]]
WORDS = {"pos": "good", "neg": "bad"}


@pytest.fixture(scope="module")
def gpt2():
    return tiny_base("gpt2")


def test_calibration_makes_a_content_free_input_uniform(gpt2):
    prompt = HardPrompt("review : {text} sentiment : {mask}", WORDS)
    task = hard_task(gpt2, prompt)
    bias = content_free_probs(gpt2, task, ["N/A"])
    assert abs(float(bias[0] - bias[1])) > 1e-4  # the random model is biased
    raw = label_scores(gpt2, task, [Example("N/A")])
    fixed = calibrate(raw, bias).exp()
    torch.testing.assert_close(fixed, torch.full_like(fixed, 0.5), atol=1e-5, rtol=0)


def test_score_prompt_reports_raw_and_calibrated(gpt2):
    result = score_prompt(gpt2, HardPrompt("{text} it was {mask}", WORDS), DEV)
    assert 0 <= result.accuracy <= 1 and 0 <= result.calibrated_accuracy <= 1
    assert len(result.content_free) == 2 and abs(sum(result.content_free) - 1) < 1e-5
    assert result.to_dict()["n_examples"] == 4


def test_demonstrations_are_k_per_class_seeded_and_shuffled():
    a = sample_demonstrations(TRAIN, 2, seed=0)
    assert sorted(e.label for e in a) == ["neg", "neg", "pos", "pos"]
    assert a == sample_demonstrations(TRAIN, 2, seed=0)
    orders = {tuple(e.source for e in sample_demonstrations(TRAIN, 2, seed=s)) for s in range(6)}
    assert len(orders) > 1
    assert sample_demonstrations(TRAIN, 0) == []
    with pytest.raises(DataError, match="fewer than 5"):
        sample_demonstrations(TRAIN, 5)


def test_demonstrations_are_written_through_the_template_before_the_input(gpt2):
    prompt = HardPrompt("review : {text} sentiment : {mask}", WORDS)
    demos = sample_demonstrations(TRAIN, 1, seed=0)
    task = hard_task(gpt2, prompt, demonstrations=demos)
    text = gpt2.tokenizer.decode(task.prepare(DEV[0]).rows[0])
    first = f"review : {demos[0].text} sentiment : {WORDS[demos[0].label]}"
    assert text.startswith(first.lower())
    assert text.endswith("review : a great film sentiment :")
    # too little room: demonstrations are dropped, the input stays
    small = hard_task(gpt2, prompt, demonstrations=demos * 8, max_length=24)
    assert len(small.demonstrations) < 16


def test_chat_demonstrations_are_user_and_assistant_turns():
    model, tokenizer = tiny_model("llama")
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = ("{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
                               "{% if add_generation_prompt %}<s> assistant : {% endif %}")
    base = wrap_model(model, tokenizer, "tiny-chat")
    prompt = HardPrompt("review : {text} sentiment : {mask}", WORDS, chat=True)
    demos = sample_demonstrations(TRAIN, 1, seed=0)
    task = hard_task(base, prompt, demonstrations=demos)
    text = tokenizer.decode(task.prepare(DEV[0]).rows[0])
    # ("assistant" is not in the tiny vocabulary: <unk>) two demonstration turns, each answered, then the input
    for demo in demos:
        assert f"{demo.text} sentiment : </s> <s> <unk> : {WORDS[demo.label]} </s>" in text
    assert text.endswith("review : a great film sentiment : </s> <s> <unk> :")


def test_candidate_report_summarises_and_saves(gpt2, tmp_path):
    report = evaluate_candidates(gpt2, ["review : {text} sentiment : {mask}", "{text} it was {mask}"], DEV,
                                 verbalizers=[WORDS, {"pos": "great", "neg": "awful"}], progress=False)
    assert len(report.results) == 4
    scores = report.scores("accuracy")
    summary = report.summary("accuracy")
    assert summary["max"] == max(scores) and summary["range"] == max(scores) - min(scores)
    assert abs(summary["mean"] - sum(scores) / 4) < 1e-9
    assert report.best.score(report.metric) == max(report.scores())
    paths = report.save(tmp_path / "report")
    saved = json.loads(paths["json"].read_text())
    assert len(saved["results"]) == 4 and "std" in saved["summary"]["accuracy"]
    assert "median" in paths["md"].read_text() and paths["png"].stat().st_size > 1000


def test_few_shot_candidates_use_training_demonstrations(gpt2):
    report = evaluate_candidates(gpt2, ["review : {text} sentiment : {mask}"], DEV, verbalizers=[WORDS], train=TRAIN,
                                 k_shot=1, calibration=False, progress=False)
    assert report.results[0].n_demonstrations == 2 and report.metric == "accuracy"


@pytest.mark.parametrize("candidates, verbalizers, error, match", [
    ([], [WORDS], ConfigError, "no candidate templates"),
    (["{text} {mask}"], [{"pos": "good", "other": "bad"}], ConfigError, r"label\(s\) \['other'\] do not occur"),
    (["{text} sentiment :"], [WORDS], ConfigError, "needs an answer slot"),
    (["{text} {mask"], [WORDS], TemplateError, "column 8"),
    (["{text} {mask}"], [{"pos": "good"}], ConfigError, "at least two labels"),
])
def test_bad_candidates_are_clear_errors(gpt2, candidates, verbalizers, error, match):
    with pytest.raises(error, match=match):
        evaluate_candidates(gpt2, candidates, DEV, verbalizers=verbalizers, progress=False)


def test_dev_label_without_words_is_a_data_error(gpt2):
    with pytest.raises(DataError, match="label 'mid' has no verbalizer words"):
        score_prompt(gpt2, HardPrompt("{text} {mask}", WORDS), [*DEV, Example("fine", label="mid")])


def test_expand_keeps_a_template_s_own_verbalizer():
    prompts = expand_candidates([{"template": "{text} {mask}", "verbalizer": WORDS, "chat": True}, "{text} : {mask}"],
                                [WORDS, {"pos": "great", "neg": "awful"}])
    assert len(prompts) == 3 and prompts[0].chat


def test_autoprompt_lowers_the_training_loss(gpt2):
    config = AutoPromptConfig(template="{text} [P*3] {mask}", iterations=6, candidates=6, batch_size=8)
    result = search_autoprompt(gpt2, TRAIN, WORDS, dev=DEV, config=config, progress=False)
    assert result.losses[-1] < result.losses[0]
    assert all(b <= a for a, b in zip(result.losses, result.losses[1:]))
    assert len(result.trigger_ids) == 3 and result.score.source == "autoprompt"
    assert "{text}" in result.prompt.template and "[P" not in result.prompt.template


def test_autoprompt_needs_trigger_slots():
    with pytest.raises(ConfigError, match="needs trigger slots"):
        AutoPromptConfig(template="{text} {mask}")


def test_ape_scores_proposals_and_keeps_the_best(gpt2, monkeypatch):
    import softprompt.search.ape as ape

    monkeypatch.setattr(ape, "propose_instructions", lambda *a, **k: ["Say if it is good or bad.", "Rate it."])
    config = APEConfig(keep=1, score_examples=4, templates=[{"template": "{instruction} {text} : {mask}"}])
    result = search_ape(gpt2, TRAIN, WORDS, dev=DEV, config=config, progress=False)
    assert len(result.scored) == 2 and len(result.final) == 1
    assert result.final[0].extra["instruction"] in ("Say if it is good or bad.", "Rate it.")
    assert result.best.source == "ape"


def test_ape_proposals_from_a_real_generate_are_template_safe(gpt2, monkeypatch):
    # The seeded tiny model writes words for every draw, so this sees real proposals, never the DataError;
    # the decoded text is wrapped in template syntax, which each proposal must lose.
    decode = gpt2.tokenizer.decode
    monkeypatch.setattr(gpt2.tokenizer, "decode", lambda *a, **k: "{text} [P*2] " + decode(*a, **k) + " {mask}")
    out = propose_instructions(gpt2, TRAIN, WORDS, APEConfig(n_proposals=4, max_new_tokens=12), progress=False)
    assert len(out) >= 2 and len(set(out)) == len(out), out
    for instruction in out:
        assert instruction == clean_instruction(instruction) and not set(instruction) & set("{}[]\n"), instruction
        assert len(instruction.split()) >= 2 and instruction[0].isupper(), instruction
        HardPrompt(f"{instruction} {{text}} : {{mask}}", WORDS)  # parses as a template's instruction


def test_ape_says_so_when_the_model_writes_nothing(gpt2, monkeypatch):
    monkeypatch.setattr(gpt2.model, "generate", lambda input_ids, **kwargs: input_ids)  # no new tokens
    with pytest.raises(DataError, match=r"^APE: the model proposed no usable instruction"):
        propose_instructions(gpt2, TRAIN, WORDS, APEConfig(n_proposals=2, max_new_tokens=6), progress=False)


def test_clean_instruction():
    assert clean_instruction(' classify the {review}.\nMore') == "Classify the review."


def test_inspect_reads_back_exact_word_tokens(gpt2):
    from softprompt.api import build_task, method_config
    from softprompt.tasks.runner import TaskPrompt

    method_cls, cfg = method_config({"name": "prompt_tuning", "num_virtual_tokens": 2, "init": "text",
                                     "init_text": "great film"})
    task = build_task({"kind": "classification", "template": "{text} sentiment : {mask}", "verbalizer": WORDS},
                      gpt2, ["pos", "neg"], 2)
    unit = TaskPrompt("p", method_cls.initialise(cfg, gpt2), task)
    reading = inspect_prompt(unit, gpt2, DEV, top_k=3)
    assert [t.tokens[0].strip() for t in reading.tokens] == ["great", "film"]
    assert reading.tokens[0].cosine[0] == pytest.approx(1.0, abs=1e-5)
    assert reading.projected_metrics["accuracy"] == reading.soft_metrics["accuracy"]
    assert "projected prompt" in reading.to_text() and reading.to_dict()["virtual_tokens"][1]["index"] == 1


def test_inspect_refuses_deep_only_prompts(gpt2):
    from softprompt.tasks.runner import TaskPrompt

    with pytest.raises(ConfigError, match="no virtual input tokens"):
        inspect_prompt(TaskPrompt("p", None, None), gpt2)
