"""Prompt files (and class files): one prompt per line; blank lines and lines starting with # are skipped."""

from __future__ import annotations

from pathlib import Path

from .errors import UsageError


def read_prompt_file(path: str | Path, what: str = "prompt file", item: str = "prompt",
                     items: str = "prompts") -> list[str]:
    """The file's lines; `item` (`items`) is what a line holds, for the messages: a prompt, a class id or name."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} {path} does not exist; pass a text file with one {item} per line")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not prompts:
        raise UsageError(f"{what} {path} holds no {items}; write one {item} per line")
    return prompts
