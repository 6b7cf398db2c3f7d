"""Logs, metrics and health endpoints — on the admin listener, never the public one."""
