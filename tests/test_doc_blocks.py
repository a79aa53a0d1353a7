"""Every shell example of README.md and docs/*.md runs, and prints what the page says.

A doc example is code.  Each fenced block marked ```sh, ```bash or ```console is one test
case (its id: ``page:line``), run by ``bash -euo pipefail`` with the real `ww` (this
virtualenv's) first on PATH, stdin empty, in a scratch working directory and a scratch
``$WW_HOME``.  The scratch directory holds ``examples``, a link to the repository's, so a
page's ``examples/...`` paths work as they do from the repository's root.

What a page shows as output is checked:

- a ```console block: each ``$ `` line is a command (``> `` lines continue it), and the lines
  after it, up to the next ``$ ``, are its output (stdout and stderr as a terminal shows them,
  in full);
- in a ```sh or ```bash block, a command whose comment ends in ``prints: TEXT`` (``cmd  #
  prints: TEXT``, ``cmd  # what it does; prints: TEXT``) must print one line TEXT on stdout,
  and nothing else there; ``# prints:`` comment lines right after it continue its output,
  one line each.  (stderr is not checked there; it shows when the block fails.)

In expected text, ``...`` stands for any text within a line, a line of only ``...`` for any
lines, and ``<words>`` (lower-case words in angle brackets, e.g. ``<cid>``, ``<peer id>``)
for one run of non-blank characters, the same each time that name comes back in one block,
and different from what every other name stands for (``<home peer>`` and ``<new peer>``
are two peers).

HTML comments right before a block (they do not show on the rendered page) prepare it:

- ``<!-- doc-test: setup: SHELL -->`` runs SHELL first, in the same shell (files the example
  takes for granted: ``notes.txt``, a key, a cell);
- ``<!-- doc-test: file NAME -->`` before a block of any language writes that block's text
  to NAME in the scratch directory of every later block of the page (the C++ cell of
  docs/protocol.md, built by the block after it);
- ``<!-- doc-test: skip: REASON -->`` skips a block that cannot run here; only for the few
  that truly cannot (``./dev test`` is the whole suite), never without a reason.
  test_the_skipped_blocks_are_these_and_say_why lists them.

A block that starts something long-running (a ``coproc ww run --listen ...``) stops it
itself; whatever it left behind is killed with its process group when the block ends.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import HANG, WW

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELLS = {"sh", "bash", "console"}
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
DIRECTIVE = re.compile(r"<!--\s*doc-test:\s*(.*?)\s*-->", re.S)
PRINTS = re.compile(r"\s+#(?: .*?)?\bprints: (.*)$")
MORE_PRINTS = re.compile(r"^\s*# prints: (.*)$")
PLACEHOLDER = re.compile(r"<([a-z][a-z ]*)>")
MARK = "\x1edoc-test {}\x1e"
SPLIT = re.compile("\x1edoc-test (\\d+)\x1e\n?")

# The blocks a page marks as not runnable here (page, first line): keep this short; the page
# says why, next to the block.
SKIPPED = {("README.md", "./dev demo    # run two sample cells that receive a named fd and "
                         "talk to the host over fd 3")}


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    setup: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # written before it runs
    skip: str | None = None
    file_name: str | None = None  # `doc-test: file NAME`: this block is that file

    @property
    def id(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{page}:{self.line}"


def parse(page: Path) -> list[Block]:
    """Every fenced block of ``page`` with the doc-test comments right before it."""
    lines = page.read_text().splitlines()
    blocks: list[Block] = []
    files: dict[str, str] = {}
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or not m.group(2):
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        indent = len(m.group(1))  # a block in a list item: its lines indented as its fence
        body = [line[indent:] if line[:indent].isspace() else line.lstrip()
                for line in lines[i + 1:end]]
        block = Block(page, i + 1, m.group(2), "\n".join(body) + "\n", files=dict(files))
        # The comments right before the fence (blank lines between them allowed).
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        above = []
        while k >= 0 and lines[k].rstrip().endswith("-->"):
            start = k
            while "<!--" not in lines[start]:
                start -= 1
            above.insert(0, "\n".join(lines[start:k + 1]))
            k = start - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
        for comment in above:
            for d in DIRECTIVE.findall(comment):
                verb, _, rest = d.partition(":") if ":" in d.split()[0] else d.partition(" ")
                if verb == "setup":
                    block.setup.append(rest.strip())
                elif verb == "skip":
                    block.skip = rest.strip()
                elif verb == "file":
                    block.file_name = rest.strip()
                else:
                    raise ValueError(f"{block.id}: unknown doc-test directive {d!r}")
        if block.file_name:
            files[block.file_name] = block.text
        blocks.append(block)
        i = end + 1
    return blocks


def shell_blocks() -> list[Block]:
    return [b for page in PAGES for b in parse(page) if b.lang in SHELLS]


@dataclass
class Script:
    text: str
    expected: dict[int, list[str]]  # mark number -> the lines the command must print
    commands: dict[int, str]


def console_script(block: Block) -> Script:
    commands: list[list[str]] = []
    outputs: list[list[str]] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            commands.append([line[2:]])
            outputs.append([])
        elif line.startswith("> ") and commands and not outputs[-1]:
            commands[-1].append(line[2:])
        elif commands:
            outputs[-1].append(line)
        elif line.strip():
            raise ValueError(f"{block.id}: a console block starts with a `$ ` command")
    body = []
    for n, command in enumerate(commands):
        body += [f"printf '{MARK.format(n)}\\n'", *command]
    body.append(f"printf '{MARK.format(len(commands))}\\n'")
    return Script("\n".join(body) + "\n", dict(enumerate(outputs)),
                  {n: "\n".join(c) for n, c in enumerate(commands)})


def sh_script(block: Block) -> Script:
    """The block with marks around each command that shows what it prints: a ``prints:``
    at the end of its comment, or ``# prints:`` lines right after it."""
    lines = block.text.splitlines()
    body: list[str] = []
    expected: dict[int, list[str]] = {}
    commands: dict[int, str] = {}
    n = 0
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        m = PRINTS.search(line)
        shown = [m.group(1)] if m else []
        while i < len(lines) and (more := MORE_PRINTS.match(lines[i])):
            shown.append(more.group(1))
            i += 1
        if not shown or MORE_PRINTS.match(line):
            body.append(line)
            continue
        command = line[:m.start()] if m else line
        body += [f"printf '{MARK.format(n)}\\n'", command,
                 f"printf '{MARK.format(n + 1)}\\n'"]
        expected[n] = shown
        commands[n] = command.strip()
        n += 2
    return Script("\n".join(body) + "\n", expected, commands)


