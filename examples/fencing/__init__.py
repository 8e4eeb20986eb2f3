"""Fencing: a report published under a lock, with the lock's fence (see reports.py)."""
