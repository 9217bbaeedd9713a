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
