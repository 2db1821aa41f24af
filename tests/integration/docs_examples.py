"""Runs the examples of a Markdown document, in order, as a reader would (see
test_docs_examples.py for the rules)."""

import json
import os
import re
import select
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

RUN = {"console", "sh", "python"}
MARKER = re.compile(r"^<!--\s*docs-test:\s*(?P<kind>skip|file|any-numbers)\b\s*(?P<arg>.*?)\s*-->$")
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)\s*$")
SHELL_TIMEOUT = 120
PYTHON_TIMEOUT = 300


class ExampleError(AssertionError):
    pass


@dataclass(frozen=True)
class Block:
    doc: str
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    markers: tuple[tuple[str, str], ...] = ()

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"

    def marker(self, kind: str) -> str | None:
        return next((arg for k, arg in self.markers if k == kind), None)


def blocks(text: str, doc: str) -> list[Block]:
    """Every fenced block, with the docs-test markers on the lines right above it."""
    lines = text.splitlines()
    found, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, indent = match["fence"], len(match["indent"])
        end = i + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        if end == len(lines):
            raise ExampleError(f"{doc}:{i + 1}: fenced block never closed")
        markers, above = [], i - 1
        while above >= 0 and (m := MARKER.match(lines[above].strip())):
            markers.insert(0, (m["kind"], m["arg"]))
            above -= 1
        body = "\n".join(line[indent:] for line in lines[i + 1:end])
        found.append(Block(doc, i + 1, match["lang"], body + "\n", tuple(markers)))
        i = end + 1
    return found


def check_markers(block: Block) -> None:
    for kind, arg in block.markers:
        if kind in ("skip", "file") and not arg:
            raise ExampleError(f"{block.where}: docs-test: {kind} needs "
                               f"{'a reason' if kind == 'skip' else 'a file name'}")
        if kind == "any-numbers" and block.lang != "console":
            raise ExampleError(f"{block.where}: any-numbers applies to console blocks only")


# Output of console examples

_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def normalize(line: str, any_numbers: bool) -> str:
    """Runs of spaces and of box-drawing rules count as one (tables size to their content);
    with any_numbers, every number is the same as every other."""
    line = re.sub(r"─+", "─", re.sub(r"[ \t]+", " ", line.strip()))
    return _NUMBER.sub("0", line) if any_numbers else line


def output_matches(expected: list[str], actual: str, any_numbers: bool) -> bool:
    """A line `...` stands for any lines (or none); `...` inside a line for any text. Blank
    lines around the output do not count."""
    got = [normalize(line, any_numbers) for line in actual.splitlines()]
    while got and not got[-1]:
        got.pop()
    while got and not got[0]:  # tables start with a blank line
        got.pop(0)
    pattern = []
    for line in expected:
        if line.strip() == "...":
            pattern.append(r"(?:[^\n]*\n)*?")
        else:
            parts = normalize(line, any_numbers).split("...")
            pattern.append(".*".join(re.escape(p) for p in parts) + r"\n")
    return re.fullmatch("".join(pattern), "".join(g + "\n" for g in got)) is not None


def console_commands(block: Block) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) for each `$ ` line (continued by trailing backslashes)."""
    out, lines = [], block.text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            raise ExampleError(f"{block.where}: output before any `$ ` command: {lines[i]!r}")
        command = lines[i][2:]
        while command.endswith("\\") and i + 1 < len(lines):
            i += 1
            command += "\n" + lines[i]
        i += 1
        expected = []
        while i < len(lines) and not lines[i].startswith("$ "):
            expected.append(lines[i])
            i += 1
        while expected and not expected[-1].strip():
            expected.pop()
        out.append((command, expected))
    return out


# Python examples: one interpreter per document, so later blocks see earlier ones' names.

def python_imports(found: list[Block]) -> tuple[str, ...]:
    """The modules the document's Python examples that run import, in order."""
    import ast

    names = []
    for block in found:
        if block.lang != "python" or block.marker("skip") is not None:
            continue
        try:
            tree = ast.parse(block.text)
        except SyntaxError:
            continue  # the block fails when it runs, and says why
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.append(node.module)
    return tuple(dict.fromkeys(names))


