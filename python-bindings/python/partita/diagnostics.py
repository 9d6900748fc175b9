"""Progress bars and task-graph pictures, as dask.diagnostics and `.visualize()` offer.

    with pt.ProgressBar():
        x.sum().compute()        # [########################################] | 100% Completed | 1.2s

Every compute call made inside the `with` block reports to the bar: the Rust scheduler calls
back `(done, total)` about a thousand times per run at most, and the bar redraws at most every
`dt` seconds, so the GIL is taken rarely.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

_active = []
_lock = threading.Lock()


class ProgressBar:
    """A text progress bar for every computation run inside its `with` block.

    minimum: do not draw for computations shorter than this many seconds.
    width: the bar's width in characters. dt: the least time between redraws.
    out: where to draw (default sys.stdout, which notebooks show under the cell).
    """

    def __init__(self, minimum=0.0, width=40, dt=0.1, out=None):
        self.minimum = minimum
        self.width = width
        self.dt = dt
        self.out = out
        self.last_duration = None
        self._start = None
        self._last_draw = 0.0
        self._drawn = False

    def __enter__(self):
        with _lock:
            _active.append(self)
        return self

    def __exit__(self, *exc):
        with _lock:
            if self in _active:
                _active.remove(self)
        return False

    def register(self):
        """Report every computation from now on (until `unregister`), like Dask's."""
        self.__enter__()

    def unregister(self):
        self.__exit__(None, None, None)

    # -- called around and during one computation ----------------------------------
    def _begin(self):
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False

    def _update(self, done, total, force=False):
        now = time.monotonic()
        elapsed = now - self._start
        if elapsed < self.minimum and not force:
            return
        if not force and now - self._last_draw < self.dt:
            return
        self._last_draw = now
        self._draw(done, total, elapsed)

    def _end(self, done, total, ok):
        elapsed = time.monotonic() - self._start
        self.last_duration = elapsed
        if elapsed >= self.minimum:
            self._draw(done, total, elapsed)
            out = self.out or sys.stdout
            out.write("\n" if ok else "  (failed)\n")
            out.flush()

    def _draw(self, done, total, elapsed):
        fraction = done / total if total else 1.0
        filled = int(round(self.width * fraction))
        bar = "#" * filled + " " * (self.width - filled)
        out = self.out or sys.stdout
        out.write(f"\r[{bar}] | {fraction * 100:3.0f}% Completed | {_seconds(elapsed)}")
        out.flush()
        self._drawn = True


def _seconds(s):
    if s < 60:
        return f"{s:.1f}s"
    minutes, seconds = divmod(s, 60)
    if minutes < 60:
        return f"{int(minutes)}min {seconds:.1f}s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)}hr {int(minutes)}min"


def run_with_progress(call):
    """Run `call(progress)` where `progress` is a `(done, total)` callback feeding the
    active progress bars, or None when there are none (then Rust reports nothing)."""
    with _lock:
        bars = list(_active)
    if not bars:
        return call(None)
    state = {"done": 0, "total": 0}

    def progress(done, total):
        state["done"], state["total"] = done, total
        for bar in bars:
            bar._update(done, total)

    for bar in bars:
        bar._begin()
    ok = False
    try:
        result = call(progress)
        ok = True
        return result
    finally:
        for bar in bars:
            bar._end(state["done"], state["total"], ok)


# ---------------------------------------------------------------------------------------
# Task-graph pictures

_FORMATS = {"png", "svg", "pdf", "jpeg", "jpg", "dot"}


class GraphPicture:
    """What `.visualize()` wrote: `path`, `format` and the DOT text; notebooks show SVG/PNG."""

    def __init__(self, path, format, dot):
        self.path = path
        self.format = format
        self.dot = dot

    def __repr__(self):
        return f"GraphPicture(path={self.path!r}, format={self.format!r})"

    def _repr_svg_(self):
        if self.format != "svg":
            return None
        with open(self.path, encoding="utf-8") as f:
            return f.read()

    def _repr_png_(self):
        if self.format != "png":
            return None
        with open(self.path, "rb") as f:
            return f.read()


def visualize(dot, filename="mydask", format=None):
    """Write the DOT text `dot` as a picture. The format comes from `format`, else the file's
    extension, else PNG. Without Graphviz's `dot` program the DOT text itself is written (to
    `<name>.dot`) with a warning saying so. Writes are atomic (temporary file + rename)."""
    import warnings

    root, ext = os.path.splitext(str(filename))
    fmt = (format or ext.lstrip(".") or "png").lower()
    if fmt not in _FORMATS:
        raise ValueError(f"cannot draw a graph as {fmt!r}; use one of {sorted(_FORMATS)}")
    path = f"{root}.{fmt}" if not ext or format else str(filename)
    if fmt != "dot" and shutil.which("dot") is None:
        warnings.warn(
            "Graphviz's `dot` program is not installed; writing the graph as DOT text instead "
            "(install graphviz to get SVG/PNG)",
            RuntimeWarning,
            stacklevel=3,
        )
        fmt, path = "dot", f"{root}.dot"
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".partita-graph-", suffix=f".{fmt}", dir=directory)
    try:
        if fmt == "dot":
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(dot)
        else:
            os.close(fd)
            done = subprocess.run(
                ["dot", f"-T{fmt}", "-o", tmp],
                input=dot.encode(),
                capture_output=True,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(
                    f"graphviz failed to draw {path}: {done.stderr.decode(errors='replace').strip()}"
                )
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return GraphPicture(path, fmt, dot)
