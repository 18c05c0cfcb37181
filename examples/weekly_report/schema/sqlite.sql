-- Weekly farm report: tables for SQLite (the offline demo).
--
-- SQLite has no stored procedures: weekly_report_sqlite.yaml builds the report with
-- examples.weekly_report.weekly_report:build_report_sqlite, which runs the same DELETE and
-- INSERT ... SELECT as SP_INS_WEEK_MAIN and writes the same TS_INS_JOB_LOG rows.
-- Dates are stored as ISO text (YYYY-MM-DD), which sorts and compares correctly.

CREATE TABLE IF NOT EXISTS TA_FARM (
    farm_id     VARCHAR(20)   NOT NULL PRIMARY KEY,
    farm_name   VARCHAR(100)  NOT NULL,
    lat         NUMERIC(9, 6) NOT NULL,
    lon         NUMERIC(9, 6) NOT NULL,
    use_yn      CHAR(1)       NOT NULL DEFAULT 'Y'
);

CREATE TABLE IF NOT EXISTS TA_STATS_DATA (
    period_type   VARCHAR(10)    NOT NULL,
    period_start  DATE           NOT NULL,
    stat_key      VARCHAR(50)    NOT NULL,
    stat_value    NUMERIC(18, 4),
    collected_at  TIMESTAMP      NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (period_type, period_start, stat_key)
);

CREATE TABLE IF NOT EXISTS TM_WEATHER (
    farm_id           VARCHAR(20)   NOT NULL,
    week_start        DATE          NOT NULL,
    obs_date          DATE          NOT NULL,
    temp_avg          NUMERIC(5, 2),
    temp_min          NUMERIC(5, 2),
    temp_max          NUMERIC(5, 2),
    humidity_avg      NUMERIC(5, 2),
    precipitation_mm  NUMERIC(7, 2),
    data_source       VARCHAR(20)   NOT NULL,
    collected_at      TIMESTAMP     NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (farm_id, week_start, obs_date)
);

CREATE TABLE IF NOT EXISTS TS_INS_JOB_LOG (
    log_id        INTEGER PRIMARY KEY AUTOINCREMENT,
    job_name      VARCHAR(100)  NOT NULL,
    instance_id   BIGINT,
    period_type   VARCHAR(10),
    period_start  DATE,
    status        VARCHAR(10)   NOT NULL,  -- RUNNING, SUCCESS, FAILED, or SKIPPED (never ran)
    started_at    TIMESTAMP     NOT NULL,
    ended_at      TIMESTAMP,
    rows_written  INTEGER,
    message       VARCHAR(4000)
);

CREATE INDEX IF NOT EXISTS IX_TS_INS_JOB_LOG_JOB ON TS_INS_JOB_LOG (job_name, started_at);

CREATE TABLE IF NOT EXISTS TR_WEEKLY_FARM_REPORT (
    period_type  VARCHAR(10)    NOT NULL,
    week_start   DATE           NOT NULL,
    farm_id      VARCHAR(20)    NOT NULL,
    item_code    VARCHAR(60)    NOT NULL,
    item_value   NUMERIC(18, 4),
    week_end     DATE           NOT NULL,
    created_at   TIMESTAMP      NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (period_type, week_start, farm_id, item_code)
);
