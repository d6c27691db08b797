"""Every code block of README.rst and docs/*.rst runs, and prints what the page says (issue 14).

`Sybil <https://sybil.readthedocs.io>`_ reads the pages (its lexers for directives, its skip
and doctest machinery); this module says how each kind of block runs, and each block is one
test (``tests/test_docs.py::test_block[docs/tutorial.rst:312]``). Each page gets a scratch
folder of its own: every program and command of the page runs there, so a block finds the
files that earlier blocks of the same page wrote.

How each block runs
-------------------

``.. code-block:: python``
   A complete program, saved to a file and run with this Python in a fresh process, as a
   reader would run it. It must exit with status 0. A ``.. code-block:: text`` right after
   it (nothing but blank lines between) is what it prints on stdout, compared as below.
   ``127.0.0.1:8765`` in it stands for the page's broker (see ``console`` below).

   * A block that starts with ``>>>`` is a doctest instead, run in the page's namespace.
   * With a ``:caption:`` naming a Python file (``billing.py``), the block is saved as that
     file of the scratch folder, for later blocks to import; a ``test_*.py`` file is then run
     with pytest (``trio_mode = true``), and each of its tests must pass.
   * A fragment (an ``await`` at the top level, names defined elsewhere) runs inside a
     wrapper written in an RST comment before it, where the line ``___`` stands for the
     block (indented as that line is). Readers do not see the wrapper::

         .. wrapper: python

            import trio
            from trio_realtime import open_bus

            async def main() -> None:
                async with open_bus() as bus:
                    ___

            trio.run(main)

``.. literalinclude::`` of a Python file, followed by a ``text`` block
   The file runs as a program, and the ``text`` block is what it prints.

``.. code-block:: console``
   A terminal: each ``$ command`` (a line ending with ``\\`` goes on on the next) runs with
   bash in the scratch folder, and the lines up to the next ``$`` are what the terminal
   shows (stdout and stderr together). The exit status is not checked: the output says it.

   * The broker. ``trio-realtime serve`` gets ``--port 0`` (unless it has a ``--port``) and
     becomes the page's broker once it listens; an ``--http-port`` becomes 0 too, and the
     ``http:`` line it prints shows the port the page wrote. A client command finds it through
     ``TRIO_REALTIME_URL``, and ``127.0.0.1:8765`` in a command stands for its address, as
     it does in the output the page shows. A page that uses a client command before any
     ``serve`` gets a broker of its own (``trio-realtime serve --port 0``, in the scratch
     folder).
   * Commands that run until interrupted (``serve``; ``sub`` and ``stats`` without
     ``--count``; ``reply``; any command whose line ends with the shell comment
     ``# until Ctrl-C``) keep their terminal: such a command is the last of its block, the
     lines after it are what it shows *by the end of the page* (a ``sub`` prints the events
     that later blocks publish), and the page's other blocks run meanwhile. The test goes on
     once the command is ready: ``serve`` listening; ``sub`` and ``reply`` subscribed (they
     get ``-v`` to say so, and the INFO lines this adds are left out of their output); any
     other command when it has printed the first line shown under it.
   * A command ending with ``&`` runs in the background of its terminal (ready as above):
     what it prints may show anywhere after its own command line in the block, interleaved
     with what the later commands print. Once the block has run, every line its commands
     printed must be shown, in an order a terminal could show them.
   * When the page ends, each command that kept its terminal must have printed what is
     shown under it; then every command still running gets SIGINT, as Ctrl-C would send.

``toml`` and ``json`` blocks
   Parsed, so that a syntax error shows.

``text`` blocks
   Not code: compared when they follow a block that runs, else left alone.

Any other block (``sh``, ``ini``, ``yaml``, ``dockerfile`` …)
   Cannot run here, and fails unless it is marked as below.

Comparing output
----------------

Lines are compared one by one, without trailing spaces or trailing blank lines. What differs
from run to run is written in the page as a reader would see it, and compared by its shape:

* an event id (38 hexadecimal digits) matches any event id, a SHA-256 (64 hexadecimal
  digits) any SHA-256, and a line of 43 URL-safe base64 characters (a token) any token;
* a time (ISO 8601 such as ``2026-11-26T17:11:53.045331+00:00``, a log line's
  ``2025-01-01 12:00:00,000``, or ``17:11:53`` at the start of a line) matches any time;
* ``…`` matches any text within a line, and a line of ``…`` alone any number of lines
  (none included).

Blocks that cannot run
----------------------

A block that cannot run here (it needs another machine, root, a certificate, a running
service, or it is an outline with parts left out) says why, in an RST comment right before
it, with Sybil's skip::

    .. skip: next "it needs a broker at broker.example with a certificate"

``.. skip: start "why"`` … ``.. skip: end`` marks every block in between. A skip without a
reason fails the page's collection.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pytest
from sybil import Document, Example, Region, Sybil
from sybil.evaluators.doctest import DocTestEvaluator
from sybil.parsers.abstract.doctest import DocTestStringParser
from sybil.parsers.rest import SkipParser
from sybil.parsers.rest.lexers import DirectiveInCommentLexer, DirectiveLexer

ROOT: Final = Path(__file__).resolve().parent.parent
#: The pages whose blocks run: the README and every page of the docs (fragments included).
PAGES: Final = [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))]

#: Seconds a program, or a command that ends by itself, may take.
RUN_TIMEOUT: Final = 60.0
#: Seconds a background command has to become ready, or to print what the page shows.
WAIT_TIMEOUT: Final = 20.0
#: Seconds between two looks at a background command's output while waiting for it.
POLL_INTERVAL: Final = 0.01
#: Seconds a background command has to exit after SIGINT before it is killed.
STOP_TIMEOUT: Final = 10.0

#: The broker's address as the pages write it; it stands for the page's broker.
DOCUMENTED_ADDRESS: Final = "127.0.0.1:8765"
#: The line of a wrapper that stands for the block it wraps.
PLACEHOLDER: Final = "___"
#: A shell comment that marks a command as running until interrupted.
UNTIL_INTERRUPTED: Final = re.compile(r"\s+#\s*until ctrl-c\s*$", re.IGNORECASE)

_VARIABLE: Final = [
    (re.compile(r"\b[0-9a-f]{38}\b"), "<id>"),
    (
        re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)"),
        "<time>",
    ),
    (re.compile(r"\b\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\b"), "<time>"),
    (re.compile(r"^\d\d:\d\d:\d\d\b"), "<time>"),
    (re.compile(r"\b[0-9a-f]{64}\b"), "<sha256>"),
    (re.compile(r"^[A-Za-z0-9_-]{43}$"), "<token>"),
]
#: A log record's first line, as ``trio-realtime`` writes it in the text format.
_LOG_LINE: Final = re.compile(r"^\S+ \S+ (DEBUG|INFO) \S+: ")
_LISTENING: Final = re.compile(r"listening on (wss?://(\S+))")
#: What a ``sub`` or ``reply`` run with ``-v`` logs once it is ready.
_READY: Final = re.compile(r"INFO trio_realtime\.cli: (subscribed to|answering requests on) ")
#: The ``trio-realtime`` options that may come before the command's name.
_GLOBAL_OPTION: Final = r"(?:-v+|-q+|--verbose|--quiet|--log-level[ =]\S+|--log-format[ =]\S+)"
_COMMAND: Final = re.compile(rf"\btrio-realtime((?:\s+{_GLOBAL_OPTION})*)\s+([a-z]+)\b")


# -- comparing output ---------------------------------------------------------------------------


def normalise(text: str) -> list[str]:
    """The lines of *text*, with what varies from run to run written by its shape."""
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    normalised = []
    for line in lines:
        for pattern, shape in _VARIABLE:
            line = pattern.sub(shape, line)
        normalised.append(line)
    return normalised


def _line_matches(expected: str, actual: str) -> bool:
    if "…" not in expected:
        return expected == actual
    pattern = ".*?".join(re.escape(part) for part in expected.split("…"))
    return re.fullmatch(pattern, actual) is not None


@dataclass(frozen=True)
class Stream:
    """What one command printed, and the sections of the shown output it may appear in: from
    the command's own (*first*) to *last* (None: any later one)."""

    lines: tuple[str, ...]
    first: int = 0
    last: int | None = None


