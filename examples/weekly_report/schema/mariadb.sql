-- Weekly farm report: tables and SP_INS_WEEK_MAIN for MariaDB 10.6+ / MySQL 8.
--
-- Apply with the mariadb/mysql client (it understands DELIMITER) or
-- `python -m examples.weekly_report.setup_db` (which does too).
-- Table names are case-sensitive on Linux: always write them in capitals, as here.
-- Tables are created only if missing; the procedure is never replaced (CREATE fails if
-- SP_INS_WEEK_MAIN exists). The helper (setup_db) replaces it only with --force.

CREATE TABLE IF NOT EXISTS TA_FARM (
    farm_id     VARCHAR(20)   NOT NULL PRIMARY KEY,
    farm_name   VARCHAR(100)  NOT NULL,
    lat         DECIMAL(9, 6) NOT NULL,
    lon         DECIMAL(9, 6) NOT NULL,
    use_yn      CHAR(1)       NOT NULL DEFAULT 'Y'
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- One value per statistic per period; the primary key makes re-collection an upsert.
CREATE TABLE IF NOT EXISTS TA_STATS_DATA (
    period_type   VARCHAR(10)    NOT NULL,
    period_start  DATE           NOT NULL,
    stat_key      VARCHAR(50)    NOT NULL,
    stat_value    DECIMAL(18, 4),
    collected_at  DATETIME       NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (period_type, period_start, stat_key)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- One row per farm, report week and day; the primary key makes re-collection an upsert.
CREATE TABLE IF NOT EXISTS TM_WEATHER (
    farm_id           VARCHAR(20)   NOT NULL,
    week_start        DATE          NOT NULL,
    obs_date          DATE          NOT NULL,
    temp_avg          DECIMAL(5, 2),
    temp_min          DECIMAL(5, 2),
    temp_max          DECIMAL(5, 2),
    humidity_avg      DECIMAL(5, 2),
    precipitation_mm  DECIMAL(7, 2),
    data_source       VARCHAR(20)   NOT NULL,
    collected_at      DATETIME      NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (farm_id, week_start, obs_date)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS TS_INS_JOB_LOG (
    log_id        BIGINT        NOT NULL AUTO_INCREMENT PRIMARY KEY,
    job_name      VARCHAR(100)  NOT NULL,
    instance_id   BIGINT,
    period_type   VARCHAR(10),
    period_start  DATE,
    status        VARCHAR(10)   NOT NULL,  -- RUNNING, SUCCESS, FAILED, or SKIPPED (never ran)
    started_at    DATETIME      NOT NULL,
    ended_at      DATETIME,
    rows_written  INT,
    message       VARCHAR(4000),
    KEY IX_TS_INS_JOB_LOG_JOB (job_name, started_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- The report, one row per farm, week and item (weather aggregates and the week's statistics).
CREATE TABLE IF NOT EXISTS TR_WEEKLY_FARM_REPORT (
    period_type  VARCHAR(10)    NOT NULL,
    week_start   DATE           NOT NULL,
    farm_id      VARCHAR(20)    NOT NULL,
    item_code    VARCHAR(60)    NOT NULL,
    item_value   DECIMAL(18, 4),
    week_end     DATE           NOT NULL,
    created_at   DATETIME       NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (period_type, week_start, farm_id, item_code)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- SP_INS_WEEK_MAIN(p_period, p_base_date): build TR_WEEKLY_FARM_REPORT for one week.
--   p_period     only 'WEEK'
--   p_base_date  any day of the week to report (Monday..Sunday); NULL = the week before
--                today (CURDATE() in the session's time zone)
-- Idempotent: the week's report rows are deleted and rebuilt in one transaction.
-- Logs to TS_INS_JOB_LOG: a RUNNING row, committed first so it survives a failure, then
-- SUCCESS with the row count, or FAILED with the error (and an error is signalled).
DELIMITER //
CREATE PROCEDURE SP_INS_WEEK_MAIN(IN p_period VARCHAR(10), IN p_base_date DATE)
BEGIN
    DECLARE v_base    DATE;
    DECLARE v_start   DATE;
    DECLARE v_end     DATE;
    DECLARE v_log_id  BIGINT DEFAULT NULL;
    DECLARE v_rows    INT DEFAULT 0;
    DECLARE v_error   VARCHAR(4000);
    DECLARE v_signal  VARCHAR(128);

    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        GET DIAGNOSTICS CONDITION 1 v_error = MESSAGE_TEXT;
        ROLLBACK;
        IF v_log_id IS NOT NULL THEN
            UPDATE TS_INS_JOB_LOG
               SET status = 'FAILED', ended_at = NOW(), message = LEFT(v_error, 4000)
             WHERE log_id = v_log_id;
            COMMIT;
        END IF;
        -- SIGNAL, not RESIGNAL: the statements above replaced the diagnostics area.
        SET v_signal = LEFT(CONCAT('SP_INS_WEEK_MAIN failed: ', COALESCE(v_error, '?')), 128);
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = v_signal;
    END;

    IF p_period IS NULL OR p_period <> 'WEEK' THEN
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'unsupported period, only WEEK';
    END IF;
    SET v_base = COALESCE(p_base_date, CURDATE() - INTERVAL 7 DAY);
    SET v_start = v_base - INTERVAL WEEKDAY(v_base) DAY;  -- Monday
    SET v_end = v_start + INTERVAL 6 DAY;

    INSERT INTO TS_INS_JOB_LOG (job_name, period_type, period_start, status, started_at, message)
    VALUES ('SP_INS_WEEK_MAIN', p_period, v_start, 'RUNNING', NOW(), 'started');
    SET v_log_id = LAST_INSERT_ID();
    COMMIT;

    START TRANSACTION;
    DELETE FROM TR_WEEKLY_FARM_REPORT WHERE period_type = p_period AND week_start = v_start;

    INSERT INTO TR_WEEKLY_FARM_REPORT
        (period_type, week_start, week_end, farm_id, item_code, item_value)
    SELECT p_period, v_start, v_end, a.farm_id, a.item_code, a.item_value
      FROM (
            SELECT w.farm_id, 'WEATHER_DAYS' AS item_code, COUNT(*) AS item_value
              FROM TM_WEATHER w WHERE w.week_start = v_start GROUP BY w.farm_id
            UNION ALL
            SELECT w.farm_id, 'TEMP_AVG', ROUND(AVG(w.temp_avg), 2)
              FROM TM_WEATHER w WHERE w.week_start = v_start GROUP BY w.farm_id
            UNION ALL
            SELECT w.farm_id, 'TEMP_MIN', MIN(w.temp_min)
              FROM TM_WEATHER w WHERE w.week_start = v_start GROUP BY w.farm_id
            UNION ALL
            SELECT w.farm_id, 'TEMP_MAX', MAX(w.temp_max)
              FROM TM_WEATHER w WHERE w.week_start = v_start GROUP BY w.farm_id
            UNION ALL
            SELECT w.farm_id, 'HUMIDITY_AVG', ROUND(AVG(w.humidity_avg), 2)
              FROM TM_WEATHER w WHERE w.week_start = v_start GROUP BY w.farm_id
            UNION ALL
            SELECT w.farm_id, 'PRECIP_SUM', ROUND(SUM(w.precipitation_mm), 2)
              FROM TM_WEATHER w WHERE w.week_start = v_start GROUP BY w.farm_id
            UNION ALL
            SELECT f.farm_id, CONCAT('STAT_', s.stat_key), s.stat_value
              FROM TA_FARM f
              JOIN TA_STATS_DATA s ON s.period_type = p_period AND s.period_start = v_start
           ) a
      JOIN TA_FARM f ON f.farm_id = a.farm_id AND f.use_yn = 'Y';
    SET v_rows = ROW_COUNT();

    UPDATE TS_INS_JOB_LOG
       SET status = 'SUCCESS', ended_at = NOW(), rows_written = v_rows,
           message = CONCAT('week ', v_start, ' .. ', v_end)
     WHERE log_id = v_log_id;
    COMMIT;
END //
DELIMITER ;
