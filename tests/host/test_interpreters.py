"""A program's ``#!`` line is content: it never chooses which host directories the jail shows.

Every case runs the real `ww run` on a real script in the real jail.  The hostile layouts are
the ones a #! line could point at: a virtualenv made in a project's root (``python -m venv
.``: the project, its secrets, a ``pyvenv.cfg`` and a ``bin/python3``), and a program of any
kind next to an empty ``lib/python3.x``.  Both used to be bound whole as "installations".
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import HANG, run_ww


def project(root: Path, interpreter: str, *, venv: bool = True, link: bool = False) -> Path:
    """A project directory with a secret, looking like a Python installation."""
    (root / "bin").mkdir(parents=True)
    (root / "lib" / "python3.11").mkdir(parents=True)
    (root / ".env").write_text("API_KEY=project-secret\n")
    if venv:
        (root / "pyvenv.cfg").write_text("home = /usr/bin\n")
    exe = root / "bin" / "python3"
    if link:  # a symlink to a system file, as a virtualenv has
        exe.symlink_to(os.path.realpath(interpreter))
    else:  # a file of its own outside the system directories
        shutil.copy(interpreter, exe)
        exe.chmod(0o755)
    return exe


def script(path: Path, interpreter: Path | str, body: str) -> str:
    path.write_text(f"#!{interpreter}\n{body}")
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("venv", [True, False], ids=["virtualenv-in-project", "empty-lib-python"])
def test_a_hashbang_into_a_project_is_refused_and_shows_nothing_of_it(tmp_path, venv):
    exe = project(tmp_path / "proj", "/bin/sh", venv=venv)  # a shell that calls itself python3
    cell = script(tmp_path / "cell", exe, f"cat {tmp_path}/proj/.env; echo ran\n")
    r = run_ww("run", cell)
    assert r.returncode == 126, (r.stdout, r.stderr)
    assert r.stdout == ""  # never started: nothing of the project read
    assert r.stderr.count("\n") == 1 and "--interpreter" in r.stderr, r.stderr


def test_a_virtualenv_python_that_is_the_systems_runs_without_its_directory(tmp_path):
    # bin/python3 -> the system's python: the jail shows that one file at the path named,
    # and the cell runs on the system's Python with nothing of the project around it.
    system_python = os.path.realpath("/usr/bin/python3")
    exe = project(tmp_path / "proj", "/usr/bin/python3", link=True)
    assert os.path.realpath(exe) == system_python
    cell = script(tmp_path / "cell.py", exe, (
        "import os, sys\n"
        f"print(sorted(os.listdir({str(tmp_path / 'proj')!r})), sys.prefix)\n"))
    r = run_ww("run", cell)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["['bin']", "/usr"]


def test_an_interpreter_the_operator_names_gets_its_installation(tmp_path):
    exe = project(tmp_path / "proj", "/bin/sh")
    cell = script(tmp_path / "cell", exe, f"cat {tmp_path}/proj/.env\n")
    r = run_ww("run", "--interpreter", str(exe), cell)
    assert (r.returncode, r.stdout) == (0, "API_KEY=project-secret\n"), r.stderr


@pytest.mark.parametrize("value", ["relative/python3", "/no/such/python3-ww"])
def test_a_bad_interpreter_flag_is_a_usage_error(value):
    r = run_ww("run", "--interpreter", value, "/bin/true")
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("ww: --interpreter "), r.stderr


def test_the_python_ww_runs_on_is_bound_minimally(make_cell):
    # The SDK cell needs the virtualenv's site-packages, pyvenv.cfg and its interpreter: not
    # the rest of the virtualenv (other programs in its bin, which could be anything), and
    # never the directory the virtualenv was made in.
    venv = sys.prefix
    cell = make_cell(f"""
        import os, sys, ww.cell
        print(sys.prefix == {venv!r})
        print(sorted(os.listdir({venv!r})))
        print(os.listdir({os.path.dirname(sys.executable)!r}))
    """)
    r = run_ww("run", cell)
    assert r.returncode == 0, r.stderr
    same, entries, in_bin = r.stdout.splitlines()
    assert same == "True"
    assert set(eval(entries)) <= {"bin", "lib", "lib64", "pyvenv.cfg"}
    assert eval(in_bin) == ["python3"]  # the one `#!/usr/bin/env python3` resolved to


def test_a_sub_cell_from_ipfs_cannot_bind_a_project_with_its_hashbang(make_cell, tmp_path):
    exe = project(tmp_path / "proj", "/bin/sh")
    hostile = script(tmp_path / "hostile", exe, f"cat {tmp_path}/proj/.env; echo ran\n")
    r = run_ww("export", hostile)
    assert r.returncode == 0, r.stderr
    program = r.stdout.strip()
    parent = make_cell(f"""
        import ww.cell
        with ww.cell.session() as s:
            child = s.exec.spawn("{program}")
            out, err = child.stdout.read_all(), child.stderr.read_all()
            print("status", child.wait())
            print("stdout", out)
            print("stderr", err.decode().strip())
    """)
    r = run_ww("run", "--with-ipfs", "--with-exec", parent)
    assert r.returncode == 0, r.stderr
    status, out, err = r.stdout.splitlines()
    assert status == "status 126"
    assert out == "stdout b''"
    assert "--interpreter" in err and "project-secret" not in r.stdout


def test_interpreter_flags_reach_sub_cells(make_cell, tmp_path):
    # The operator's --interpreter is handed to sub-cells like the other flags: the same
    # program the previous test refuses runs when the operator named its interpreter.
    exe = project(tmp_path / "proj", "/bin/sh")
    named = script(tmp_path / "named", exe, f"cat {tmp_path}/proj/.env\n")
    r = run_ww("export", named)
    assert r.returncode == 0, r.stderr
    parent = make_cell(f"""
        import ww.cell
        with ww.cell.session() as s:
            child = s.exec.spawn("{r.stdout.strip()}")
            out = child.stdout.read_all()
            print("status", child.wait(), out.decode().strip())
    """)
    r = run_ww("run", "--with-ipfs", "--with-exec", "--interpreter", str(exe), parent)
    assert (r.returncode, r.stdout) == (0, "status 0 API_KEY=project-secret\n"), r.stderr


def flippable_python(tmp_path: Path) -> tuple[Path, Path, str]:
    """``bin/python3`` -> the system's python (a virtualenv's layout), a non-system program
    it can be flipped to, and a Python cell whose #! names the symlink."""
    link = tmp_path / "venv" / "bin" / "python3"
    link.parent.mkdir(parents=True)
    link.symlink_to("/usr/bin/python3")
    evil = tmp_path / "evil"
    evil.write_text("#!/bin/sh\necho not-the-checked-interpreter\n")
    evil.chmod(0o755)
    cell = script(tmp_path / "cell.py", link, "import sys\nprint('python', sys.prefix)\n")
    return link, evil, cell


