"""Tiny random models of every listed family, built in-process from transformers configs (offline)."""

from __future__ import annotations

import functools

import torch
import transformers
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

CORPUS = [
    "a warm and funny film with a great cast",
    "the plot is dull and the acting is terrible",
    "what a wonderful surprise this movie was",
    "boring , slow and far too long",
    "it was great . it was bad . it was fine",
    "positive negative neutral good awful",
    "review : sentiment : question : answer : premise : hypothesis",
    "the quick brown fox jumps over the lazy dog",
]

# (config class, auto class, extra config) per family; sizes are tiny but every code path is real.
FAMILIES = {
    "gpt2": ("GPT2Config", "AutoModelForCausalLM", dict(n_embd=32, n_layer=2, n_head=4, n_positions=128)),
    "llama": ("LlamaConfig", "AutoModelForCausalLM", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)),
    "qwen2": ("Qwen2Config", "AutoModelForCausalLM", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)),
    "mistral": ("MistralConfig", "AutoModelForCausalLM", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                              num_attention_heads=4, num_key_value_heads=2,
                                                              max_position_embeddings=128, sliding_window=None)),
    "gpt_neox": ("GPTNeoXConfig", "AutoModelForCausalLM", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                               num_attention_heads=4, max_position_embeddings=128)),
    "opt": ("OPTConfig", "AutoModelForCausalLM", dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                                      num_attention_heads=4, max_position_embeddings=128,
                                                      word_embed_proj_dim=32)),
    "distilbert": ("DistilBertConfig", "AutoModel", dict(dim=32, hidden_dim=64, n_layers=2, n_heads=4,
                                                         max_position_embeddings=128)),
    "bert": ("BertConfig", "AutoModel", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, max_position_embeddings=128)),
    "roberta": ("RobertaConfig", "AutoModel", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                   num_attention_heads=4, max_position_embeddings=130)),
    "t5": ("T5Config", "AutoModelForSeq2SeqLM", dict(d_model=32, d_ff=64, d_kv=8, num_layers=2, num_decoder_layers=2,
                                                     num_heads=4)),
    "bart": ("BartConfig", "AutoModelForSeq2SeqLM", dict(d_model=32, encoder_layers=2, decoder_layers=2,
                                                         encoder_attention_heads=4, decoder_attention_heads=4,
                                                         encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128)),
}

CAUSAL = ("gpt2", "llama", "qwen2", "mistral", "gpt_neox", "opt")
ENCODERS = ("bert", "roberta", "distilbert")
SEQ2SEQ = ("t5", "bart")


@functools.lru_cache(maxsize=None)
def tiny_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained on CORPUS, with the special tokens the family expects."""
    specials = {
        "bert": dict(cls="[CLS]", sep="[SEP]", pad="[PAD]", unk="[UNK]", mask="[MASK]"),
        "distilbert": dict(cls="[CLS]", sep="[SEP]", pad="[PAD]", unk="[UNK]", mask="[MASK]"),
        "roberta": dict(cls="<s>", sep="</s>", pad="<pad>", unk="<unk>", mask="<mask>"),
        "bart": dict(cls="<s>", sep="</s>", pad="<pad>", unk="<unk>", mask="<mask>"),
        "t5": dict(pad="<pad>", eos="</s>", unk="<unk>"),
    }.get(family, dict(bos="<s>", eos="</s>", unk="<unk>", pad="<pad>"))
    order = [specials[k] for k in ("pad", "cls", "bos", "sep", "eos", "unk", "mask") if k in specials]
    tok = Tokenizer(models.WordLevel(unk_token=specials["unk"]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=order))
    if "cls" in specials:
        cls, sep = specials["cls"], specials["sep"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B {sep}",
            special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
        )
    elif family == "t5":
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
        )
    elif family in ("llama", "mistral"):
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    names = {"cls": "cls_token", "sep": "sep_token", "pad": "pad_token", "unk": "unk_token", "mask": "mask_token",
             "bos": "bos_token", "eos": "eos_token"}
    kwargs = {names[k]: v for k, v in specials.items()}
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def tiny_model(family: str, seed: int = 0):
    """A random model of the family and its tokenizer, in float32 eval mode."""
    config_name, auto_name, extra = FAMILIES[family]
    tokenizer = tiny_tokenizer(family)
    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    if tokenizer.eos_token_id is not None:
        ids["eos_token_id"] = tokenizer.eos_token_id
    if tokenizer.bos_token_id is not None:
        ids["bos_token_id"] = tokenizer.bos_token_id
    if family in SEQ2SEQ:
        ids["decoder_start_token_id"] = tokenizer.pad_token_id if family == "t5" else tokenizer.eos_token_id
    config = getattr(transformers, config_name)(**extra, **ids)
    config._attn_implementation = "eager" if family in ("gpt2",) else "sdpa"
    torch.manual_seed(seed)
    model = getattr(transformers, auto_name).from_config(config)
    model.eval()
    return model, tokenizer


def tiny_base(family: str, seed: int = 0):
    """A softprompt BaseModel around a tiny random model."""
    from softprompt.models import wrap_model

    model, tokenizer = tiny_model(family, seed)
    return wrap_model(model, tokenizer, f"tiny-{family}")


def save_tiny(family: str, path) -> str:
    """Write a tiny model and its tokenizer to a directory that load_base can read."""
    model, tokenizer = tiny_model(family)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
