"""The Streamlit app under AppTest, with recorded data injected through session state."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from streamlit.testing.v1 import AppTest

from dashboard.errors import FeedbackError
from dashboard.feedback import ListFeedbackSink
from dashboard.runtime import Runtime
from dashboard.settings import DashboardSettings
from dashboard.ui import RUNTIME_KEY
from dashboard.view import FleetSnapshot, FleetView
from telemetry.feedback import FeedbackRecord

from ..records import make_ev
from .fleet_data import Recording, _alert, filled_view, runtime_for

pytestmark = pytest.mark.unit

APP = Path(__file__).resolve().parents[3] / "dashboard" / "app.py"


def app_with(runtime: Runtime, page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=30)
    at.session_state[RUNTIME_KEY] = runtime
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    if page is not None:
        at.sidebar.radio(key="page").set_value(page).run()
        assert not at.exception, [e.message for e in at.exception]
    return at


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_overview_shows_kpis_and_map(small: Recording) -> None:
    at = app_with(runtime_for(small))
    shown = metrics(at)
    assert shown["Cars online"] == "2 / 3"
    assert shown["Driving"] == "1"
    assert shown["Charging / refuelling"] == "1"
    assert shown["Active alerts"] == "2"
    assert shown["Active critical"] == "1"
    assert shown["Active high"] == "0"
    assert shown["Active info"] == "1"
    assert shown["EV consumption (Wh/km)"] == "150"
    assert shown["ICE consumption (L/100 km)"] == "6.0"
    assert shown["Data completeness"] == "98.89 %"
    decks = at.get("deck_gl_json_chart")
    assert len(decks) == 1
    assert "ScatterplotLayer" in decks[0].proto.json
    assert "ev-2" in decks[0].proto.json
    assert not at.warning


def test_reconnecting_notice_instead_of_a_traceback(small: Recording) -> None:
    runtime = runtime_for(small)
    runtime.view.set_connected(False, "Connection refused")
    at = app_with(runtime)
    assert len(at.warning) == 1
    assert "Reconnecting to Kafka" in at.warning[0].value
    assert "Connection refused" in at.warning[0].value
    assert metrics(at)["Cars online"] == "2 / 3"  # the last known state stays visible


def test_empty_view_waits_for_data() -> None:
    runtime = Runtime(
        settings=runtime_for(Recording()).settings, view=FleetView(), feedback=ListFeedbackSink()
    )
    at = app_with(runtime)
    assert [i.value for i in at.info][:2] == [
        "Connecting to Kafka 127.0.0.1:9092…"
        if runtime.settings.kafka_bootstrap_servers == "127.0.0.1:9092"
        else f"Connecting to Kafka {runtime.settings.kafka_bootstrap_servers}…",
        "Waiting for data from Kafka…",
    ]
    assert metrics(at)["Cars online"] == "0 / 0"


def test_alert_feed_newest_first_with_filters(small: Recording) -> None:
    at = app_with(runtime_for(small), "Alerts")
    messages = [m.value for m in at.markdown if m.value.startswith(("ev-", "ice-"))]
    assert messages == ["ev-1: overheat", "ev-2: sensor glitch", "ice-1: fuel loss"]
    assert any("evidence: value=42" in c.value for c in at.caption)
    at.multiselect(key="alert_severities").set_value(["high"]).run()
    messages = [m.value for m in at.markdown if m.value.startswith(("ev-", "ice-"))]
    assert messages == ["ice-1: fuel loss"]
    at.multiselect(key="alert_severities").set_value([]).run()
    at.checkbox(key="alert_active_only").check().run()
    at.multiselect(key="alert_cars").set_value(["ev-2"]).run()
    messages = [m.value for m in at.markdown if m.value.startswith(("ev-", "ice-"))]
    assert messages == ["ev-2: sensor glitch"]


def test_feedback_buttons_produce_records(small: Recording) -> None:
    runtime = runtime_for(small)
    at = app_with(runtime, "Alerts")
    at.button(key="fp-ep-glitch-raised").click().run()
    at.button(key="ack-ep-overheat-raised").click().run()
    assert not at.exception
    sink = runtime.feedback
    assert isinstance(sink, ListFeedbackSink)
    assert [(r["alert_id"], r["verdict"]) for r in sink.records] == [
        ("ep-glitch-raised", "false_positive"),
        ("ep-overheat-raised", "acknowledged"),
    ]
    assert sink.records[0] == {
        "alert_id": "ep-glitch-raised",
        "episode_id": "ep-glitch",
        "vehicle_id": "ev-2",
        "kind": "sensor_glitch",
        "alert_ts": small.end_ms - 12 * 60_000,
        "verdict": "false_positive",
        "ts": small.end_ms,
        "source": "dashboard",
    }
    # The view shows the verdicts at once, and a false positive is no longer active.
    verdicts = {a["alert_id"]: a["verdict"] for a in runtime.view.snapshot().alerts}
    assert verdicts["ep-glitch-raised"] == "false_positive"
    at.sidebar.radio(key="page").set_value("Fleet overview").run()
    assert metrics(at)["Active info"] == "0"


def test_an_alert_known_only_by_its_clear_has_its_feedback_buttons_disabled() -> None:
    view = FleetView()
    view.ingest("alerts", _alert("ep-old", "ev-1", "overheat", "critical", 1_767_225_600_000,
                                 "cleared"))  # fmt: skip
    runtime = Runtime(view=view, feedback=ListFeedbackSink(), settings=DashboardSettings())
    at = app_with(runtime, "Alerts")
    assert not at.exception
    assert at.button(key="ack-ep-old-raised").disabled
    assert at.button(key="fp-ep-old-raised").disabled
    assert any("no feedback possible" in c.value for c in at.caption)


def test_car_page_renders_charts_sessions_and_alerts(recorded: Recording) -> None:
    runtime = runtime_for(recorded)
    at = app_with(runtime, "Car")
    car = at.selectbox(key="car")
    assert car.value == "veh-00000"
    charts = at.get("vega_lite_chart")
    assert len(charts) == 6  # level, consumption, speed, tyres, temperatures, speed/window
    xs = [orjson.loads(chart.proto.spec)["encoding"]["x"] for chart in charts]
    temporal = [x for x in xs if x["type"] == "temporal"]
    assert temporal
    # In UTC like every other time on the pages, not in the browser's zone.
    assert all(x["scale"] == {"type": "utc"} for x in temporal)
    assert len(at.dataframe) == 1  # recent drives/charges/refuels
    # A car with alerts shows its alert cards.
    with_alerts = next(a["vehicle_id"] for a in runtime.view.snapshot().alerts)
    car.set_value(with_alerts).run()
    assert not at.exception
    assert any(m.value.startswith(f"{with_alerts}: ") for m in at.markdown)


def test_efficiency_page(recorded: Recording) -> None:
    at = app_with(runtime_for(recorded), "Efficiency")
    assert len(at.get("vega_lite_chart")) == 3  # EV bins, ICE bins, idle drain
    assert len(at.dataframe) == 2
    assert not at.exception


def test_filters_and_car_choice_survive_new_cars_arriving(small: Recording) -> None:
    runtime = runtime_for(small)
    at = app_with(runtime, "Alerts")
    at.multiselect(key="alert_cars").set_value(["ev-2"]).run()
    runtime.view.ingest("telemetry", make_ev(small.end_ms, vehicle_id="new-car"))
    at.run()  # what the next refresh does
    assert at.multiselect(key="alert_cars").value == ["ev-2"]
    assert "new-car" in at.multiselect(key="alert_cars").options
    at.sidebar.radio(key="page").set_value("Car").run()
    at.selectbox(key="car").set_value("ice-1").run()
    runtime.view.ingest("telemetry", make_ev(small.end_ms, vehicle_id="aaa-car"))
    at.run()
    assert at.selectbox(key="car").value == "ice-1"
    assert [m.value for m in at.metric][:2] == ["ICE", "refueling"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FLEETSTREAM_DASHBOARD_REFRESH_S", "0.1"),
        # Every operator sees the page: pydantic's message showed the input, a password.
        ("FLEETSTREAM_KAFKA_CONFIG", '{"sasl.password": ["hunter2"]}'),
    ],
)
def test_invalid_settings_are_reported_on_the_page_by_name_only(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    at = AppTest.from_file(str(APP), default_timeout=30)
    at.run()
    assert not at.exception
    assert len(at.error) == 1
    assert name in at.error[0].value
    assert "hunter2" not in at.error[0].value


def test_car_page_of_an_evicted_episode_read_again_renders() -> None:
    now = 1_767_225_600_000
    view = FleetView(max_alerts=3, clock=lambda: now / 1000)
    view.ingest("telemetry", make_ev(now - 1000, vehicle_id="car-1"))
    episodes = [("ep1", "car-1"), *((f"x{i}", f"o-{i}") for i in range(3))]
    for i, (episode, vid) in enumerate(episodes):
        view.ingest("alerts", _alert(episode, vid, "overheat", "critical", now - 50_000 + i))
        view.ingest("alerts", _alert(episode, vid, "overheat", "critical", now - 9000, "cleared"))
    # A replay from further back: evicted, ep1 is read again.
    view.ingest("alerts", _alert("ep1", "car-1", "overheat", "critical", now - 50_000))
    runtime = Runtime(
        settings=DashboardSettings(), view=view, feedback=ListFeedbackSink(),
        clock=lambda: now / 1000,
    )  # fmt: skip
    at = app_with(runtime, "Car")
    at.run()  # the next refresh
    assert not at.exception, [e.message for e in at.exception]
    assert at.button(key="ack-ep1-raised")


def test_evicted_active_alerts_are_reported_on_the_page() -> None:
    view = FleetView(max_alerts=1)
    for i in range(3):
        view.ingest("alerts", _alert(f"a{i}", "car-1", "overheat", "critical", 1_767_225_600_000))
    runtime = Runtime(settings=DashboardSettings(), view=view, feedback=ListFeedbackSink())
    at = app_with(runtime)
    assert any("2 active alert episodes were dropped" in w.value for w in at.warning)


def test_overview_draws_a_car_in_a_gps_gap_and_lists_alerts_it_cannot_place(
    small: Recording,
) -> None:
    runtime = runtime_for(small)
    view = runtime.view
    view.ingest("telemetry", make_ev(small.end_ms, vehicle_id="ev-1", lat=None, lon=None))
    view.ingest("telemetry", make_ev(small.end_ms, vehicle_id="no-gps", lat=None, lon=None))
    view.ingest("alerts", _alert("ep-x", "no-gps", "overheat", "critical", small.end_ms))
    at = app_with(runtime)
    deck = at.get("deck_gl_json_chart")[0].proto.json
    assert "ev-1" in deck
    assert "stale: last known position" in deck
    assert "no-gps" not in deck
    [warning] = at.warning
    assert "`no-gps` (critical)" in warning.value


class _FlakySink(ListFeedbackSink):
    def __init__(self) -> None:
        super().__init__()
        self.failing = True

    def send(self, record: FeedbackRecord) -> None:
        if self.failing:
            msg = "could not write feedback: not confirmed within 10 s"
            raise FeedbackError(msg)
        super().send(record)


def test_a_failed_feedback_write_stays_shown_until_dismissed_or_a_write_succeeds(
    small: Recording,
) -> None:
    # It was shown by the click's rerun only: the next refresh (2 s) removed it.
    sink = _FlakySink()
    runtime = Runtime(
        settings=DashboardSettings(), view=filled_view(small), feedback=sink,
        clock=lambda: small.end_ms / 1000,
    )  # fmt: skip
    at = app_with(runtime, "Alerts")

    def errors() -> list[str]:
        return [e.value for e in at.error]

    at.button(key="fp-ep-glitch-raised").click().run()
    assert len(errors()) == 1
    assert "could not write feedback: not confirmed within 10 s" in errors()[0]
    at.run()  # the next refresh
    at.run()
    assert len(errors()) == 1
    at.button(key="dismiss-ep-glitch-raised").click().run()
    assert errors() == []
    at.run()
    assert errors() == []
    at.button(key="ack-ep-glitch-raised").click().run()
    at.run()
    assert len(errors()) == 1
    sink.failing = False
    at.button(key="ack-ep-glitch-raised").click().run()
    assert errors() == []
    assert [r["verdict"] for r in sink.records] == ["acknowledged"]


class _CountingView(FleetView):
    def __init__(self) -> None:
        super().__init__()
        self.snapshots = 0

    def snapshot(self, since_ms: int = 0) -> FleetSnapshot:
        self.snapshots += 1
        return super().snapshot(since_ms)


def test_the_overview_is_computed_once_per_refresh_interval_for_all_sessions(
    small: Recording,
) -> None:
    # Every session computed the KPIs from the raw windows on every refresh (0.9 s each
    # at 10,000 cars x 60 windows).
    view = _CountingView()
    for kind, record in small.records:
        view.ingest(kind, record)
    now = [small.end_ms / 1000]
    runtime = Runtime(
        settings=DashboardSettings(), view=view, feedback=ListFeedbackSink(),
        clock=lambda: now[0],
    )  # fmt: skip
    sessions = [app_with(runtime) for _ in range(3)]
    for at in sessions:
        at.run()
        assert metrics(at)["Active alerts"] == "2"
    assert view.snapshots == 1
    now[0] += runtime.settings.dashboard_refresh_s
    for at in sessions:
        at.run()
    assert view.snapshots == 2
