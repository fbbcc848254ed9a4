"""How engine output is shown on the client: ipyparallel's labels ([stdout:3], [output:3],
Out[3:7]) and rich output (display data, figures, rich results) - as rich output through
IPython's display publisher inside IPython or Jupyter, as text (its text/plain) anywhere else.
Used by AsyncResult.display_outputs and the %px magics alike."""

import sys

GROUPINGS = ("type", "engine", "order")


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


def _ipython():
    """The running IPython shell, or None (never imports IPython: a script that has not is not
    in IPython)."""
    mod = sys.modules.get("IPython")
    get = getattr(mod, "get_ipython", None)
    return get() if get is not None else None


class ExecuteReply(str):
    """One engine's execute_result: the repr of a cell's final value (a str, as always), with
    ipyparallel's ExecuteReply view of it: `data` (the mimebundle, at least text/plain),
    `metadata`, `_repr_mimebundle_` (so IPython shows it rich)."""

    def __new__(cls, text, bundle=None):
        self = super().__new__(cls, text)
        bundle = bundle or {}
        self.data = dict(bundle.get("data") or {})
        self.data.setdefault("text/plain", str(text))
        self.metadata = dict(bundle.get("metadata") or {})
        return self

    def _repr_mimebundle_(self, include=None, exclude=None):
        return dict(self.data), dict(self.metadata)

    def _repr_pretty_(self, p, cycle):
        p.text(self.data["text/plain"])


def show_output(engine, output, label=True, file=None):
    """One display output {"data", "metadata"} of `engine`: rich inside IPython/Jupyter (under
    an [output:N] line unless `label` is False; its metadata gains "engine", as ipyparallel's),
    its text/plain labelled [output:N] elsewhere."""
    ip = _ipython()
    if ip is not None and file is None:
        if label:
            print(f"[output:{engine}]", flush=True)
        md = dict(output.get("metadata") or {})
        md["engine"] = engine
        ip.display_pub.publish(data=output.get("data", {}), metadata=md)
        return
    data = output.get("data", {})
    text = data.get("text/plain") or "<" + ", ".join(sorted(data)) + ">"
    print_stream("output", engine, text if text.endswith("\n") else text + "\n", file=file or sys.stdout)


def print_execute_result(engine, value, count=None, file=None):
    """Out[engine:count]: value - rich (HTML, images) inside IPython/Jupyter when the engine sent
    more than text/plain."""
    tag = f"Out[{engine}:{count}]" if count is not None else f"Out[{engine}]"
    data = getattr(value, "data", None) or {}
    ip = _ipython() if file is None and len(data) > 1 else None
    if ip is not None:
        shown = dict(data)
        shown["text/plain"] = f"{tag}: {data.get('text/plain', value)}"
        md = dict(getattr(value, "metadata", None) or {})
        md["engine"] = engine
        ip.display_pub.publish(data=shown, metadata=md)
        return
    out = file or sys.stdout
    out.write(f"{tag}: {value}\n")
    out.flush()


def show(targets, stdouts, stderrs, outputs, results, groupby="type", streams=True, count=None):
    """Shows a request's outputs as ipyparallel's display_outputs does. Per engine (lists in
    target order): stdout, stderr, display outputs (lists of {"data", "metadata"}), execute
    results (None where none). groupby: "type" - all stdout, then all stderr, then each engine's
    display outputs, then the results; "engine" - everything of one engine, then the next;
    "order" - as "type", with the display outputs collated: every engine's first, then every
    engine's second... streams=False leaves stdout/stderr out (they were streamed already)."""
    if groupby not in GROUPINGS:
        raise ValueError(f"groupby must be one of {', '.join(GROUPINGS)}, not {groupby!r}")
    rows = list(zip(targets, stdouts, stderrs, outputs, results))
    if groupby == "engine":
        for e, out, err, outs, res in rows:
            if streams:
                print_stream("stdout", e, out)
                print_stream("stderr", e, err)
            for i, o in enumerate(outs):
                show_output(e, o, label=i == 0)
            if res is not None:
                print_execute_result(e, res, count)
        return
    if streams:
        for e, out, _, _, _ in rows:
            print_stream("stdout", e, out)
        for e, _, err, _, _ in rows:
            print_stream("stderr", e, err)
    if groupby == "order":
        for i in range(max((len(r[3]) for r in rows), default=0)):
            for e, _, _, outs, _ in rows:
                if i < len(outs):
                    show_output(e, outs[i])
    else:
        for e, _, _, outs, _ in rows:
            for i, o in enumerate(outs):
                show_output(e, o, label=i == 0)
    for e, _, _, _, res in rows:
        if res is not None:
            print_execute_result(e, res, count)
