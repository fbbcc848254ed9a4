"""Docs that match the code: fails (naming what is wrong) when

- a function named in docs/architecture.md's "Life of a request" table no longer exists in the
  file the table names;
- a message, one of its fields, or an error kind of the protocol is missing from docs/protocol.md;
- a setting is missing from docs/configuration.md or listed with another default.

usage: check_docs.py REPO PYTHON_BUILD_DIR   (prints DOCS OK when all is well)
"""

import re
import sys
from pathlib import Path

repo = Path(sys.argv[1])
sys.path.insert(0, sys.argv[2])
from pcluster import _core  # noqa: E402

problems = []


def section(text, title):
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    return text[start : end if end >= 0 else len(text)]


# --- the life of a request: every `file` `name` pair names a function defined in that file ---
arch = (repo / "docs" / "architecture.md").read_text()
table = section(arch, "## Life of a request")
checked = 0
for row in table.splitlines():
    if not row.startswith("|"):
        continue
    for cell in row.split("|"):
        current = None
        for token in re.findall(r"`([^`]+)`", cell):
            if "/" in token and re.search(r"\.(py|cpp|hpp)$", token):
                current = repo / token
                if not current.exists():
                    problems.append(f"architecture.md names {token}, which does not exist")
                    current = None
                continue
            if current is None or not re.fullmatch(r"[A-Za-z_][\w]*((::|\.)[A-Za-z_]\w*)?", token):
                continue
            src = current.read_text()
            *owner, name = re.split(r"::|\.", token)
            if current.suffix == ".py":
                ok = re.search(rf"^\s*def {name}\(", src, re.M) and (not owner or re.search(rf"^class {owner[0]}\b", src, re.M))
            else:
                ok = re.search(rf"\b{name}\s*\(", src) and (not owner or re.search(rf"\b(class|struct) {owner[0]}\b|\b{owner[0]}::", src))
            if not ok:
                problems.append(f"architecture.md: {token} is not defined in {current.relative_to(repo)}")
            checked += 1
if checked < 40:
    problems.append(f"architecture.md's request table names only {checked} functions: has its format changed?")

# --- the protocol: every message with its type number and fields, every error kind ---
proto = (repo / "docs" / "protocol.md").read_text()
rows = {m.group(2): m.group(0) for m in re.finditer(r"^\| (\d+) \| `(\w+)` \|.*$", proto, re.M)}
for name in _core.messages:
    cls = getattr(_core, name)
    row = rows.get(name)
    if row is None:
        problems.append(f"protocol.md has no row for message {name}")
        continue
    for field in cls.fields:
        if f"`{field}" not in row:
            problems.append(f"protocol.md: the row of {name} does not name its field {field}")
for kind, name, bases, doc in _core.error_kinds:
    if not re.search(rf"^\| `{name}` \|", proto, re.M):
        problems.append(f"protocol.md's error table has no row for {name}")
if f"(version {_core.protocol_version})" not in proto:
    problems.append(f"protocol.md's title does not say version {_core.protocol_version}")

# --- settings ---
conf = (repo / "docs" / "configuration.md").read_text()
for variable, default, who, doc in _core.settings:
    m = re.search(rf"^\| `{variable}` \| ([^|]*) \|", conf, re.M)
    if not m:
        problems.append(f"configuration.md has no row for {variable}")
    elif m.group(1).strip() != (default or "(none)"):
        problems.append(f"configuration.md gives {variable} the default {m.group(1).strip()}, the code {default or '(none)'}")

if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"DOCS OK ({checked} functions, {len(_core.messages)} messages, {len(_core.settings)} settings)")