def pattern(expected: list[str], names: dict[str, str] | None = None) -> str:
    """The regular expression of expected output lines (see the module's docstring);
    ``names``, shared between calls, ties a <name> to its first match."""
    names = {} if names is None else names
    parts = []
    for line in expected:
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
            continue
        out = []
        pos = 0
        for m in re.finditer(r"\.\.\.|" + PLACEHOLDER.pattern, line):
            out.append(re.escape(line[pos:m.start()]))
            if m.group(0) == "...":
                out.append(r"[^\n]*?")
            else:
                name = m.group(1)
                if name in names:
                    out.append(f"(?P={names[name]})")
                else:
                    names[name] = f"p{len(names)}"
                    out.append(rf"(?P<{names[name]}>\S+)")
            pos = m.end()
        out.append(re.escape(line[pos:]))
        parts.append("".join(out) + r"\n")
    return "".join(parts)


def check_output(block: Block, script: Script, out: str, err: str = "") -> None:
    """Each command's output (between its marks) is what the page shows; placeholders of
    one name mean one text across the block."""
    pieces = SPLIT.split(out)
    got: dict[int, str] = {}
    for k in range(1, len(pieces) - 1, 2):
        got[int(pieces[k])] = pieces[k + 1]
    # One regular expression over the whole block, so that <names> hold across commands.
    order = sorted(script.expected)
    names: dict[str, str] = {}
    whole = "".join(f"\x1e{n}\n" + pattern(script.expected[n], names) for n in order)
    seen = "".join(f"\x1e{n}\n" + got.get(n, "") for n in order)
    m = re.fullmatch(whole, seen)
    if m:
        bound = {name: m.group(group) for name, group in names.items()}
        if len(set(bound.values())) < len(bound):
            pytest.fail(f"{block.id}: two <names> stand for one text: {bound}")
        return
    for n in order:  # which one: the first command whose output alone does not match
        if not re.fullmatch(pattern(script.expected[n]), got.get(n, "")):
            pytest.fail(f"{block.id}: `{script.commands[n]}` printed\n{got.get(n, '')!r}\n"
                        f"the page shows\n{chr(10).join(script.expected[n])!r}\n"
                        f"whole output:\n{SPLIT.sub('', out)}\nstderr:\n{err}")
    pytest.fail(f"{block.id}: a <name> stands for different texts:\n{SPLIT.sub('', out)}")


