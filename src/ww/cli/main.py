"""The `ww` command: a click group, one module per subcommand, exit codes in one place.

Every error a user can cause ends as one line on stderr (``ww: ...``) and the exit status
the spec gives it; a traceback is printed only with ``--debug`` (or ``WW_DEBUG=1``).
"""

from __future__ import annotations

import sys

import click

from ww.errors import EXIT_FAILURE, EXIT_USAGE, WwError
from ww.ipfs.api import IpfsError

_debug = False


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, envvar="WW_DEBUG", help="Print tracebacks on errors.")
def cli(debug: bool) -> None:
    """Wetware: run programs as cells in a jail, with capabilities over Cap'n Proto on fd 3."""
    global _debug
    _debug = debug


def _print_traceback() -> None:
    import traceback

    traceback.print_exc()


def _register() -> None:
    from ww.cli import export, idgen, import_, run, schema

    cli.add_command(run.run)
    cli.add_command(schema.schema)
    cli.add_command(export.export)
    cli.add_command(import_.import_)
    cli.add_command(idgen.idgen)


def main(argv: list[str] | None = None) -> None:
    _register()
    try:
        status = cli.main(args=argv, prog_name="ww", standalone_mode=False)
    except click.exceptions.Exit as e:
        status = e.exit_code
    except click.ClickException as e:
        hint = ""
        if isinstance(e, click.UsageError) and e.ctx is not None:
            hint = f" (see '{e.ctx.command_path} --help')"
        print(f"ww: {e.format_message()}{hint}", file=sys.stderr)
        status = e.exit_code if e.exit_code is not None else EXIT_USAGE
    except click.Abort:
        status = 128 + 2
    except (WwError, IpfsError) as e:
        if _debug:
            _print_traceback()
        print(f"ww: {e}", file=sys.stderr)
        status = getattr(e, "exit_code", EXIT_FAILURE)
    except KeyboardInterrupt:
        status = 128 + 2
    except Exception as e:  # a bug or an unexpected host failure: still one line
        if _debug:
            _print_traceback()
        print(f"ww: internal error: {type(e).__name__}: {e} (rerun with --debug for details)",
              file=sys.stderr)
        status = EXIT_FAILURE
    _exit(status if isinstance(status, int) else 0)


def _exit(status: int) -> None:
    """Exit at once: flush our output, then skip the interpreter's teardown.

    Tearing down the modules a command imported costs `ww run` milliseconds for nothing;
    every file `ww` writes is closed (and, where it matters, fsynced) by the code that
    wrote it, before this point.
    """
    import os

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)
