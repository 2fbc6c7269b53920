"""The demo's terminal: each step, a live line of what it is doing, and its outcome.

Every library logs a lot (Prefect's task runs, DVC's hints after each stage,
BentoML, Great Expectations). While a story is told, their records go to
files under one folder instead of the terminal:

- ``runs.log``: Prefect's flow and task runs (each DVC stage's output among them);
- ``transferops.log``: the project's own modules;
- ``libraries.log``: everything else, Python warnings included;
- ``stderr.log``: what writes to stderr itself (tqdm's progress bars).

The terminal keeps one rule per step, a transient line with the step's elapsed
time and its latest log message (only on a terminal), and the step's outcome.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

OWN = ("flows", "monitoring", "pipelines", "services", "transferops", "__main__")
RUNS = ("prefect.flow_runs", "prefect.task_runs")
LOG_FILES = ("runs", "transferops", "libraries")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_family(logger_name: str) -> str:
    """Which of ``LOG_FILES`` a logger's records go to."""

    def under(prefixes: tuple[str, ...]) -> bool:
        return any(logger_name == p or logger_name.startswith(p + ".") for p in prefixes)

    if under(RUNS):
        return "runs"
    return "transferops" if under(OWN) else "libraries"


def _to_terminal(handler: logging.Handler) -> bool:
    """A handler that writes to a stream (stderr, as Prefect's console handler does), not a file."""
    return isinstance(handler, logging.StreamHandler) and not isinstance(
        handler, logging.FileHandler
    )


@contextlib.contextmanager
def logs_to_files(folder: Path) -> Iterator[dict[str, Path]]:
    """Move every terminal log handler aside and log to ``folder`` instead; restore after.

    Yields the files by family. Loggers that do not propagate (Prefect gives some their
    own console handler) get the files too.
    """
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: folder / f"{name}.log" for name in LOG_FILES}
    handlers = []
    for name, path in files.items():
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.addFilter(lambda record, name=name: log_family(record.name) == name)
        handlers.append(handler)
    root = logging.getLogger()
    hosts = [root] + [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger) and not logger.propagate and logger.handlers
    ]
    moved = [(host, h) for host in hosts for h in host.handlers if _to_terminal(h)]
    for host, handler in moved:
        host.removeHandler(handler)
    for host in hosts:
        for handler in handlers:
            host.addHandler(handler)
    # Python warnings too (logging.captureWarnings is process-wide state that others
    # switch on and off: this sets and restores the hook itself).
    shown, warnings.showwarning = warnings.showwarning, _log_warning
    # What writes to stderr itself (tqdm's bars: the gate scores in process) goes to a file.
    files["stderr"] = folder / "stderr.log"
    try:
        with open(files["stderr"], "a", buffering=1) as stream, contextlib.redirect_stderr(stream):
            yield files
    finally:
        warnings.showwarning = shown
        for host in hosts:
            for handler in handlers:
                host.removeHandler(handler)
        for handler in handlers:
            handler.close()
        for host, handler in moved:
            host.addHandler(handler)


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
    logging.getLogger("py.warnings").warning("%s", text)


# A stage's own log line, relayed whole by the task's logger: its time, level and logger.
_RELAYED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ [\w.]+: ")


def headline(message: str) -> str:
    """The last line of a log message, without a relayed record's own prefix."""
    lines = message.strip().splitlines()
    return _RELAYED.sub("", lines[-1]).strip() if lines else ""


class _Latest(logging.Handler):
    """Shows each INFO record's headline after the step's title, as its live line."""

    def __init__(self, progress: Progress, task, title: str) -> None:
        super().__init__(logging.INFO)
        self.progress, self.task, self.title = progress, task, title

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = headline(record.getMessage())
        except Exception:  # a record that cannot be formatted is not worth a crash
            return
        if line:
            self.progress.update(self.task, description=f"{self.title} [dim]{line[:120]}")


class Step:
    """What a running step says about itself: outcome lines, printed as they come."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def say(self, text: str) -> None:
        """An outcome line, indented under its step; a long one wraps indented too."""
        for line in Text.from_markup(text).wrap(self.console, self.console.width - 2):
            line.rstrip()  # in place: the space a wrap leaves at the end
            self.console.print(Text("  ") + line)


class Story:
    """Numbered steps on ``console``; library logs in ``log_dir`` while it is open."""

    def __init__(self, console: Console, log_dir: Path) -> None:
        self.console, self.log_dir = console, log_dir
        self.files: dict[str, Path] = {}
        self.steps = 0  # steps are numbered as they come (a story may skip one)
        self._logs: contextlib.ExitStack | None = None

    def __enter__(self) -> Story:
        self._logs = contextlib.ExitStack()
        self.files = self._logs.enter_context(logs_to_files(self.log_dir))
        return self

    def __exit__(self, *exc) -> None:
        assert self._logs is not None
        self._logs.close()

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[Step]:
        """One step: a numbered rule with its title, a live line while it runs, then its
        outcome."""
        self.console.rule(f"[bold]{self.steps}. {title}", align="left")
        self.steps += 1
        started = time.monotonic()
        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=True) as progress:
            task = progress.add_task(title, total=None)
            latest = _Latest(progress, task, title)
            logging.getLogger().addHandler(latest)
            try:
                yield Step(progress.console)
            except BaseException:
                progress.console.print(
                    f"[red]x failed[/] after {time.monotonic() - started:.0f} s; "
                    f"the logs: {', '.join(str(p) for p in self.files.values())}"
                )
                raise
            finally:
                logging.getLogger().removeHandler(latest)
        self.console.print(f"  [green]done[/] in {_duration(time.monotonic() - started)}")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
