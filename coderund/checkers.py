"""Whether a program's output is the expected one: exactly, up to trailing white space, token by
token, or token by token with numbers within a tolerance. Pure functions, no I/O."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import ValidationFailed

KINDS = ("exact", "trim", "tokens", "float")


@dataclass(frozen=True)
class Checker:
    kind: str = "trim"
    abs_tol: float = 0.0
    rel_tol: float = 0.0

    def accepts(self, output: str, expected: str) -> bool:
        if self.kind == "exact":
            return output == expected
        if self.kind == "trim":
            return _trimmed(output) == _trimmed(expected)
        got, want = output.split(), expected.split()
        if self.kind == "tokens":
            return got == want
        return len(got) == len(want) and all(self._close(g, w) for g, w in zip(got, want, strict=True))

    def _close(self, got: str, want: str) -> bool:
        if got == want:
            return True
        try:
            a, b = float(got), float(want)
        except ValueError:
            return False
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=self.rel_tol, abs_tol=self.abs_tol)

    def document(self) -> str | dict[str, Any]:
        """As a request names it, and as it is stored."""
        return {"float": {"abs": self.abs_tol, "rel": self.rel_tol}} if self.kind == "float" else self.kind


DEFAULT = Checker()


def _trimmed(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.split("\n")).rstrip("\n")


def parse_checker(value: Any) -> Checker:
    """`exact`, `trim`, `tokens`, or {"float": {"abs": 1e-6, "rel": 1e-6}}."""
    if value in ("exact", "trim", "tokens"):
        return Checker(value)
    if isinstance(value, dict) and set(value) == {"float"} and isinstance(value["float"], dict):
        tolerances = value["float"]
        if set(tolerances) <= {"abs", "rel"} and all(
                isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t) and 0 <= t <= 1e9
                for t in tolerances.values()):
            return Checker("float", float(tolerances.get("abs", 0)), float(tolerances.get("rel", 0)))
    raise ValidationFailed("'checker' must be \"exact\", \"trim\", \"tokens\" or {\"float\": {\"abs\": x, \"rel\": y}}"
                           " with tolerances from 0 to 1e9.")
