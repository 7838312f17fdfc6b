"""The nightly expired-key cleanup: policy, plan, working-store and PostgreSQL deletes, scheduler,
size history and the summary (Sentry, Telegram)."""