def interleaves(sections: Sequence[Sequence[str]], streams: Sequence[Stream]) -> bool:
    """Whether a terminal could show *sections* (the lines shown after each command) for what
    *streams* printed: each stream in order, the streams interleaved in any way, every line
    printed shown once. A line of ``…`` alone stands for any number of lines."""

    @functools.cache
    def rest_matches(s: int, i: int, positions: tuple[int, ...]) -> bool:
        if s < len(sections) and i == len(sections[s]):
            if any(
                stream.last == s and positions[n] < len(stream.lines)
                for n, stream in enumerate(streams)
            ):
                return False
            return rest_matches(s + 1, 0, positions)
        if s == len(sections):
            return all(p == len(stream.lines) for p, stream in zip(positions, streams, strict=True))
        wanted = sections[s][i]
        anything = wanted.strip() == "…"
        for n, stream in enumerate(streams):
            if positions[n] == len(stream.lines) or s < stream.first:
                continue
            if stream.last is not None and s > stream.last:
                continue
            after = (*positions[:n], positions[n] + 1, *positions[n + 1 :])
            if anything:
                if rest_matches(s, i, after):
                    return True
            elif _line_matches(wanted, stream.lines[positions[n]]) and rest_matches(
                s, i + 1, after
            ):
                return True
        return anything and rest_matches(s, i + 1, positions)

    return rest_matches(0, 0, (0,) * len(streams))


