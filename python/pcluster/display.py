"""How engine output is shown: ipyparallel's labels, [stdout:3] and Out[3:7]."""

import sys


def print_stream(stream, engine, text, file=None):
    """Prints `text` that `engine` wrote to `stream` ("stdout" or "stderr"), labelled. One-line
    text goes after the label; longer text under it."""
    if not text:
        return
    out = file or (sys.stderr if stream == "stderr" else sys.stdout)
    label = f"[{stream}:{engine}]"
    if "\n" in text.rstrip("\n"):
        out.write(f"{label}\n{text}")
    else:
        out.write(f"{label} {text}")
    if not text.endswith("\n"):
        out.write("\n")
    out.flush()


def print_execute_result(engine, value, count=None, file=None):
    out = file or sys.stdout
    tag = f"Out[{engine}:{count}]" if count is not None else f"Out[{engine}]"
    out.write(f"{tag}: {value}\n")
    out.flush()
