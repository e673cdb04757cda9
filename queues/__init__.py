"""The task queue: a spool directory under the home, and the runners that drain it."""
