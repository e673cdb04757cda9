"""Task implementations: what each ``provision-<task>`` does to a context."""
