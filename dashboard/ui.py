"""The Streamlit pages. ``dashboard/app.py`` calls :func:`main`; nothing runs on import.

The page layout (sidebar with the page choice) renders once per full rerun; the page body
is an ``st.fragment`` with ``run_every``, so only it re-renders on each refresh. It reads
copies from the process-wide :class:`~dashboard.view.FleetView`, which the one Kafka feed
thread fills (``st.cache_resource``): no consumer is created per rerun or per session.
The fleet-wide numbers (overview, efficiency) come from the runtime, computed once per
refresh interval for every session.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Final

import pandas as pd
import pydeck as pdk
import streamlit as st
from pydantic import ValidationError
from pydantic_settings import SettingsError

from dashboard import kpis
from dashboard.errors import FeedbackError
from dashboard.feedback import feedback_record
from dashboard.runtime import Runtime, start_runtime
from dashboard.view import AlertEntry, CarHistory, FeedStatus
from telemetry.feedback import Verdict
from telemetry.logs import configure_logging
from telemetry.settings import settings_problems

_log = logging.getLogger("dashboard")

RUNTIME_KEY: Final = "fleetstream_runtime"  # tests put a Runtime with recorded data here
# Per browser session: alert id -> the error of its latest failed feedback write.
FEEDBACK_ERRORS_KEY: Final = "fleetstream_feedback_errors"
PAGES: Final = ("Fleet overview", "Alerts", "Car", "Efficiency")
MAX_ALERTS_SHOWN: Final = 50
MAX_UNPLACED_SHOWN: Final = 30  # cars listed under the map for having no position
# Streamlit markdown badges: no emoji (a browser without an emoji font shows boxes).
SEVERITY_BADGES: Final = {
    "critical": ":red-badge[critical]",
    "high": ":orange-badge[high]",
    "warning": ":yellow-badge[warning]",
    "info": ":blue-badge[info]",
}


def _release(runtime: Runtime) -> None:
    runtime.stop()


@st.cache_resource(show_spinner=False, on_release=_release)
def shared_runtime() -> Runtime:
    """The process-wide runtime: one view and one Kafka feed thread for all sessions."""
    configure_logging()
    return start_runtime()


def current_runtime() -> Runtime:
    """The runtime injected into the session (tests), else the shared one."""
    injected = st.session_state.get(RUNTIME_KEY)
    if isinstance(injected, Runtime):
        return injected
    return shared_runtime()


def main() -> None:
    """Render the dashboard: sidebar navigation and the live page body."""
    st.set_page_config(page_title="fleetstream", layout="wide")
    try:
        runtime = current_runtime()
    except (ValidationError, SettingsError) as exc:
        # A wrong variable: say which, not a traceback, and never its value (the page is
        # seen by every operator; FLEETSTREAM_KAFKA_CONFIG may hold a password).
        problems = settings_problems(exc)
        _log.error("invalid settings: %s", "; ".join(problems))
        st.error("Invalid dashboard settings:\n\n" + "\n".join(f"- {p}" for p in problems))
        st.stop()
    st.sidebar.title("fleetstream")
    page = st.sidebar.radio("Page", PAGES, key="page")
    st.sidebar.caption(
        f"Refreshes every {runtime.settings.dashboard_refresh_s:g} s from Kafka "
        f"{runtime.settings.kafka_bootstrap_servers}."
    )
    live = st.fragment(render_page, run_every=runtime.settings.dashboard_refresh_s)
    live(runtime, page)


def render_page(runtime: Runtime, page: str) -> None:
    """One refresh of the page body (runs as a fragment)."""
    now_ms = runtime.now_ms()
    render_status(runtime.view.status(), runtime)
    if page == "Alerts":
        render_alerts(runtime)
    elif page == "Car":
        render_car(runtime)
    elif page == "Efficiency":
        render_efficiency(runtime, now_ms)
    else:
        render_overview(runtime, now_ms)


def render_status(status: FeedStatus, runtime: Runtime) -> None:
    """The connection notice: a warning while Kafka is unreachable, else one caption line."""
    if status.connected is None:
        st.info(f"Connecting to Kafka {runtime.settings.kafka_bootstrap_servers}…")
    elif not status.connected:
        detail = f" (last error: {status.last_error})" if status.last_error else ""
        st.warning(f"Reconnecting to Kafka {runtime.settings.kafka_bootstrap_servers}…{detail}")
    if status.evicted_active:
        st.warning(
            f"{status.evicted_active:,} active alert episodes were dropped: more were active "
            f"than FLEETSTREAM_DASHBOARD_MAX_ALERTS ({runtime.settings.dashboard_max_alerts:,})."
        )
    if status.last_message_at is None:
        st.info("Waiting for data from Kafka…")
        return
    age = max(0.0, runtime.clock() - status.last_message_at)
    st.caption(
        f"{sum(status.records.values()):,} records read · last one {age:.0f} s ago · "
        f"{status.skipped} malformed skipped"
    )


def _fmt(value: float | None, digits: int = 0, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{unit}"


def _time(ts_ms: int | None) -> str:
    if ts_ms is None:
        return "-"
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def render_overview(runtime: Runtime, now_ms: int) -> None:
    """Fleet overview: KPIs and the live map."""
    settings = runtime.settings
    shown = runtime.overview(now_ms)
    k = shown.kpis
    st.header("Fleet overview")
    row = st.columns(4)
    row[0].metric("Cars online", f"{k.online} / {k.cars}")
    row[1].metric("Driving", k.driving)
    row[2].metric("Charging / refuelling", k.charging)
    row[3].metric("Active alerts", k.active_total)
    row = st.columns(4)
    for col, severity in zip(row, kpis.SEVERITIES, strict=True):
        col.metric(f"Active {severity}", k.active_alerts[severity])
    period = f"last {settings.dashboard_kpi_window_s / 60:g} min"
    last = st.columns(3)
    last[0].metric("EV consumption (Wh/km)", _fmt(k.ev_wh_per_km), help=period)
    last[1].metric("ICE consumption (L/100 km)", _fmt(k.ice_l_per_100km, 1), help=period)
    last[2].metric(
        "Data completeness",
        _fmt(k.completeness_pct, 2, " %"),
        help=f"records received / numbered by the cars (seq), {period}",
    )
    st.subheader("Map")
    if shown.points:
        render_map(shown.points, settings.dashboard_map_style)
    else:
        st.info("No car positions yet.")
    st.caption(
        "Colour: active alert severity (red critical, orange high, yellow warning, blue info), "
        "else state (green driving, purple charging, teal refuelling, grey parked/asleep, "
        "light grey offline). A car whose latest telemetry has no position is drawn at its "
        "last known one, marked stale in the tooltip."
    )
    unplaced = shown.off_map
    if unplaced:
        listed = [f"`{vid}` ({severity})" for vid, severity in unplaced.items()]
        more = (
            f" and {len(listed) - MAX_UNPLACED_SHOWN:,} more"
            if len(listed) > MAX_UNPLACED_SHOWN
            else ""
        )
        st.warning(
            "Active alerts of cars with no known position (not on the map): "
            + ", ".join(listed[:MAX_UNPLACED_SHOWN])
            + more
        )
    active = shown.newest_active
    if active:
        st.subheader("Newest active alerts")
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "time": _time(a["ts"]),
                        "severity": a["severity"],
                        "kind": a["kind"],
                        "car": a["vehicle_id"],
                        "message": a["message"],
                    }
                    for a in active
                ]
            ),
            hide_index=True,
            width="stretch",
        )


def render_map(points: list[kpis.MapPoint], style: str) -> None:
    """The cars as a pydeck scatter layer (no base map when ``style`` is ``none``)."""
    frame = pd.DataFrame(points)
    layer = pdk.Layer(
        "ScatterplotLayer",
        frame,
        get_position="[lon, lat]",
        get_fill_color="colour",
        get_radius=180,
        radius_min_pixels=4,
        radius_max_pixels=14,
        pickable=True,
    )
    view = pdk.ViewState(
        latitude=float(frame["lat"].mean()), longitude=float(frame["lon"].mean()), zoom=10
    )
    deck = pdk.Deck(
        layers=[layer],
        initial_view_state=view,
        map_style=None if style == "none" else style,
        tooltip={"text": "{vehicle_id}\n{state}\n{alert}\n{position}"},
    )
    st.pydeck_chart(deck, height=480)


def _feedback_errors() -> dict[str, str]:
    """This browser session's failed feedback writes: alert id -> error text."""
    errors = st.session_state.get(FEEDBACK_ERRORS_KEY)
    if not isinstance(errors, dict):
        errors = {}
        st.session_state[FEEDBACK_ERRORS_KEY] = errors
    return errors


