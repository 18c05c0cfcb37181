"""Moving Oracle DBMS_SCHEDULER jobs to Stepline: ``stepline import-oracle``.

``calendar`` converts calendaring expressions to cron; ``catalog`` reads the scheduler's
jobs, programs and chains (live or from the exported JSON); ``convert`` writes one batch
per job and the report.
"""
