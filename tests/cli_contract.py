"""What the command-line tests share: a command run in-process, and the contract every refusal
keeps (exit code 2, one `error:` line naming the problem and the fix, no traceback)."""

from __future__ import annotations

from click.testing import CliRunner

from seer.runtime.cli import main as run_main


def run(args, main=run_main, env=None) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], env=env)
    return result.exit_code, result.output


def one_line_error(code: int, out: str, *needles: str) -> str:
    """Exit code 2 and exactly one `error:` line, the last, holding every needle; returns it."""
    assert code == 2, out
    lines = out.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in out, out
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]