def _dismiss_feedback_error(alert_id: str) -> None:
    _feedback_errors().pop(alert_id, None)


def _send_feedback(runtime: Runtime, alert: AlertEntry, verdict: Verdict) -> None:
    # The error stays on the card until dismissed or a later write succeeds: shown only
    # by the click's rerun, the next refresh (2 s) removed it before anyone read it.
    try:
        record = feedback_record(alert, verdict, runtime.now_ms())
        runtime.feedback.send(record)
    except FeedbackError as exc:
        _log.warning("%s", exc)
        _feedback_errors()[alert["alert_id"]] = str(exc)
        return
    _dismiss_feedback_error(alert["alert_id"])
    # Show it now; the feed reads the same record back from Kafka (latest verdict wins).
    runtime.view.ingest("feedback", record)
    runtime.cache.clear()  # the overview's active alerts, for every session
    st.toast(f"{alert['alert_id']}: {verdict.replace('_', ' ')}")


def render_alerts(runtime: Runtime) -> None:
    """The alert feed: newest first, filters, evidence, feedback buttons."""
    st.header("Alerts")
    alerts = runtime.view.alerts()
    cols = st.columns(4)
    kinds = cols[0].multiselect("Kind", kpis.ALERT_KINDS, key="alert_kinds")
    severities = cols[1].multiselect("Severity", kpis.SEVERITIES, key="alert_severities")
    cars = cols[2].multiselect("Car", runtime.view.vehicle_ids(), key="alert_cars")
    active_only = cols[3].checkbox("Active only", key="alert_active_only")
    shown = kpis.filter_alerts(
        alerts, kinds=kinds, severities=severities, cars=cars, active_only=active_only
    )
    st.caption(f"{len(shown)} of {len(alerts)} alert episodes, newest first.")
    if not shown:
        st.info("No alerts match.")
    for alert in shown[:MAX_ALERTS_SHOWN]:
        render_alert(alert, runtime)
    if len(shown) > MAX_ALERTS_SHOWN:
        st.caption(f"… {len(shown) - MAX_ALERTS_SHOWN} older alerts not shown; narrow the filter.")


