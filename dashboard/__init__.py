"""Live Streamlit fleet dashboard (`fleetstream dashboard`, or `streamlit run dashboard/app.py`).

Modules:
    settings: ``DashboardSettings`` (env prefix ``FLEETSTREAM_``).
    view: ``FleetView``, the thread-safe, size-bounded in-memory state the UI reads.
    rows: the compact per-car history (rows of floats) the view keeps.
    kpis: pure computations over a view snapshot (KPIs, map points, efficiency, filters).
    feed: ``KafkaFeed``, the one background Kafka consumer per process.
    feedback: alert feedback records and the Kafka producer that writes them.
    runtime: wires settings, view, feed and feedback sink together; the fleet-wide
        numbers shared by every browser session, once per refresh interval.
    ui: the Streamlit pages; ``app.py`` only calls ``ui.main()``.
"""
