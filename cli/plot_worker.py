"""The figure is drawn by a helper process forked at the start of ``linreg train``.

Importing Matplotlib and drawing the first figure take about as long as the training of a
small data set; a child process does them on another core while the parent imports torch
and trains, then draws the real figure from the arrays the parent sends. Where ``fork`` is
not available the figure is drawn in the process itself.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any

from regression import artifacts
from regression.errors import OutputError


class PlotWorker:
    def __init__(self) -> None:
        self.connection: Connection | None = None
        self.process: Any = None
        self.path: Path | None = None
        if sys.platform != "linux":  # fork is only safe and cheap enough here
            return
        try:
            context = multiprocessing.get_context("fork")
            self.connection, child = context.Pipe()
            self.process = context.Process(
                target=_serve, args=(child, self.connection), daemon=True
            )
            # the child is born with SIGINT and SIGTERM blocked and unblocks them once its own
            # handlers are in place: until then it holds this process's, which would raise
            # Interrupted in it (a traceback on stderr) when a failing run ends it at once
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
            try:
                self.process.start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            child.close()
        except OSError:  # no process to spare: draw in this process instead
            self.connection = self.process = None

    def start(self, figure: dict[str, Any], path: Path) -> None:
        """Draw ``figure`` (the keyword arguments of plots.figures.FigureData) to ``path``;
        ``wait`` says when it is written."""
        if self.connection is None:
            _draw(figure, path)
            return
        self.path = path
        try:
            self.connection.send((figure, str(path)))
        except OSError as exc:
            raise OutputError(f"cannot draw {path}: the plotting process ended ({exc})") from exc

    def wait(self) -> None:
        if self.connection is None:
            return
        try:
            status, message = self.connection.recv()
        except (EOFError, OSError) as exc:
            raise OutputError(
                f"cannot draw {self.path}: the plotting process ended ({exc})"
            ) from exc
        if status != "ok":
            raise OutputError(message)

    def close(self) -> None:
        if self.process is not None:
            if self.process.is_alive():
                self.process.terminate()
            self.process.join()
            self.process = None
        if self.connection is not None:
            self.connection.close()
            self.connection = None


_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _serve(connection: Connection, parent_end: Connection) -> None:
    # the parent's end of the pipe, inherited by the fork, is closed: a parent that dies
    # without ending this process (killed, aborted) then gives EOF instead of a worker
    # left waiting forever
    parent_end.close()
    # the parent handles Ctrl-C and SIGTERM, and ends this process itself (close)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    artifacts.WRITING.clear()  # the parent's, if it was writing: not this process's to remove
    signal.signal(signal.SIGTERM, _leave)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)  # blocked by PlotWorker until now
    from plots.figures import warm_up

    warm_up()  # imports Matplotlib and loads fonts while the parent trains
    try:
        figure, path = connection.recv()
    except EOFError:
        return
    try:
        _draw(figure, Path(path))
        connection.send(("ok", ""))
    except OutputError as exc:
        connection.send(("error", str(exc)))
    except Exception as exc:  # reported by the parent as an output failure
        connection.send(("error", f"cannot draw {path}: {type(exc).__name__}: {exc}"))


def _leave(number: int, frame: FrameType | None) -> None:
    """SIGTERM: the parent gave up on the figure. End at once, taking away the temporary
    file of a figure being written; not by raising SystemExit, which lands wherever the
    process is, in a finalizer too, where it is only printed."""
    for tmp in list(artifacts.WRITING):
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    os._exit(128 + number)


def _draw(figure: dict[str, Any], path: Path) -> None:
    from plots.figures import FigureData, Line, figure_bytes, figure_format, regression_figure

    fields = dict(figure)
    for name in ("fitted", "reference"):
        if fields.get(name) is not None:
            fields[name] = Line(*fields[name])
    drawing = regression_figure(FigureData(**fields))
    artifacts.write_bytes(path, figure_bytes(drawing, figure_format(path)))
