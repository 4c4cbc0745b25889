"""``python -m dashboard``: run the Streamlit server on dashboard/app.py."""

from dashboard.server import main

raise SystemExit(main())
