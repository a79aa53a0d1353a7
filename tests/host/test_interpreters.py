"""A program's ``#!`` line is content: it never chooses which host directories the jail shows.

Every case runs the real `ww run` on a real script in the real jail.  The hostile layouts are
the ones a #! line could point at: a virtualenv made in a project's root (``python -m venv
.``: the project, its secrets, a ``pyvenv.cfg`` and a ``bin/python3``), and a program of any
kind next to an empty ``lib/python3.x``.  Both used to be bound whole as "installations".
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import run_ww


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
    r = run_ww("run", "--with-ipfs", "--with-exec", parent, timeout=120)
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
    r = run_ww("run", "--with-ipfs", "--with-exec", "--interpreter", str(exe), parent,
               timeout=120)
    assert (r.returncode, r.stdout) == (0, "status 0 API_KEY=project-secret\n"), r.stderr