def render_alert(alert: AlertEntry, runtime: Runtime) -> None:
    """One alert card with its feedback buttons."""
    # The key gives the card a stable CSS class (st-key-alert-...) for browser tests.
    with st.container(border=True, key=f"alert-{alert['alert_id']}"):
        text, ack, false_positive = st.columns([5, 1.4, 1.4])
        state = "active" if alert["active"] else f"cleared {_time(alert['cleared_ts'])}"
        verdict = f" · **{alert['verdict'].replace('_', ' ')}**" if alert["verdict"] else ""
        text.markdown(
            f"{SEVERITY_BADGES.get(alert['severity'], alert['severity'])} "
            f"**{alert['kind']}** · `{alert['vehicle_id']}` · {_time(alert['ts'])} · "
            f"{state}{verdict}"
        )
        text.markdown(alert["message"])
        evidence = ", ".join(f"{k}={v}" for k, v in alert["evidence"].items())
        text.caption(f"evidence: {evidence or '-'} · detector {alert['detector']}")
        # Feedback labels the windows before the raise, which is unknown here.
        no_raise = not alert["raised_seen"]
        if no_raise:
            text.caption("raised before the dashboard's backfill: no feedback possible")
        if ack.button(
            "Acknowledge", key=f"ack-{alert['alert_id']}", width="stretch", disabled=no_raise
        ):
            _send_feedback(runtime, alert, "acknowledged")
        if false_positive.button(
            "False positive", key=f"fp-{alert['alert_id']}", width="stretch", disabled=no_raise
        ):
            _send_feedback(runtime, alert, "false_positive")
        error = _feedback_errors().get(alert["alert_id"])
        if error is not None:
            st.error(f"Feedback not saved: {error}")
            st.button(
                "Dismiss",
                key=f"dismiss-{alert['alert_id']}",
                on_click=_dismiss_feedback_error,
                args=(alert["alert_id"],),
            )


