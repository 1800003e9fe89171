"""Smart Licensing's metric families, built at scrape time from the agent's view (S1, S5-S7, S10)."""

from __future__ import annotations

from prometheus_client.core import GaugeMetricFamily

from meter.licensing import smart


def smart_families(node, now: float) -> list:
    """Registration and authorization state (one series per state, 1 on the current one), the time
    left in evaluation and until authorization expiry, compliance per tag. Empty without an agent."""
    agent = getattr(node, "smart", None)
    if agent is None:
        return []
    view = agent.view(now)
    registration = GaugeMetricFamily("meter_smart_registration_state",
                                     "1 on the node's Smart Licensing registration state (S5).", labels=["state"])
    for state in smart.REGISTRATION_STATES:
        registration.add_metric([state], 1.0 if view["registration"]["status"] == state else 0.0)
    authorization = GaugeMetricFamily("meter_smart_authorization_state",
                                      "1 on the node's Smart Licensing authorization state (S6).", labels=["state"])
    for state in smart.AUTHORIZATION_STATES:
        authorization.add_metric([state], 1.0 if view["authorization"]["status"] == state else 0.0)
    # Seconds, Prometheus' base unit (promtool check metrics); dashboards divide by 86400 for days.
    evaluation = GaugeMetricFamily("meter_smart_evaluation_remaining_seconds",
                                   "Time left in the Smart Licensing evaluation period (S1).")
    evaluation.add_metric([], agent.machine.evaluation_left(now))
    families = [registration, authorization, evaluation]
    expires = view["authorization"]["expires_at"]
    if expires is not None:
        until = GaugeMetricFamily("meter_smart_authorization_remaining_seconds",
                                  "Time until the Smart authorization expires without contact (S7).")
        until.add_metric([], max(0.0, expires - now))
        families.append(until)
    compliance = GaugeMetricFamily("meter_smart_tag_compliant",
                                   "1 when a license tag is authorized, 0 otherwise, with its S10 status.",
                                   labels=["license", "tag", "status"])
    for row in view["usage"]:
        compliance.add_metric([row["license"], row["tag"], row["status"]],
                              1.0 if row["status"] == smart.TAG_AUTHORIZED else 0.0)
    families.append(compliance)
    return families
