"""A table row of a scenario that keeps its own goals (bench/many.py, bench/biglan.py).

Shaped like bench.py's Row, so bench.py prints and serializes these rows with its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar


@dataclass
class ScenarioRow:
    scenario: str
    p2pshare: str
    reference: str
    ratio: str
    rss: str = ""
    goal: str = ""
    raw: dict[str, object] = field(default_factory=dict)
    goal_key: str = ""  # a key of bench.py's GOALS: never set here
    value: float | None = None
    scenario_goal: str = ""  # a key of the subclass's GOALS

    # (text, operator, threshold) by key, set by each scenario's subclass.
    GOALS: ClassVar[dict[str, tuple[str, str, float]]] = {}

    @property
    def met(self) -> str:
        if not self.scenario_goal or self.value is None:
            return ""
        _text, op, threshold = self.GOALS[self.scenario_goal]
        ok = {">=": self.value >= threshold, "<=": self.value <= threshold}.get(
            op, self.value < threshold
        )
        return "met" if ok else "MISSED"
