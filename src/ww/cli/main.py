"""The `ww` command: a click group, one module per subcommand, exit codes in one place.

Every error a user can cause ends as one line on stderr (``ww: ...``) and the exit status
the spec gives it; a traceback is printed only with ``--debug`` (or ``WW_DEBUG=1``).
"""

from __future__ import annotations

import sys

import click

from ww.core.errors import EXIT_FAILURE, EXIT_USAGE, WwError


class _Invocation:
    """What one :func:`run_cli` call was asked for that its error report needs: ``--debug``
    (set by the group's callback through click's context object, so that two calls in one
    process, in threads or one after the other, each keep their own)."""

    def __init__(self, debug: bool = False) -> None:
        self.debug = debug


# Every subcommand: name -> "module:attribute".  A command's module is imported only when
# that command runs (or for --help), so `ww run` never pays for the others' imports.
COMMANDS = {
    "run": "ww.cli.run:run",
    "schema": "ww.cli.schema:schema",
    "export": "ww.cli.export:export",
    "import": "ww.cli.import_:import_",
    "idgen": "ww.cli.idgen:idgen",
    "id": "ww.cli.id:id_",
    "call": "ww.cli.call:call",
    "repo": "ww.cli.repo:repo",
    "cat": "ww.cli.cat:cat",
    "ls": "ww.cli.ls:ls",
    "pin": "ww.cli.pin:pin",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        import importlib

        module, _, attribute = target.partition(":")
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, envvar="WW_DEBUG", help="Print tracebacks on errors.")
@click.option("--json", "json", is_flag=True, envvar="WW_JSON",
              help="Audit trail: one JSON line per login, grant, denial and sub-cell on stderr "
                   "(where a cell can forge lines; 'ww run --audit FILE' cannot be forged).")
@click.pass_context
def cli(ctx: click.Context, debug: bool, json: bool) -> None:
    """Wetware: run programs as cells in a jail, with capabilities over Cap'n Proto on fd 3."""
    if isinstance(ctx.obj, _Invocation):
        ctx.obj.debug = debug


def _print_traceback() -> None:
    import traceback

    traceback.print_exc()


def run_cli(argv: list[str] | None = None, failure: BaseException | None = None,
            debug: bool = False) -> int:
    """Run `ww` with ``argv`` (default: ``sys.argv[1:]``) in this process; its exit status.
    Or, given the ``failure`` of a `ww run` that :mod:`ww.cli.entry` parsed and ran without
    click, report it as if this command had raised it.

    Every error ends here as one line on stderr and the status its class carries
    (:mod:`ww.core.errors`); nothing exits the process, so tests and other Python code can
    call it.  Only :func:`main`, the console script, exits.
    """
    invocation = _Invocation()
    try:
        if failure is not None:
            invocation.debug = debug
            raise failure
        status = cli.main(args=argv, prog_name="ww", standalone_mode=False, obj=invocation)
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
    except WwError as e:
        if invocation.debug:
            _print_traceback()
        print(f"ww: {e}", file=sys.stderr)
        status = e.exit_code
    except KeyboardInterrupt:
        status = 128 + 2
    except Exception as e:  # a bug or an unexpected host failure: still one line
        if invocation.debug:
            _print_traceback()
        print(f"ww: internal error: {type(e).__name__}: {e} (rerun with --debug for details)",
              file=sys.stderr)
        status = EXIT_FAILURE
    return status if isinstance(status, int) else 0


def main(argv: list[str] | None = None, failure: BaseException | None = None,
         debug: bool = False) -> None:
    """The console script's click path: :func:`run_cli`, then exit at once with its status."""
    _exit(run_cli(argv, failure, debug))


def _exit(status: int) -> None:
    from ww.cli.entry import exit_now

    exit_now(status)
