"""coderund-kernel: a stateful sandbox's Python context, started by its hub (hub.py) as nobody.

Not imported by coderund: it runs inside the container, on the image's own python3. It reads runs
as JSON lines {"code", "count"} on REQUEST_FD, and says what each gave on EVENT_FD: {"type": "result",
"data": a MIME bundle} for the last expression's value, display() and each matplotlib figure, then
{"type": "done", "error": null | {"name", "value", "traceback"}}, each with the run's "count". What
the code prints goes to its stdout and stderr, pipes the hub reads.

Notebook code written for IPython runs too: a line `!command` runs the command in a shell, and
`IPython.display` (display, HTML, Markdown, Image...) is served by a small module of its own where the
image has no IPython.

Usage: kernel.py REQUEST_FD EVENT_FD
"""
import ast
import base64
import builtins
import contextlib
import importlib.abc
import importlib.util
import io
import json
import linecache
import os
import re
import shutil
import signal
import site
import subprocess
import sys
import traceback
import types
import warnings

MIME_METHODS = (("_repr_html_", "text/html"), ("_repr_markdown_", "text/markdown"), ("_repr_svg_", "image/svg+xml"),
                ("_repr_png_", "image/png"), ("_repr_jpeg_", "image/jpeg"), ("_repr_latex_", "text/latex"),
                ("_repr_json_", "application/json"), ("_repr_javascript_", "application/javascript"))
DISPLAY_CLASSES = {"text/html": "HTML", "text/markdown": "Markdown", "image/svg+xml": "SVG", "image/png": "Image",
                   "text/latex": "Latex", "application/json": "JSON",
                   "application/javascript": "Javascript"}  # IPython.display's names
MATPLOTLIB_BUILT = "/usr/share/coderund/matplotlib"  # the python image's font list (image_commands)
MATPLOTLIB_DIR = "/tmp/.matplotlib"
DATA_MIME = "application/vnd.coderund.data+json"  # a data frame's columns, as E2B's interpreter tells them
SHELL_LINE = re.compile(r"^([ \t]*)!(.*)$", re.MULTILINE)  # IPython's `!command`
ERROR_CHARS = 65536  # as the hub's: a longer error would not be passed on whole


def kernel(requests_fd, events_fd):
    events = os.fdopen(events_fd, "w", buffering=1, encoding="utf-8")
    # Line by line, as a terminal shows them (a run's end flushes the rest).
    sys.stdout, sys.stderr = (io.TextIOWrapper(io.BufferedWriter(io.FileIO(fd, "w", closefd=False)), encoding="utf-8",
                                               errors="backslashreplace", line_buffering=True) for fd in (1, 2))
    prepare_matplotlib()
    sys.path.insert(0, os.getcwd())
    # What pip installs into the home (a run with a network policy) is importable at once, as Python
    # adds the user's site-packages at start only if it is there already.
    if (user_site := site.getusersitepackages()) not in sys.path:
        sys.path.append(user_site)
    sys.argv = [""]
    warnings.filterwarnings("ignore", message=".*(non-GUI backend|non-interactive).*")
    namespace = {"__name__": "__main__", "__builtins__": builtins}

    count = 0  # the run's: the hub takes only its current run's events

    def send(event):
        events.write(json.dumps({**event, "count": count}, separators=(",", ":")) + "\n")

    def display(*values, raw=False, **_options):
        for value in values:
            if raw and isinstance(value, dict):  # already a MIME bundle, as IPython's display(raw=True)
                send({"type": "result", "data": {str(k): v for k, v in value.items() if is_json(v)}})
            else:
                send({"type": "result", "data": bundle(value)})

    namespace["display"] = display
    namespace["__coderund_shell__"] = shell
    serve_ipython_display(display)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for line in os.fdopen(requests_fd, encoding="utf-8"):
        request = json.loads(line)
        count = request["count"]
        error = None
        saved = {name: os.environ.get(name) for name in request.get("env") or {}}  # this run's own variables
        os.environ.update(request.get("env") or {})
        importlib.invalidate_caches()  # folders and packages made since the last run are found
        try:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            try:
                value = execute(request["code"], f"<cell {request['count']}>", namespace)
            finally:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            if value is not None:
                namespace["_"] = value
                send({"type": "result", "data": bundle(value), "main": True})  # the cell's value, not a display()
            for figure in figures():
                send({"type": "result", "data": figure})
        except BaseException as e:  # noqa: BLE001 - the user's error, told as the run's error
            if isinstance(e, SystemExit) and e.code in (None, 0):
                pass
            else:
                error = error_of(e)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        sys.stdout.flush()
        sys.stderr.flush()
        send({"type": "done", "error": error})