_EXECUTOR = textwrap.dedent("""
    import importlib, json, os, sys, traceback
    results = os.fdopen(int(sys.argv[1]), "w")
    for name in sys.argv[2:]:  # preloaded: see Session
        try:
            importlib.import_module(name)
        except BaseException:
            pass  # the block that imports it says why
    namespace = {"__name__": "__main__"}
    for request in sys.stdin:
        importlib.invalidate_caches()  # modules a block imports may have been written since
        request = json.loads(request)
        try:
            exec(compile(request["code"], request["where"], "exec"), namespace)
            outcome = {"ok": True}
        except BaseException:
            outcome = {"ok": False, "error": traceback.format_exc()}
        sys.stdout.flush(); sys.stderr.flush()
        results.write(json.dumps(outcome) + "\\n"); results.flush()
""")


class Session:
    """A reader's session on one document: a working directory, the environment pointing at
    the test's server, one Python interpreter."""

    def __init__(self, workdir: Path, env: dict[str, str], pause=lambda: None,
                 preload: tuple[str, ...] = ()):
        """pause() runs before every command and block, like a reader's pace (the server's
        background refits finish). preload: modules to import ahead (libraries the Python
        examples import, which take seconds): the interpreter then starts at once and imports
        them while the commands before the first Python block run. They are not names in the
        examples' namespace: each block still has to import what it uses."""
        self.workdir, self.env, self.pause = workdir, env, pause
        self._interpreter = None
        self._log = workdir / ".python-output.log"
        if preload:
            self._start_interpreter(preload)

    def run(self, block: Block) -> None:
        if block.marker("file"):
            (self.workdir / block.marker("file")).write_text(block.text)
        if block.lang not in RUN or block.marker("skip") is not None:
            return
        getattr(self, "_" + block.lang)(block)

    def _shell(self, script: str, block: Block) -> str:
        self.pause()
        try:
            done = subprocess.run(["bash", "-c", script], cwd=self.workdir, env=self.env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=SHELL_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise ExampleError(f"{block.where}: still running after {SHELL_TIMEOUT} s (a "
                               "long-running command? mark the block `<!-- docs-test: skip "
                               "REASON -->`)") from None
        if done.returncode != 0:
            raise ExampleError(f"{block.where}: exit code {done.returncode}\n$ {script}\n"
                               f"{done.stdout}")
        return done.stdout

    def _sh(self, block: Block) -> None:
        self._shell("set -euo pipefail\n" + block.text, block)

    def _console(self, block: Block) -> None:
        any_numbers = block.marker("any-numbers") is not None
        for command, expected in console_commands(block):
            output = self._shell(command, block)
            if expected and not output_matches(expected, output, any_numbers):
                raise ExampleError(f"{block.where}: output of `{command}` differs\n--- shown:\n"
                                   + "\n".join(expected) + "\n--- printed:\n" + output)

    def _start_interpreter(self, preload: tuple[str, ...] = ()) -> None:
        read, write = os.pipe()
        self._interpreter = subprocess.Popen(
            [sys.executable, "-c", _EXECUTOR, str(write), *preload], cwd=self.workdir,
            env=self.env, stdin=subprocess.PIPE, stdout=self._log.open("w"),
            stderr=subprocess.STDOUT, text=True, pass_fds=[write])
        os.close(write)
        self._results = os.fdopen(read)

    def _python(self, block: Block) -> None:
        self.pause()
        if self._interpreter is None:
            self._start_interpreter()
        self._interpreter.stdin.write(json.dumps({"code": block.text, "where": block.where}) + "\n")
        self._interpreter.stdin.flush()
        ready, _, _ = select.select([self._results], [], [], PYTHON_TIMEOUT)
        line = self._results.readline() if ready else ""
        if not line:
            raise ExampleError(f"{block.where}: no result within {PYTHON_TIMEOUT} s (or the "
                               f"interpreter died)\n{self._log.read_text()[-3000:]}")
        outcome = json.loads(line)
        if not outcome["ok"]:
            raise ExampleError(f"{block.where}: raised\n{outcome['error']}\n"
                               f"output:\n{self._log.read_text()[-3000:]}")

    def close(self) -> None:
        if self._interpreter is not None:
            self._interpreter.stdin.close()
            try:
                self._interpreter.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._interpreter.kill()
            self._results.close()
