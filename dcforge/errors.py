"""Errors that the CLI turns into one clear line and exit code 2 (bad input)."""

from __future__ import annotations

from pathlib import Path


class DcforgeError(Exception):
    """Base class of every error that is the user's input, not a bug in dcforge."""

    exit_code = 2


class ConfigError(DcforgeError):
    """A malformed environment or settings file: names the file and the key path."""

    def __init__(self, file: str | Path | None, key: str | None, message: str):
        self.file = str(file) if file is not None else None
        self.key = key
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [p for p in (self.file, self.key) if p]
        return ": ".join([*parts, self.message])


class ConfigErrors(DcforgeError):
    """Several problems found in one file; each is printed on its own line."""

    def __init__(self, errors: list[ConfigError]):
        self.errors = errors
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(error) for error in self.errors)
