"""Cron schedules: when batches fire."""
