"""The prompt library: stored artifacts and an index of what each one holds."""

from .store import CheckReport, Library, LibraryEntry, default_root, parse_ref
from .vectors import prompt_tokens, summary_vector

__all__ = ["CheckReport", "Library", "LibraryEntry", "default_root", "parse_ref", "prompt_tokens", "summary_vector"]
