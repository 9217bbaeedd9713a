"""Prompt files: one prompt per line; blank lines and lines starting with # are skipped."""

from __future__ import annotations

from pathlib import Path

from .errors import UsageError


def read_prompt_file(path: str | Path, what: str = "prompt file") -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} {path} does not exist; pass a text file with one prompt per line")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not prompts:
        raise UsageError(f"{what} {path} holds no prompts; write one prompt per line")
    return prompts
