import pytest
from hypothesis import given, settings, strategies as st

from softprompt.core import virtual
from softprompt.models import ModelKind
from softprompt.templates import Field, Literal, Mask, Special, TemplateError, TemplateRenderer, Virtual, parse_template
from tiny import tiny_tokenizer


def test_parse_all_part_kinds():
    t = parse_template("[P*3] Review: {text} {sep} {{literal}} [P] It was {mask}.")
    assert t.parts == (
        Virtual(3), Literal(" Review: "), Field("text"), Literal(" "), Special("sep"),
        Literal(" {literal} "), Virtual(1), Literal(" It was "), Mask(), Literal("."),
    )
    assert t.num_virtual == 4 and t.fields == ("text",) and t.has_mask


@pytest.mark.parametrize("source, column, what", [
    ("Review: {text", 9, "never closed"),
    ("a } b", 3, "without '{'"),
    ("{te xt}", 1, "not a field name"),
    ("{mask} and {mask}", 12, "appears twice"),
    ("[P*0] {text}", 1, "1..4096"),
    ("[P*x] {text}", 1, r"\[P\*n\]"),
])
def test_errors_name_the_column(source, column, what):
    with pytest.raises(TemplateError, match=f"column {column}: .*{what}"):
        parse_template(source)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("{}[]P*0123456789abc_ mask")), max_size=40) | st.text(max_size=40))
def test_any_string_parses_or_gives_a_clear_error(source):
    try:
        template = parse_template(source)
    except TemplateError as exc:
        assert "column" in str(exc)
    else:
        assert template.source == source


def test_render_causal_strips_space_before_answer_and_cuts_after_it():
    tok = tiny_tokenizer("gpt2")
    r = TemplateRenderer(parse_template("review : {text} sentiment : {mask} ."), tok, ModelKind.CAUSAL, 64)
    row = r.render({"text": "great cast"}, n_prefix=2)
    words = tok.convert_ids_to_tokens([i for i in row.ids if i >= 0])
    assert words == ["review", ":", "great", "cast", "sentiment", ":"]
    assert list(row.ids[:2]) == [virtual(0), virtual(1)] and row.answer_space


def test_render_encoder_wraps_in_special_tokens_and_puts_prompt_after_cls():
    tok = tiny_tokenizer("bert")
    r = TemplateRenderer(parse_template("{text} {sep} {text_b}"), tok, ModelKind.ENCODER, 64)
    row = r.render({"text": "good", "text_b": "bad"}, n_prefix=1)
    assert row.ids[0] == tok.cls_token_id and row.ids[1] == virtual(0) and row.ids[-1] == tok.sep_token_id
    assert tok.sep_token_id in row.ids[2:-1]


def test_render_shortens_the_longest_field_to_fit():
    tok = tiny_tokenizer("gpt2")
    r = TemplateRenderer(parse_template("review : {text} sentiment : {mask}"), tok, ModelKind.CAUSAL, 12)
    row = r.render({"text": " ".join(["great"] * 40)}, n_prefix=3)
    assert len(row.ids) <= 12
    assert tok.convert_ids_to_tokens(list(row.ids[-2:])) == ["sentiment", ":"]


def test_template_longer_than_max_length_is_a_data_error():
    from softprompt.errors import DataError

    tok = tiny_tokenizer("gpt2")
    r = TemplateRenderer(parse_template("review " * 20 + "{text} {mask}"), tok, ModelKind.CAUSAL, 10)
    with pytest.raises(DataError, match="max_length=10"):
        r.render({"text": "good"}, where="x.jsonl:3")


def test_chat_option_wraps_the_user_text_in_the_chat_template():
    from softprompt.errors import ConfigError
    from softprompt.tasks.classification import chat_wrapped

    tok = tiny_tokenizer("gpt2")
    template = parse_template("review : {text} sentiment : {mask}")
    with pytest.raises(ConfigError, match="no chat template"):
        chat_wrapped(template, tok, ModelKind.CAUSAL)
    tok = tok.__class__(tokenizer_object=tok.backend_tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok.chat_template = "{% for m in messages %}<s> {{ m['content'] }} </s>{% endfor %}{% if add_generation_prompt %} answer :{% endif %}"
    wrapped = chat_wrapped(template, tok, ModelKind.CAUSAL)
    row = TemplateRenderer(wrapped, tok, ModelKind.CAUSAL, 64).render({"text": "great cast"})
    words = tok.convert_ids_to_tokens(list(row.ids))
    assert words == ["<s>", "review", ":", "great", "cast", "sentiment", ":", "</s>", "answer", ":"]
    assert row.answer_space is False
