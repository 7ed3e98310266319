"""The template grammar shared by hard prompts and P-tuning: fields, answer slot, virtual tokens, text."""

from .grammar import Field, Literal, Mask, Special, Template, TemplateError, Virtual, parse_template
from .demos import filled_text
from .render import RenderedRow, TemplateRenderer

__all__ = [
    "Field",
    "Literal",
    "Mask",
    "RenderedRow",
    "Special",
    "Template",
    "TemplateError",
    "TemplateRenderer",
    "Virtual",
    "filled_text",
    "parse_template",
]