def matches(shown: Sequence[str], printed: Sequence[str]) -> bool:
    """Whether *printed* (one command's output) is what the page *shows*."""
    return interleaves([shown], [Stream(tuple(printed))])


def difference(shown: Sequence[str], printed: Sequence[str]) -> str:
    """A failure message showing both sides."""
    page = "\n".join(f"    {line}" for line in shown) or "    (nothing)"
    got = "\n".join(f"    {line}" for line in printed) or "    (nothing)"
    return f"the page shows:\n{page}\nbut it printed:\n{got}"


# -- what the parsers find ----------------------------------------------------------------------


@dataclass(frozen=True)
class Program:
    """A Python block (or an included Python file) that runs as a program."""

    source: str
    output: list[str] | None
    wrapper: str | None = None
    caption: str | None = None
    path: Path | None = None


@dataclass(frozen=True)
class Step:
    """One ``$ command`` of a console block, and the lines shown after it."""

    command: str
    shown: list[str]
    line: int

    @property
    def background(self) -> bool:
        return self.command.rstrip().endswith("&") and not self.command.rstrip().endswith("&&")


class SkipWithReason(SkipParser):
    """Sybil's ``.. skip:``, except that skipping asks for a reason."""

    def __call__(self, document: Document) -> Iterable[Region]:
        for region in super().__call__(document):
            action, reason = region.parsed
            if action in ("start", "next") and not reason:
                raise ValueError(
                    f"{document.path}, {document.line_column(region.start)}: "
                    f'say why the block cannot run: .. skip: {action} "the reason"'
                )
            yield region


class BlocksParser:
    """Finds the code blocks of a page, and pairs each runnable one with its shown output."""

    _blocks = DirectiveLexer(directive=r"(code-block|sourcecode|code|literalinclude)")
    _wrappers = DirectiveInCommentLexer(directive="wrapper")
    _doctests = DocTestStringParser(DocTestEvaluator())

    def __call__(self, document: Document) -> Iterator[Region]:
        found = sorted([*self._blocks(document), *self._wrappers(document)], key=_start)
        taken: set[int] = set()
        wrapper: str | None = None
        for n, region in enumerate(found):
            if region.start in taken:
                continue
            directive = region.lexemes["directive"]
            argument = (region.lexemes.get("arguments") or "").strip()
            source = str(region.lexemes["source"])
            if directive == "wrapper":
                wrapper = source
                continue
            output: list[str] | None = None
            following = found[n + 1] if n + 1 < len(found) else None
            if (
                following is not None
                and following.lexemes["directive"] != "wrapper"
                and (following.lexemes.get("arguments") or "").strip() == "text"
                and not document.text[region.end : following.start].strip()
            ):
                output = normalise(str(following.lexemes["source"]))
            if directive == "literalinclude":
                if output is None or not argument.endswith(".py"):
                    continue  # an included file shown for reading, without output
                path = (Path(document.path).parent / argument).resolve()
                program = Program(path.read_text(), output, path=path)
                taken.add(following.start)  # type: ignore[union-attr]
                yield Region(region.start, region.end, program, run_program)
                continue
            if wrapper is not None and argument != "python":
                raise ValueError(
                    f"{document.path}, {document.line_column(region.start)}: a wrapper must "
                    "be followed by a python block"
                )
            if argument == "python" and source.lstrip().startswith(">>>"):
                for doctest in self._doctests(source, document.path):
                    doctest.adjust(region, region.lexemes["source"])
                    yield doctest
            elif argument == "python":
                caption = region.lexemes["options"].get("caption")
                if output is not None:
                    taken.add(following.start)  # type: ignore[union-attr]
                yield Region(
                    region.start,
                    region.end,
                    Program(source, output, wrapper=wrapper, caption=caption),
                    run_program,
                )
                wrapper = None
            elif argument == "console":
                line = document.text.count("\n", 0, region.start) + 1
                line += region.lexemes["source"].line_offset
                yield Region(region.start, region.end, parse_console(source, line), run_console)
            elif argument == "toml":
                yield Region(region.start, region.end, source, _parse_toml)
            elif argument == "json":
                yield Region(region.start, region.end, source, _parse_json)
            elif argument != "text":
                yield Region(region.start, region.end, argument, _cannot_run)


