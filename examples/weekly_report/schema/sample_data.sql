-- Sample farms for the weekly report (portable: PostgreSQL, MariaDB, Oracle, SQLite).
-- The same rows are loaded by `python -m examples.weekly_report.setup_db --sample`.
-- KMA grid cells (nx, ny) are in comments, from examples/weekly_report/kma_grid.py.
DELETE FROM TA_FARM WHERE farm_id IN ('F001', 'F002', 'F003', 'F004', 'F005');
INSERT INTO TA_FARM (farm_id, farm_name, lat, lon, use_yn) VALUES ('F001', 'Seoul demo farm', 37.5665, 126.978, 'Y');      -- 60, 127
INSERT INTO TA_FARM (farm_id, farm_name, lat, lon, use_yn) VALUES ('F002', 'Icheon pig farm', 37.272, 127.435, 'Y');       -- 68, 120
INSERT INTO TA_FARM (farm_id, farm_name, lat, lon, use_yn) VALUES ('F003', 'Hongseong pig farm', 36.6012, 126.6608, 'Y');  -- 55, 106
INSERT INTO TA_FARM (farm_id, farm_name, lat, lon, use_yn) VALUES ('F004', 'Gimhae pig farm', 35.2285, 128.8894, 'Y');     -- 94, 77
INSERT INTO TA_FARM (farm_id, farm_name, lat, lon, use_yn) VALUES ('F005', 'Jeju pig farm', 33.4996, 126.5312, 'Y');       -- 53, 38
