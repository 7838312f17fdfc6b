"""Prometheus text exposition of the daemon's state (no client library needed to render it)."""

from __future__ import annotations

from collections.abc import Iterable


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Exposition:
    """Collects metric families and renders them in the text format."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(
        self,
        name: str,
        kind: str,
        help_text: str,
        samples: Iterable[tuple[dict[str, str], float]],
    ) -> None:
        self._lines.append(f"# HELP {name} {help_text}")
        self._lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
            self._lines.append(f"{name}{{{label_text}}} {value}" if labels else f"{name} {value}")

    def render(self) -> str:
        return "\n".join(self._lines) + "\n"
