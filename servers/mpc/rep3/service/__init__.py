"""The replicated engine inside a server: its links and its per-session state (``party.py``)."""
