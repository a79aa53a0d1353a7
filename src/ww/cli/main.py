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
    "daemon": "ww.cli.daemon:daemon",
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
        _show_envvars(command)
        return command


def _show_envvars(command: click.Command) -> None:
    """Have ``--help`` name the ``WW_*`` variable of each option of ``command`` (and of its
    subcommands) that reads one: ``[env var: WW_JAIL]``."""
    for param in command.params:
        if isinstance(param, click.Option) and param.envvar:
            param.show_envvar = True
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _show_envvars(sub)


def _from_environment(e: click.BadParameter) -> str | None:
    """The variable a refused option value came from, if it came from one."""
    param, ctx = e.param, e.ctx
    if param is None or ctx is None or param.name is None or not param.envvar:
        return None
    if ctx.get_parameter_source(param.name) is not click.core.ParameterSource.ENVIRONMENT:
        return None
    import os

    names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar)
    return next((name for name in names if os.environ.get(name)), names[0])


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wetware", prog_name="ww", message="%(prog)s %(version)s",
                      help="Print the version of ww and exit.")
@click.option("--debug", is_flag=True, envvar="WW_DEBUG", show_envvar=True,
              help="Print tracebacks on errors.")
@click.option("--json", "json", is_flag=True, envvar="WW_JSON", show_envvar=True,
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
    except click.exceptions.NoArgsIsHelpError as e:  # a bare `ww` (or `ww repo`) asks for help
        click.echo(e.ctx.get_help())
        status = 0
    except click.ClickException as e:
        if isinstance(e, click.BadParameter) and isinstance(e.param, click.Option):
            # The option as given; click (8.2 on) would name its variable even when the
            # value came from the command line.
            flags = " / ".join(f"'{opt}'" for opt in e.param.opts)
            name = _from_environment(e)
            e.param_hint = f"{flags} (from {name})" if name else flags
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