def _start(region: Region) -> int:
    return region.start


def parse_console(source: str, first_line: int) -> list[Step]:
    """The steps of a console block whose source starts on line *first_line* of its page."""
    steps: list[Step] = []
    lines = source.splitlines()
    n = 0
    while n < len(lines):
        line = lines[n]
        if not line.startswith("$ "):
            if steps:
                steps[-1].shown.append(line)
                n += 1
                continue
            raise ValueError(f"a console block starts with a '$ ' command line, not {line!r}")
        start = n
        command = line[2:]
        while command.endswith("\\") and n + 1 < len(lines):
            n += 1
            command += "\n" + lines[n]
        steps.append(Step(command, [], first_line + start))
        n += 1
    return [Step(step.command, normalise("\n".join(step.shown)), step.line) for step in steps]


def _parse_toml(example: Example) -> str | None:
    try:
        tomllib.loads(example.parsed)
    except tomllib.TOMLDecodeError as exc:
        return f"not valid TOML: {exc}"
    return None


def _parse_json(example: Example) -> str | None:
    try:
        json.loads(example.parsed)
    except ValueError as exc:
        return f"not valid JSON: {exc}"
    return None


def _cannot_run(example: Example) -> str:
    return (
        f"a {example.parsed or 'plain'} block cannot run here: say why in an RST comment "
        'right before it: .. skip: next "the reason"'
    )


# -- the page: its folder, its broker, its terminals ----------------------------------------------


