"""Streamlit entry point: ``streamlit run dashboard/app.py`` (or ``fleetstream dashboard``).

Streamlit executes this file as a script on every rerun; the logic lives in
:mod:`dashboard.ui`.
"""

from dashboard.ui import main

main()