def prepare_matplotlib():
    """A writable copy of the font list the image built (else the first import builds it: 5 s)."""
    if "MPLCONFIGDIR" in os.environ or not os.path.isdir(MATPLOTLIB_BUILT):
        return
    os.environ["MPLCONFIGDIR"] = MATPLOTLIB_DIR
    with contextlib.suppress(OSError):
        shutil.copytree(MATPLOTLIB_BUILT, MATPLOTLIB_DIR, dirs_exist_ok=True)


def shell(command):
    """IPython's `!command`: the command's output goes where the cell's does."""
    sys.stdout.flush()
    sys.stderr.flush()
    subprocess.run(command, shell=True, check=False)  # noqa: S602 - the user's own command, in their sandbox


class DisplayObject:
    """IPython.display's objects: data given, or read from a file, shown in one MIME type."""
    mime = "text/plain"

    def __init__(self, data=None, url=None, filename=None, **_options):
        if data is None and filename is not None:
            with open(filename, "rb" if self.mime.startswith("image/") else "r") as f:
                data = f.read()
        self.data = data if data is not None else url

    def shown(self):
        if isinstance(self.data, bytes):
            return base64.b64encode(self.data).decode() if self.mime.startswith("image/") else self.data.decode()
        return self.data

    def __repr__(self):
        return f"<{type(self).__name__} object>"


def serve_ipython_display(display):
    """IPython.display's common names, for code written for Jupyter, where the image has no IPython:
    found last on the import path, so only an import of IPython that nothing else answers sees it."""

    class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path=None, target=None):
            if name in ("IPython", "IPython.display"):
                return importlib.util.spec_from_loader(name, self, is_package=name == "IPython")
            return None

        def create_module(self, spec):
            return None

        def exec_module(self, module):
            if module.__name__ == "IPython":
                module.get_ipython = lambda: None  # no shell: matplotlib and pandas then leave IPython alone
                return
            module.DisplayObject, module.display = DisplayObject, display
            for method, mime in MIME_METHODS:  # HTML has _repr_html_, and so on: bundle() finds them
                if (name := DISPLAY_CLASSES.get(mime)) is not None:
                    setattr(module, name, type(name, (DisplayObject,), {"mime": mime, method: DisplayObject.shown}))

    sys.meta_path.append(Finder())


def execute(code, filename, namespace):
    """Runs the code; the value of its last statement when that is an expression. `!command` lines
    are read as such only in code that is not Python as it stands: a line of a string that begins with
    ! stays as written."""
    try:
        tree = ast.parse(code, filename)
    except SyntaxError:
        code = SHELL_LINE.sub(lambda line: f"{line[1]}__coderund_shell__({line[2]!r})", code)
        tree = ast.parse(code, filename)
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, filename, "exec"), namespace)
    return eval(compile(last, filename, "eval"), namespace) if last is not None else None


def is_json(value):
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def bundle(value):
    """A value as Jupyter's display data: text/plain, and whatever rich forms it offers."""
    data = {"text/plain": repr(value)}
    if isinstance(value, type):
        return data
    if type(value).__name__ == "DataFrame" and type(value).__module__.startswith("pandas"):
        with contextlib.suppress(Exception):  # a frame that will not go to JSON keeps its other forms
            data[DATA_MIME] = json.loads(value.to_json(orient="columns"))
    for method, mime in MIME_METHODS:
        try:
            shown = getattr(value, method, None)
            shown = shown() if callable(shown) else None
        except Exception:  # noqa: BLE001 - a broken rich form leaves the plain one
            continue
        if isinstance(shown, tuple):
            shown = shown[0]
        if isinstance(shown, bytes):
            shown = base64.b64encode(shown).decode()
        if shown is not None and is_json(shown):
            data[mime] = shown
    return data


def figures():
    """Every matplotlib figure shown or left open, as PNG; then they are closed."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        return []
    found = []
    for number in pyplot.get_fignums():
        figure = pyplot.figure(number)
        png = io.BytesIO()
        figure.savefig(png, format="png", bbox_inches="tight")
        found.append({"image/png": base64.b64encode(png.getvalue()).decode(), "text/plain": repr(figure)})
    pyplot.close("all")
    return found


def error_of(e):
    """The error as the hub passes it on: its value and the end of its traceback cut to ERROR_CHARS."""
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next  # the user's frames only
    text = "".join(traceback.format_exception(type(e), e, tb))
    return {"name": type(e).__name__, "value": str(e)[:ERROR_CHARS], "traceback": text[-ERROR_CHARS:]}


if __name__ == "__main__":
    kernel(int(sys.argv[1]), int(sys.argv[2]))