class Background:
    """A command running in the background; what it prints (stdout and stderr together, as a
    terminal shows them) is read as it comes, by a thread."""

    def __init__(self, command: str, page: Page, *, quiet_info: bool) -> None:
        self.command = command
        self._quiet_info = quiet_info
        self._raw: list[str] = []
        self._lock = threading.Lock()
        self.process = subprocess.Popen(
            ["bash", "-c", command],
            cwd=page.folder,
            env=page.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # its own process group: SIGINT reaches bash's children
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                self._raw.append(line)

    def raw(self) -> list[str]:
        """Every line it printed so far."""
        with self._lock:
            return [line.rstrip("\n") for line in self._raw]

    def shown(self) -> str:
        """What its terminal shows so far (without the INFO lines of a ``-v`` it was given)."""
        lines = self.raw()
        if self._quiet_info:
            lines = [line for line in lines if not _LOG_LINE.match(line)]
        return "\n".join(lines)

    @property
    def finished(self) -> bool:
        return self.process.poll() is not None and not self._reader.is_alive()

    def interrupt(self) -> None:
        """Ctrl-C: SIGINT to its process group, then SIGKILL if it has not exited in time."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._reader.join(STOP_TIMEOUT)
        assert self.process.stdout is not None
        self.process.stdout.close()


def wait_for(condition: Callable[[], bool], processes: Sequence[Background]) -> bool:
    """Poll until *condition* holds (True), or until *WAIT_TIMEOUT* seconds have passed or
    every one of *processes* has ended and said all (False, after a last look)."""
    deadline = time.monotonic() + WAIT_TIMEOUT
    while True:
        finished = all(process.finished for process in processes)
        if condition():
            return True
        if finished or time.monotonic() > deadline:
            return False
        time.sleep(POLL_INTERVAL)


@dataclass
class Terminal:
    """A command that keeps its terminal until the page ends, and what the page shows of it."""

    process: Background
    shown: list[str]
    where: str


@dataclass
class Page:
    """What the blocks of one page share."""

    folder: Path
    #: Where the page's broker listens (the page writes ``127.0.0.1:8765`` for it).
    broker: str | None = None
    #: Where the page's servers really listen, and the address the page writes for each.
    addresses: dict[str, str] = field(default_factory=dict)
    processes: list[Background] = field(default_factory=list)
    terminals: list[Terminal] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """The environment of the page's programs and commands: this Python's scripts first
        on the PATH, the page's broker as the default URL, and output unbuffered (a
        terminal's stdout is line-buffered; a pipe's is not)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRIO_REALTIME_")}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONUNBUFFERED"] = "1"
        if self.broker is not None:
            env["TRIO_REALTIME_URL"] = f"ws://{self.broker}"
        return env

    def shown(self, text: str) -> list[str]:
        """*text* as the page would show it: each server at the address the page writes."""
        for actual, documented in self.addresses.items():
            text = text.replace(actual, documented)
        return normalise(text)

    def real(self, text: str) -> str:
        """*text* (a command, a program) with each server at its real address; something that
        names the page's broker starts it first if it has none."""
        if self.broker is None and (
            DOCUMENTED_ADDRESS in text or _command_name(text) in _CLIENT_COMMANDS
        ):
            self.start("trio-realtime serve")
        for actual, documented in self.addresses.items():
            text = text.replace(documented, actual)
        return text

    def start(
        self, command: str, *, ready: Callable[[Background], bool] | None = None
    ) -> Background:
        """Start *command* in the background (see the module's docstring for what changes)."""
        name, quiet_info, http_port = _command_name(command), False, None
        if name == "serve":
            if not re.search(r"--port\b", command):
                command = _add_option(command, "--port 0")
            if found := re.search(r"--http-port[ =](\d+)", command):
                http_port = found[1]
                command = command.replace(found[0], "--http-port 0")
        elif name in ("sub", "reply") and not _verbose(command):
            command, quiet_info = _add_option(command, "-v"), True
        process = Background(self.real(command), self, quiet_info=quiet_info)
        self.processes.append(process)
        if name == "serve":
            wait_for(lambda: any(_LISTENING.search(line) for line in process.raw()), [process])
            for line in process.raw():
                if (found := _LISTENING.search(line)) and self.broker is None:
                    self.broker = found[2]
                    self.addresses[found[2]] = DOCUMENTED_ADDRESS
            if http_port is not None:
                wait_for(lambda: any(_HTTP.search(line) for line in process.raw()), [process])
                for line in process.raw():
                    if found := _HTTP.search(line):
                        host = found[1].rsplit(":", 1)[0]
                        self.addresses[found[1]] = f"{host}:{http_port}"
        elif quiet_info:
            wait_for(lambda: any(_READY.search(line) for line in process.raw()), [process])
        elif ready is not None:
            wait_for(lambda: ready(process), [process])
        return process

    def close(self) -> None:
        """Interrupt every command still running, the brokers last."""
        for process in reversed(self.processes):
            process.interrupt()
        self.processes.clear()


_CLIENT_COMMANDS: Final = {"pub", "sub", "request", "reply", "history", "bench", "stats"}
_HTTP: Final = re.compile(r"^http: http://(\S+)")


def _command_name(command: str) -> str | None:
    """The ``trio-realtime`` command (``serve``, ``sub`` …) that *command* runs, if any."""
    found = _COMMAND.search(command)
    return found[2] if found else None


def _add_option(command: str, option: str) -> str:
    """*command* with *option* right after the ``trio-realtime`` command's name."""
    return _COMMAND.sub(lambda m: f"{m[0]} {option}", command, count=1)


def _verbose(command: str) -> bool:
    return bool(re.search(r"(^|\s)(-v+|--verbose|--log-level[ =](?i:info|debug))\b", command))


