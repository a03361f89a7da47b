"""Read an MXNet symbol file (``PREFIX-symbol.json``) as a graph of nodes, without mxnet.

The JSON (``mx.sym.Symbol.tojson``): ``nodes`` in topological order, each ``{"op", "name", "attrs",
"inputs"}`` with ``op`` ``"null"`` for variables (the data input and every weight), ``inputs`` a list
of ``[node index, output index(, version)]``; ``arg_nodes`` (the variables); ``heads`` (the outputs).
Every attribute is a string (``"(3, 3)"``, ``"True"``, ``"2e-05"``); files older than mxnet 0.9 call
the dict ``param`` (with user attributes in ``attr``). The typed accessors below parse values the
way mxnet's parameter parser does and name the node and attribute when one is malformed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PackError


@dataclass
class MxNode:
    index: int
    op: str  # "null" for a variable
    name: str
    attrs: dict[str, str] = field(default_factory=dict)
    inputs: list[tuple[int, int]] = field(default_factory=list)  # (node index, output index)
    source: str = ""

    def _bad(self, key: str, value: str, expected: str) -> PackError:
        return PackError(f"{self.source}: node {self.name!r} ({self.op}): attribute {key}={value!r} is not "
                         f"{expected}")

    def has(self, key: str) -> bool:
        return key in self.attrs

    def text(self, key: str, default: str | None = None) -> str:
        value = self.attrs.get(key, default)
        if value is None:
            raise PackError(f"{self.source}: node {self.name!r} ({self.op}) lacks the attribute {key!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.attrs.get(key)
        if value is None:
            return default
        lowered = value.strip().lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise self._bad(key, value, "a boolean")

    def integer(self, key: str, default: int | None = None) -> int:
        return self._parsed(key, default, int, "an integer")

    def number(self, key: str, default: float | None = None) -> float:
        return self._parsed(key, default, float, "a number")

    def _parsed(self, key: str, default, cast, expected: str):
        value = self.attrs.get(key)
        if value is None and default is not None:
            return default
        value = self.text(key)
        try:
            return cast(value)
        except ValueError:
            raise self._bad(key, value, expected) from None

    def ints(self, key: str, default: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """A shape-like tuple: ``(3, 3)``, ``[3,3]``, ``(3,)``, ``3`` or ``()``; None entries are -1."""
        value = self.attrs.get(key)
        if value is None:
            if default is None:
                raise PackError(f"{self.source}: node {self.name!r} ({self.op}) lacks the attribute {key!r}")
            return tuple(default)
        inner = value.strip()
        if inner[:1] in "([" and inner[-1:] in ")]":
            inner = inner[1:-1]
        parts = [p.strip() for p in inner.split(",") if p.strip()]
        try:
            return tuple(-1 if p == "None" else int(p) for p in parts)
        except ValueError:
            raise self._bad(key, value, "a tuple of integers") from None


@dataclass
class MxSymbol:
    nodes: list[MxNode]
    heads: list[tuple[int, int]]
    source: str

    def consumers(self) -> dict[int, list[MxNode]]:
        users: dict[int, list[MxNode]] = {}
        for node in self.nodes:
            for index, _ in node.inputs:
                users.setdefault(index, []).append(node)
        return users

    def find(self, name: str) -> MxNode | None:
        return next((n for n in self.nodes if n.name == name), None)


def read_symbol(path) -> MxSymbol:
    """Parse ``PREFIX-symbol.json``; one-line ``PackError`` for a missing, foreign or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise PackError(f"{path}: mxnet symbol file not found")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise PackError(f"{path}: unreadable mxnet symbol file ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PackError(f"{path}: not a JSON symbol file ({e})") from None
    if (not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list)
            or not isinstance(doc.get("heads"), list)):
        raise PackError(f"{path}: not an mxnet symbol file (expected a JSON object with 'nodes' and 'heads')")
    source = str(path)
    nodes = []
    for index, raw in enumerate(doc["nodes"]):
        if not isinstance(raw, dict) or not all(isinstance(raw.get(k), str) for k in ("op", "name")):
            raise PackError(f"{path}: node #{index} is not an object with 'op' and 'name'")
        attrs = raw.get("attrs", raw.get("param", raw.get("attr", {}))) or {}
        if not isinstance(attrs, dict):
            raise PackError(f"{path}: node {raw['name']!r}: attributes are not an object")
        if not isinstance(raw.get("inputs", []), list):
            raise PackError(f"{path}: node {raw['name']!r}: 'inputs' is not a list")
        inputs = []
        for entry in raw.get("inputs", []):
            if (not isinstance(entry, list) or len(entry) < 2 or not all(isinstance(v, int) for v in entry)
                    or not 0 <= entry[0] < index):
                raise PackError(f"{path}: node {raw['name']!r}: input {entry!r} is not [earlier node, slot]")
            inputs.append((entry[0], entry[1]))
        nodes.append(MxNode(index, raw["op"], raw["name"], {str(k): str(v) for k, v in attrs.items()},
                            inputs, source))
    heads = []
    for entry in doc["heads"]:
        if not isinstance(entry, list) or len(entry) < 2 or not 0 <= entry[0] < len(nodes):
            raise PackError(f"{path}: head {entry!r} is not [node, output]")
        heads.append((entry[0], entry[1]))
    if not heads:
        raise PackError(f"{path}: the symbol has no outputs ('heads' is empty)")
    return MxSymbol(nodes, heads, source)
