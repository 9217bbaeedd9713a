"""What both command-line tools share: user errors become one line on stderr and exit code 2; Ctrl-C
and SIGTERM (what `kill`, systemd, Kubernetes and Ray send to stop a process) end a run the same
way, through every cleanup on the way out."""

from __future__ import annotations

import functools
import signal
import sys

import click

from .errors import SeerError
from .oserrors import describe, is_environment_error
from .signals import Terminated, sigterm_unwinds


class Command(click.Command):
    """A seer command: click's own usage errors (a missing option, a value of the wrong type) end like
    seer's, in one `error:` line and exit code 2, instead of click's usage block."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:
            name = e.ctx.command_path if e.ctx else (prog_name or self.name)
            click.echo(f"error: {e.format_message().rstrip('.')}; see {name} --help", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("interrupted", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)  # what click's standalone mode does after a command


def command():
    """`@command()` in place of `@click.command(...)`: seer's error handling and help layout."""
    return click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"],
                                                        "max_content_width": 100})


def user_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with sigterm_unwinds():
                return fn(*args, **kwargs)
        except SeerError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except Terminated:
            click.echo("terminated", err=True)
            sys.exit(128 + signal.SIGTERM)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except OSError as e:
            # the machine's state (disk full, read-only, permissions), not a bug: one line. Any other
            # OSError stays a traceback: that is how bugs get reported.
            if not is_environment_error(e):
                raise
            click.echo(f"error: {describe(e, alternative='choose another path')}", err=True)
            sys.exit(2)

    return wrapper
