"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class SoftpromptError(Exception):
    """A problem with the user's input, config, data or files: message says what, where and the fix."""


class ConfigError(SoftpromptError):
    """A configuration value is missing, unknown or out of range."""


class DataError(SoftpromptError):
    """A data file is missing, empty or malformed (the message names file and line)."""


class ArtifactError(SoftpromptError):
    """A prompt artifact cannot be read or does not fit the base model."""


class ModelError(SoftpromptError):
    """A base model cannot be loaded or is not supported."""