def flip(link: Path, target: Path) -> None:
    link.unlink()
    link.symlink_to(target)


def test_the_jail_binds_the_interpreter_file_that_was_checked_not_the_path_again(tmp_path):
    # The #! line names a symlink the host found to lead to a system file.  The bubblewrap
    # argv binds that real file as the source: flipping the symlink after the check (as a
    # local user who owns it can) changes nothing of what the jail shows.
    from ww.host import executable, jail

    link, evil, cell = flippable_python(tmp_path)
    program = executable.prepare(cell, [])
    flip(link, evil)
    argv = jail.bwrap_argv("bwrap", jail.JailSpec(binds=program.binds, status_fd=3),
                           program.argv)
    binds = [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == "--ro-bind"]
    assert (os.path.realpath("/usr/bin/python3"), str(link)) in binds, binds
    assert not [src for src, _ in binds if src.startswith(str(tmp_path / "evil"))], binds
    assert program.argv[0] == str(link)


FLIP_AFTER_PREPARE = """
import os, sys
from ww.cli.main import main
from ww.host import executable

link, evil, cell = sys.argv[1:]
checked = executable.prepare

def prepare(*args, **kwargs):
    program = checked(*args, **kwargs)
    os.unlink(link)
    os.symlink(evil, link)  # flipped after the check, before the jail is built
    return program

executable.prepare = prepare
main(["run", cell])
"""


def test_a_hashbang_symlink_flipped_after_the_check_still_runs_the_checked_file(tmp_path):
    # A real `ww run` (the CLI in a process of its own) whose interpreter symlink is flipped
    # to a non-system program between the host's check and the jail's start: the cell still
    # runs on the system's Python the host checked.
    link, evil, cell = flippable_python(tmp_path)
    r = subprocess.run([sys.executable, "-c", FLIP_AFTER_PREPARE, str(link), str(evil), cell],
                       capture_output=True, text=True, timeout=HANG)
    assert os.readlink(link) == str(evil)  # the flip did happen
    assert (r.returncode, r.stdout.split()) == (0, ["python", "/usr"]), r.stderr
