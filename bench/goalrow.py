"""A row of the benchmark's tables, and its goal met or missed.

bench.py's rows name a goal of its own GOALS (`goal_key`); many.py's and biglan.py's
rows a goal of their scenario's (`scenario_goal`). One shape, so bench.py prints and
serializes every row alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Self


@dataclass
class GoalRow:
    scenario: str
    p2pshare: str
    reference: str
    ratio: str
    rss: str = ""
    goal: str = ""
    raw: dict[str, object] = field(default_factory=dict)
    goal_key: str = ""  # a key of bench.py's GOALS
    value: float | None = None  # the figure compared with the goal's threshold

    # (text, operator, threshold, ...) by key, set by each kind of row.
    GOALS: ClassVar[dict[str, tuple[Any, ...]]] = {}

    @classmethod
    def skipped(cls, scenario: str, note: str, goal: str = "") -> Self:
        """A row for a scenario that could not run on this machine, saying why."""
        return cls(scenario, "-", "skipped", "-", goal=goal, raw={"note": note})

    def goal_name(self) -> str:
        return self.goal_key

    @property
    def met(self) -> str:
        key = self.goal_name()
        if not key or self.value is None:
            return ""
        _text, op, threshold = self.GOALS[key][:3]
        ok = {">=": self.value >= threshold, "<=": self.value <= threshold}.get(
            op, self.value < threshold
        )
        return "met" if ok else "MISSED"


@dataclass
class ScenarioRow(GoalRow):
    """A row of a scenario that keeps its own goals (many.py, biglan.py): its subclass
    sets GOALS, and `scenario_goal` names one of them."""

    scenario_goal: str = ""

    def goal_name(self) -> str:
        return self.scenario_goal