@pytest.mark.parametrize("block", shell_blocks(), ids=lambda b: b.id)
def test_doc_block(block: Block, tmp_path: Path, ww_home: Path) -> None:
    if block.skip is not None:
        pytest.skip(f"{block.id}: {block.skip}")
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    for name, text in block.files.items():
        (work / name).write_text(text)
    script = (console_script if block.lang == "console" else sh_script)(block)
    # A console block shows what a terminal does: stderr and stdout together, in order.
    merge = "exec 2>&1\n" if block.lang == "console" else ""
    text = "\n".join(block.setup) + "\n" + merge + script.text
    env = dict(os.environ, PATH=f"{Path(WW).parent}{os.pathsep}{os.environ['PATH']}",
               WW_HOME=str(ww_home))
    # Output to files, not pipes: the block is over when bash exits, even if something it
    # left running (a failed block's coprocess) still holds them open.
    with open(tmp_path / "stdout", "w+") as stdout, open(tmp_path / "stderr", "w+") as stderr:
        proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", text], cwd=work, env=env,
                                stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                start_new_session=True)
        try:
            proc.wait(timeout=HANG)
        finally:
            try:  # whatever the block started and left running
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        out, err = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
    assert proc.returncode == 0, (f"{block.id} exited {proc.returncode}:\n"
                                  f"{SPLIT.sub('', out)}\nstderr:\n{err}")
    check_output(block, script, out, err)


def test_the_skipped_blocks_are_these_and_say_why() -> None:
    skipped = {(b.id.rsplit(":", 1)[0], b.text.splitlines()[0]): b.skip
               for b in shell_blocks() if b.skip is not None}
    assert set(skipped) == SKIPPED
    assert all(reason and len(reason.split()) >= 3 for reason in skipped.values()), skipped


def test_expected_output_patterns() -> None:
    """The matching the page's expected output gets: ``...``, a line of ``...``, and
    <names> that mean one text each."""
    assert re.fullmatch(pattern(["/ipfs/<cid>"]), "/ipfs/QmX\n")
    assert not re.fullmatch(pattern(["/ipfs/<cid>"]), "/ipfs/Qm X\n")
    assert re.fullmatch(pattern(["a ... b"]), "a x y b\n")
    assert not re.fullmatch(pattern(["a ... b"]), "a x\ny b\n")
    assert re.fullmatch(pattern(["first", "...", "last"]), "first\n1\n2\nlast\n")
    assert re.fullmatch(pattern(["<peer>", "/p2p/<peer>"]), "12D3\n/p2p/12D3\n")
    assert not re.fullmatch(pattern(["<peer>", "/p2p/<peer>"]), "12D3\n/p2p/12D4\n")
    assert re.fullmatch(pattern(["<h1>x"]), "<h1>x\n")  # not a placeholder: a digit


def test_a_block_whose_output_differs_fails(tmp_path: Path, ww_home: Path) -> None:
    """The check can fail: a block that prints something else than its page says."""
    page = tmp_path / "page.md"
    page.write_text("<!-- doc-test: setup: echo hi > f -->\n```sh\ncat f   # prints: bye\n```\n")
    (block,) = parse(page)
    assert block.setup == ["echo hi > f"]
    script = sh_script(block)
    with pytest.raises(pytest.fail.Exception, match="printed"):
        check_output(block, script, f"{MARK.format(0)}\nhi\n{MARK.format(1)}\n")
    check_output(block, script, f"{MARK.format(0)}\nbye\n{MARK.format(1)}\n")