def _runs_until_interrupted(step: Step) -> bool:
    name = _command_name(step.command)
    if UNTIL_INTERRUPTED.search(step.command) or name in ("serve", "reply"):
        return True
    return name in ("sub", "stats") and not re.search(r"--count\b", step.command)


# -- evaluators ---------------------------------------------------------------------------------


def _page(example: Example) -> Page:
    page = example.namespace["_page"]
    assert isinstance(page, Page)
    return page


def _wrap(wrapper: str, block: str) -> str:
    lines = wrapper.splitlines()
    for n, line in enumerate(lines):
        if line.strip() == PLACEHOLDER:
            indent = line[: len(line) - len(line.lstrip())]
            inner = [f"{indent}{part}" if part else "" for part in block.splitlines()]
            return "\n".join([*lines[:n], *inner, *lines[n + 1 :]]) + "\n"
    raise ValueError(f"a wrapper has no line {PLACEHOLDER!r} where the block goes")


def run_program(example: Example) -> str | None:
    """Run a Python block as a program; compare what it prints with the page."""
    program: Program = example.parsed
    page = _page(example)
    if program.caption is not None and program.caption.endswith(".py"):
        (page.folder / program.caption).write_text(page.real(program.source))
        if Path(program.caption).name.startswith("test_"):
            return _run_pytest(page, program.caption, program.source)
        return None
    source = program.source if program.path is None else program.path.read_text()
    if program.wrapper is not None:
        source = _wrap(program.wrapper, source)
    script = page.folder / f"block_{example.line}.py"
    script.write_text(page.real(source))
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=page.folder,
        env=page.env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        return f"the program exited with status {done.returncode}:\n{done.stderr}"
    if program.output is not None:
        printed = page.shown(done.stdout)
        if not matches(program.output, printed):
            stderr = f"\nstderr:\n{done.stderr}" if done.stderr else ""
            return difference(program.output, printed) + stderr
    return None


def _run_pytest(page: Page, name: str, source: str) -> str | None:
    """Run the test file *name* of the page's folder with pytest; all its tests must pass."""
    config = page.folder / "pytest.ini"
    if not config.exists():
        config.write_text("[pytest]\ntrio_mode = true\n")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", name],
        cwd=page.folder,
        env=page.env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    tests = len(re.findall(r"^(?:async )?def test_", source, re.MULTILINE))
    if done.returncode != 0 or not re.search(rf"\b{tests} passed\b", done.stdout):
        return f"pytest {name} (expected {tests} passed):\n{done.stdout}\n{done.stderr}"
    return None


def _printed_first(page: Page, first: list[str], process: Background) -> bool:
    """Whether *process* has printed the *first* line its terminal shows."""
    return matches(first, page.shown(process.shown())[:1])


def run_console(example: Example) -> str | None:
    """Run a console block's commands; compare what its terminal shows with the page."""
    page = _page(example)
    steps: list[Step] = example.parsed
    printed: list[tuple[Background | list[str], int]] = []  # what each command printed, from when
    for n, step in enumerate(steps):
        if _runs_until_interrupted(step) and not step.background:
            if n != len(steps) - 1:
                return f"line {step.line}: a command that runs until interrupted ends its block"
            ready = functools.partial(_printed_first, page, step.shown[:1])
            process = page.start(step.command, ready=ready)
            where = f"line {step.line}"
            page.terminals.append(Terminal(process, step.shown, where))
            break
        if step.background:
            printed.append((page.start(step.command.rstrip().removesuffix("&")), n))
            continue
        done = subprocess.run(
            ["bash", "-c", page.real(step.command)],
            cwd=page.folder,
            env=page.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=RUN_TIMEOUT,
            check=False,
        )
        printed.append((page.shown(done.stdout), n))
    sections = [
        step.shown for step in steps if not (_runs_until_interrupted(step) and not step.background)
    ]

    def streams() -> list[Stream]:
        found = []
        for output, n in printed:
            if isinstance(output, Background):
                found.append(Stream(tuple(page.shown(output.shown())), n))
            else:
                found.append(Stream(tuple(output), n, n))
        return found

    background = [output for output, _ in printed if isinstance(output, Background)]
    if wait_for(lambda: interleaves(sections, streams()), background):
        return None
    shown = [line for step in steps for line in (f"$ {step.command}", *step.shown)]
    said = [
        line
        for stream in streams()
        for line in (f"(the command of line {steps[stream.first].line} printed:)", *stream.lines)
    ]
    return f"line {example.line}:\n" + difference(shown, said)


