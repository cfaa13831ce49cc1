"""Recipes: a YAML grid, validated (`schema`), planned into a job graph (`plan`), checked against
the machine (`requirements`) and against the store (`state`). Executors (`ssbench.executors`)
run plans; nothing here runs a job."""
from __future__ import annotations

from ssbench.recipes.plan import PENDING, Job, Plan, plan
from ssbench.recipes.requirements import PROBE_HOSTS, check_requirements, missing_requirements, network_available
from ssbench.recipes.schema import (
    AttackStage,
    FinetuneStage,
    Overrides,
    Recipe,
    ReportStage,
    Resources,
    TrainStage,
    load_recipe,
)

__all__ = [
    "PENDING", "PROBE_HOSTS", "AttackStage", "FinetuneStage", "Job", "Overrides", "Plan", "Recipe", "ReportStage",
    "Resources", "TrainStage", "check_requirements", "load_recipe", "missing_requirements", "network_available", "plan",
]
