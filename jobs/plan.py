"""`python -m jobs plan [--json]`: each stage's estimated peak memory, published sizes, the
largest batch sizes that fit the device and the local disk it needs, for the same settings the
stages read (docs/stages/index.md)."""

from __future__ import annotations

import json

from influence_core.plan import make_plan, render
from influence_core.prompts import load_prompts
from influence_core.settings import PlanSettings


def main(settings: PlanSettings) -> None:
    plan = make_plan(settings, len(load_prompts(settings.prompts)))
    print(json.dumps(plan, indent=2) if settings.as_json else render(plan))
