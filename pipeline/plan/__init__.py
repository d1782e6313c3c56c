"""Resource Provisioning Automation: from forecast quantiles to a cost-optimal pre-allocation plan."""

from pipeline.plan.planner import build_plan, latest_plan_id, plan_id_for, read_plan

__all__ = ["build_plan", "latest_plan_id", "plan_id_for", "read_plan"]
