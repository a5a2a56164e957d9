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


def pydantic_message(detail: dict) -> str:
    """One line for one pydantic error detail, naming the value it refused."""
    message = str(detail.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    kind = detail.get("type")
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return "unknown key"
    if "input" in detail and kind not in ("model_type", "dict_type", "list_type"):
        value = detail["input"]
        if not isinstance(value, (dict, list)) and repr(value) not in message:
            message = f"{message} (got {value!r})"
    return message
