"""xpipe demo: a real pipeline on the embedded default (a coordinator and two local workers).

Run it with ``make demo`` or ``.venv/bin/python examples/demo.py``.
"""

from __future__ import annotations

import logging
import statistics
import sys
import time

from xpipe import DataFlow, Pipeline, PipelineExecutionError, PipelineManager, Task, record_metric, task


def extract_orders(day: int) -> list[dict]:
    """Pretend to read one day of orders (deterministic, so the output can be checked)."""
    return [{"order": day * 100 + i, "amount": round(10 + ((i * 7919 + day * 31) % 97) * 1.5, 2), "day": day} for i in range(50)]


def clean(orders: list[dict]) -> list[dict]:
    return [o for o in orders if o["amount"] >= 12]


def daily_stats(orders: list[dict]) -> dict:
    amounts = [o["amount"] for o in orders]
    record_metric("orders_kept", len(amounts))  # kept with the run, and on /metrics when served
    return {"day": orders[0]["day"], "orders": len(amounts), "revenue": round(sum(amounts), 2),
            "median": statistics.median(amounts)}  # fmt: skip


def report(*days: dict, currency: str = "EUR") -> str:
    lines = [f"day {d['day']}: {d['orders']:3d} orders, revenue {d['revenue']:9.2f} {currency}" for d in days]
    total = sum(d["revenue"] for d in days)
    return "\n".join(lines + [f"total revenue {total:.2f} {currency} over {len(days)} days"])


def build_etl(days: int = 7) -> Pipeline:
    """Fan-out per day (extract -> clean -> stats), fan-in to one report."""
    p = Pipeline("daily_revenue")
    stats = []
    for day in range(days):
        e = Task(f"extract_{day}", extract_orders, args=(day,))
        c = Task(f"clean_{day}", clean, depends_on=[e])
        s = Task(f"stats_{day}", daily_stats, depends_on=[c])
        p.add_tasks([e, c, s])
        stats.append(s)
    p.add_task(Task("report", report, depends_on=stats, kwargs={"currency": "EUR"}))
    # A command task: any program can be a step; its stdout is the result.
    p.add_task(Task.command("hostname", ["uname", "-n"]))
    return p


def main() -> int:
    started = time.perf_counter()
    with PipelineManager() as pm:
        print(f"embedded cluster up at {pm.address} in {time.perf_counter() - started:.2f}s")

        # 1. The seed's explicit form, fanned out over a week.
        result = pm.execute_pipeline(build_etl(), parallel=True, monitor=True, retry_on_failure=True)
        print(f"\nrun {result.run_id}: {result.status} in {result.duration_s:.2f}s "
              f"across workers {sorted({t.worker for t in result.tasks.values()})}")  # fmt: skip
        print(result.outputs["report"])
        print("ran on host:", result.outputs["hostname"]["stdout"].strip())
        print("day 0 metrics:", result.tasks["stats_0"].metrics)

        # 2. The seed's nested-decorator form, with a DataFlow mapping one key to a parameter.
        @pm.pipeline("user_analytics")
        def create_user_analytics_pipeline():
            @task("extract_users")
            def extract_user_data():
                return {"users": [{"name": n, "visits": v} for n, v in [("ana", 12), ("bo", 3), ("cy", 7)]]}

            @task("analyze_behavior", depends_on=["extract_users"])
            def analyze_user_behavior(user_data):
                return sorted(user_data["users"], key=lambda u: -u["visits"])

            @task("generate_insights", kwargs={"users": DataFlow("extract_users", key="users")},
                  depends_on=["analyze_behavior"])  # fmt: skip
            def generate_insights(ranked, users):
                return f"top user {ranked[0]['name']} of {len(users)}"

            return [extract_user_data, analyze_user_behavior, generate_insights]

        insights = pm.execute_pipeline("user_analytics", monitor=True)
        print("\ninsights:", insights.outputs["generate_insights"])

        # 3. Failures come back with the task's error and traceback, and what it printed and logged.
        def flaky():
            print("calling the upstream API")
            logging.getLogger("demo").warning("no answer; giving up")
            raise ConnectionError("upstream API refused the connection")

        broken = Pipeline("broken")
        broken.add_tasks([Task("fetch", flaky), Task("use", clean, depends_on=["fetch"])])
        try:
            pm.execute_pipeline(broken, monitor=False)
        except PipelineExecutionError as exc:
            print(f"\nas expected, {exc.error_type}: {exc}")
            print("its log:")
            print(pm.get_logs(exc.result.run_id, "fetch"), end="")
    print(f"\ndemo finished in {time.perf_counter() - started:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
