"""Logs, health and (later) metrics, Sentry and sd_notify."""