def stats_frame(history: CarHistory) -> pd.DataFrame:
    """One row per stats window, indexed by window end time."""
    if not history.stats:
        return pd.DataFrame()
    frame = pd.DataFrame(history.stats)
    frame["time"] = pd.to_datetime(frame["window_end"], unit="ms", utc=True)
    frame["consumption"] = (
        frame["consumption_wh_per_km"]
        if history.powertrain == "ev"
        else frame["consumption_l_per_100km"]
    )
    return frame.set_index("time")


def samples_frame(history: CarHistory) -> pd.DataFrame:
    """One row per kept telemetry sample, indexed by event time."""
    if not history.samples:
        return pd.DataFrame()
    frame = pd.DataFrame(history.samples)
    frame["time"] = pd.to_datetime(frame["ts"], unit="ms", utc=True)
    return frame.set_index("time")


def _chart(frame: pd.DataFrame, columns: dict[str, str], title: str) -> None:
    """A line chart of some columns over the time index.

    A hand-written Vega-Lite spec: ``st.line_chart`` goes through Altair's schema
    validation, about 50 ms per chart per refresh.
    """
    present = {c: label for c, label in columns.items() if c in frame and frame[c].notna().any()}
    st.markdown(f"**{title}**")
    if not present:
        st.caption("no data yet")
        return
    long = (
        frame[list(present)]
        .rename(columns=present)
        .rename_axis("time")
        .reset_index()
        .melt(id_vars="time", var_name="series", value_name="value")
        .dropna()
    )
    spec = {
        "mark": {"type": "line", "interpolate": "step-after"},
        "encoding": {
            # Vega-Lite shows times in the browser's zone unless told; every other
            # time on these pages is UTC.
            "x": {"field": "time", "type": "temporal", "title": "UTC", "scale": {"type": "utc"}},
            "y": {"field": "value", "type": "quantitative", "title": None},
            "color": {"field": "series", "type": "nominal", "title": None},
        },
    }
    st.vega_lite_chart(long, spec, height=220)


