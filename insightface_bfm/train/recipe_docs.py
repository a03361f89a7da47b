"""The recipe reference, generated from the schema in ``recipe.py``.

Every key of a recipe is a dataclass field of ``recipe.py``; its meaning is the comment written
next to it there (the lines right above the field, or a comment at the end of its line), so the
schema stays the one place a key is described. ``reference_rows`` reads those comments with the
field's type, default and rules; ``reference_markdown`` lays them out as the docs' recipe reference
page (``docs/hooks.py`` puts it there at build time); ``undocumented_keys`` lists the keys without
a description (a test keeps that list empty).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from dataclasses import dataclass

from . import recipe as schema


@dataclass(frozen=True)
class KeyDoc:
    key: str  # dotted path, e.g. "optim.lr"
    type: str
    default: str
    rules: str  # choices / bounds, as validated at the door
    description: str


def _field_comments(cls) -> dict[str, str]:
    """Field name -> its comment: the contiguous ``#`` lines right above it, else its inline one."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    (node,) = ast.parse(source).body
    found = {}
    for stmt in node.body:
        if not isinstance(stmt, ast.AnnAssign) or not isinstance(stmt.target, ast.Name):
            continue
        above, row = [], stmt.lineno - 2  # 0-based index of the line above
        while row >= 0 and lines[row].strip().startswith("#"):
            above.insert(0, lines[row].strip().lstrip("#").strip())
            row -= 1
        line = lines[stmt.lineno - 1]
        inline = line.split("#", 1)[1].strip() if "#" in line and not line.strip().startswith("#") else ""
        found[stmt.target.id] = " ".join(above) or inline
    return found


def _type_name(tp) -> str:
    text = tp if isinstance(tp, str) else getattr(tp, "__name__", str(tp))
    return text.replace("typing.", "").replace(" | None", " or null")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return ""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _rules(f: dataclasses.Field) -> str:
    meta = f.metadata
    parts = []
    if "choices" in meta:
        parts.append("one of " + ", ".join(f"`{c}`" for c in meta["choices"]))
    if "min" in meta:
        parts.append(f">= {meta['min']}")
    if "max" in meta:
        parts.append(f"<= {meta['max']}")
    return "; ".join(parts)


def _section_rows(cls, prefix: str) -> list[KeyDoc]:
    comments = _field_comments(cls)
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            continue  # a section: its keys are listed under it
        rows.append(KeyDoc(key, _type_name(f.type), _default(f), _rules(f), comments.get(f.name, "")))
    return rows


def sections() -> list[tuple[str, type]]:
    """(name, dataclass) of each recipe section, in the schema's order; "" is the top level."""
    hints = typing.get_type_hints(schema.Recipe)
    return [("", schema.Recipe)] + [(f.name, hints[f.name]) for f in dataclasses.fields(schema.Recipe)
                                    if dataclasses.is_dataclass(hints[f.name])]


def reference_rows() -> list[KeyDoc]:
    rows = []
    for name, cls in sections():
        rows += _section_rows(cls, f"{name}." if name else "")
    return rows


def undocumented_keys() -> list[str]:
    return [row.key for row in reference_rows() if not row.description]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def reference_markdown() -> str:
    """The recipe reference as Markdown: one table per section."""
    out = []
    for name, cls in sections():
        title = f"`{name}`" if name else "Top level"
        out.append(f"## {title}\n")
        doc = inspect.getdoc(cls) if name else None
        if doc and not doc.startswith(cls.__name__ + "("):
            out.append(doc.replace("\n", " ") + "\n")
        out.append("| key | type | default | allowed | meaning |\n|---|---|---|---|---|")
        for row in _section_rows(cls, f"{name}." if name else ""):
            out.append(f"| `{row.key}` | {_cell(row.type)} | `{_cell(row.default)}` | {_cell(row.rules)} | "
                       f"{_cell(row.description)} |")
        out.append("")
    return "\n".join(out)
