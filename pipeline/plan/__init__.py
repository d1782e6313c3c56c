"""Resource Provisioning Automation: from forecast quantiles to a cost-optimal pre-allocation plan."""

from pipeline.plan.planner import build_plan, latest_plan_id, plan_id_for, read_plan
from pipeline.plan.policy import PlannerConfig, load_planner_config

__all__ = ["PlannerConfig", "build_plan", "latest_plan_id", "load_planner_config", "plan_id_for", "read_plan"]
