"""Live Streamlit fleet dashboard (not built yet)."""