def finish_page(page: Page) -> str | None:
    """The page ended: every terminal shows what the page says it shows; stop them all."""
    failures = []
    try:
        for terminal in page.terminals:
            process = terminal.process
            if not wait_for(
                lambda: matches(terminal.shown, page.shown(process.shown())),  # noqa: B023
                [process],
            ):
                failures.append(
                    f"{terminal.where}: $ {process.command}\n"
                    + difference(terminal.shown, page.shown(process.shown()))
                )
    finally:
        page.close()
    return "\n\n".join(failures) or None


# -- the tests ----------------------------------------------------------------------------------

SYBIL: Final = Sybil(parsers=[SkipWithReason(), BlocksParser()])


@dataclass(frozen=True)
class EndOfPage:
    """The last test of a page with terminals: what they show by the end."""

    document: Document


def _blocks() -> Iterator[object]:
    for path in PAGES:
        document = SYBIL.parse(path)
        examples = list(document.examples())
        for example in examples:
            name = f"{path.relative_to(ROOT)}:{example.line}"
            yield pytest.param(example, id=name)
        if any(example.region.evaluator is run_console for example in examples):
            yield pytest.param(EndOfPage(document), id=f"{path.relative_to(ROOT)}:end")


@pytest.fixture(scope="module", autouse=True)
def _stop_what_is_left() -> Iterator[None]:
    """However the tests were chosen, no command outlives this module."""
    yield
    for pages in _OPEN_PAGES.values():
        for page in pages:
            page.close()
    _OPEN_PAGES.clear()


_OPEN_PAGES: dict[str, list[Page]] = {}


@pytest.mark.parametrize("block", list(_blocks()))
def test_block(block: Example | EndOfPage, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The block runs, and prints what the page shows."""
    if isinstance(block, EndOfPage):
        page = block.document.namespace.get("_page")
        if isinstance(page, Page):
            failure = finish_page(page)
            assert failure is None, failure
        return
    namespace = block.document.namespace
    if "_page" not in namespace:
        page = Page(tmp_path_factory.mktemp(Path(block.path).stem))
        namespace["_page"] = page
        _OPEN_PAGES.setdefault(block.path, []).append(page)
    block.evaluate()


# -- the comparison itself ------------------------------------------------------------------------


def test_shown_output_may_interleave_what_commands_printed() -> None:
    """A background command's lines may come anywhere after its own command, in order."""
    sections = [["ready"], ["published 1", "event 1"]]
    background = Stream(("ready", "event 1"), first=0)
    assert interleaves(sections, [background, Stream(("published 1",), 1, 1)])
    assert not interleaves(
        [["published 1", "event 1"], []], [background, Stream(("published 1",), 0, 0)]
    )
    assert not interleaves(
        sections, [Stream(("ready", "event 2"), 0), Stream(("published 1",), 1, 1)]
    )


def test_every_line_printed_must_be_shown_but_ellipsis_stands_for_any() -> None:
    """An extra line fails; ``…`` alone stands for lines, and within a line for text."""
    assert not matches(["a"], ["a", "b"])
    assert matches(["a", "…"], ["a", "b", "c"])
    assert matches(["a", "…", "d"], ["a", "d"])
    assert matches(["limits: n=… (fd: …), m=1"], ["limits: n=9 (fd: 10), m=1"])
    assert not matches(["limits: n=… (fd: …), m=1"], ["limits: n=9 (fd: 10), m=2"])


def test_what_varies_is_compared_by_its_shape() -> None:
    """Ids, times, hashes and tokens match any of their kind, and nothing else."""
    shown = normalise(
        "published 01a218d79bd500000000027c3e9a0f51d2b846 at 2026-11-26T17:11:53+00:00"
    )
    printed = normalise(
        "published 01a20000000000000000000000000000000001 at 2027-01-02T03:04:05.6+00:00"
    )
    assert shown == printed == ["published <id> at <time>"]
    assert normalise("published 01a2 at noon") == ["published 01a2 at noon"]
