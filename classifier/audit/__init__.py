"""Audit: the registry of sanctioned tunnels, trial runs, their reports, and the packets behind a label."""