def render_car(runtime: Runtime) -> None:
    """Per-car page: levels, consumption, speed, tyres, temperatures, sessions, alerts."""
    st.header("Car")
    cars = runtime.view.vehicle_ids()
    if not cars:
        st.info("No cars yet.")
        return
    wanted = st.query_params.get("car")
    index = cars.index(wanted) if wanted in cars else 0
    vid = st.selectbox("Car", cars, index=index, key="car")
    history = runtime.view.car(vid) if vid else None
    if history is None:
        st.info("This car is no longer in memory.")
        return
    ev = history.powertrain == "ev"
    latest = history.samples[-1] if history.samples else None
    cols = st.columns(4)
    cols[0].metric("Powertrain", "EV" if ev else "ICE")
    cols[1].metric("State", latest["state"] if latest else "-")
    cols[2].metric(
        "Battery" if ev else "Fuel", _fmt(latest["level_pct"] if latest else None, 1, " %")
    )
    cols[3].metric(
        "Last seen",
        _time(latest["ts"])[11:] if latest else "-",  # the time of day; the date is in help
        help=_time(latest["ts"]) if latest else None,
    )
    stats = stats_frame(history)
    samples = samples_frame(history)
    unit = "Wh/km" if ev else "L/100 km"
    left, right = st.columns(2)
    with left:
        level = samples if not samples.empty else stats
        _chart(level, {"level_pct": "level %", "level_end_pct": "level %"}, "Battery / fuel level")
        _chart(stats, {"consumption": unit}, f"Consumption per window ({unit})")
        _chart(samples, {"speed_kmh": "speed km/h"}, "Speed (km/h)")
    with right:
        _chart(
            samples,
            {f"tpms_{t}_bar": t.upper() for t in ("fl", "fr", "rl", "rr")},
            "Tyre pressures (bar)",
        )
        _chart(
            samples,
            {
                "temp_c": "battery" if ev else "coolant",
                "inside_temp_c": "inside",
                "outside_temp_c": "outside",
            },
            "Temperatures (°C)",
        )
        _chart(stats, {"avg_speed_kmh": "avg", "max_speed_kmh": "max"}, "Speed per window (km/h)")
    st.subheader("Recent drives, charges and refuels")
    sessions = [s for s in reversed(history.sessions) if s["kind"] != "idle"]
    if sessions:
        st.dataframe(pd.DataFrame([_session_row(s) for s in sessions]), hide_index=True)
    else:
        st.caption("none yet")
    st.subheader("Alerts")
    if history.alerts:
        for alert in sorted(history.alerts, key=lambda a: a["ts"], reverse=True)[:20]:
            render_alert(alert, runtime)
    else:
        st.caption("none")


def _session_row(s: Any) -> dict[str, Any]:
    return {
        "kind": s["kind"],
        "start": _time(s["start_ts"]),
        "duration min": round(s["duration_s"] / 60, 1),
        "distance km": s["distance_km"],
        "energy used kWh": s["energy_used_kwh"],
        "energy added kWh": s["energy_added_kwh"],
        "fuel used L": s["fuel_used_l"],
        "fuel added L": s["fuel_added_l"],
        "Wh/km": s["consumption_wh_per_km"],
        "L/100 km": s["consumption_l_per_100km"],
        "level %": f"{_fmt(s['level_start_pct'], 1)} → {_fmt(s['level_end_pct'], 1)}",
    }


def render_efficiency(runtime: Runtime, now_ms: int) -> None:
    """Consumption by outside temperature and idle drain per car (TeslaMate style)."""
    st.header("Efficiency")
    tables = runtime.efficiency(now_ms)
    bins = tables.by_temperature
    st.subheader("Consumption by outside temperature (5 °C bins)")
    if bins:
        frame = pd.DataFrame(bins)
        cols = st.columns(2)
        for col, powertrain, unit in (
            (cols[0], "ev", "Wh/km"),
            (cols[1], "ice", "L/100 km"),
        ):
            part = frame[frame["powertrain"] == powertrain]
            with col:
                st.markdown(f"**{'EV' if powertrain == 'ev' else 'ICE'} ({unit})**")
                if part.empty:
                    st.caption("no driving windows yet")
                else:
                    st.bar_chart(
                        part,
                        x="temp_c",
                        y="consumption",
                        x_label="outside temperature (°C, bin start)",
                        y_label=unit,
                        height=240,
                    )
        st.dataframe(frame, hide_index=True)
    else:
        st.caption("No driving windows with consumption and outside temperature yet.")
    st.subheader("Idle drain per car (parked or asleep)")
    drains = tables.idle_drain
    if drains:
        frame = pd.DataFrame(drains)
        st.bar_chart(
            frame, x="vehicle_id", y="drain_pct_per_h", x_label="car", y_label="%/h", height=240
        )
        st.dataframe(frame, hide_index=True)
    else:
        st.caption("No idle sessions of a minute or more yet.")
