-- Export one owner's DBMS_SCHEDULER jobs, programs, chains and schedules as JSON for
-- `stepline import-oracle --from-json FILE` (when Stepline cannot connect to the database).
--
--   sqlplus user@//db-host:1521/ORCLPDB1 @export-scheduler.sql FARM
--   (or SQLcl; SQL Developer: run as a script, F5, with &1 = the owner)
--
-- Writes scheduler-<OWNER>.json in the current directory. Reads only the ALL_SCHEDULER_*
-- views: the connecting user sees the owner's objects if it is the owner or was granted
-- them. Needs Oracle Database 12.2 or later (JSON_OBJECT / JSON_ARRAYAGG). It changes
-- nothing in the database.
SET LONG 2000000000 LONGCHUNKSIZE 32767 PAGESIZE 0 LINESIZE 32767 TRIMSPOOL ON
SET FEEDBACK OFF HEADING OFF VERIFY OFF TERMOUT OFF
DEFINE owner = "&1"
SPOOL scheduler-&owner..json
SELECT JSON_OBJECT(
  'format' VALUE 'stepline-oracle-scheduler/1',
  'owner' VALUE UPPER('&owner'),
  'default_timezone' VALUE (
    SELECT MAX(value) FROM all_scheduler_global_attribute
     WHERE attribute_name = 'DEFAULT_TIMEZONE'),
  'jobs' VALUE (
    SELECT JSON_ARRAYAGG(JSON_OBJECT(
      'owner' VALUE owner, 'job_name' VALUE job_name, 'job_type' VALUE job_type,
      'job_action' VALUE job_action, 'number_of_arguments' VALUE number_of_arguments,
      'program_owner' VALUE program_owner, 'program_name' VALUE program_name,
      'schedule_owner' VALUE schedule_owner, 'schedule_name' VALUE schedule_name,
      'schedule_type' VALUE schedule_type, 'repeat_interval' VALUE repeat_interval,
      'start_date' VALUE TO_CHAR(start_date, 'YYYY-MM-DD"T"HH24:MI:SSTZH:TZM'),
      'start_timezone' VALUE CASE WHEN start_date IS NOT NULL
                                  THEN TO_CHAR(EXTRACT(TIMEZONE_REGION FROM start_date)) END,
      'end_date' VALUE TO_CHAR(end_date, 'YYYY-MM-DD"T"HH24:MI:SSTZH:TZM'),
      'enabled' VALUE enabled, 'auto_drop' VALUE auto_drop, 'max_runs' VALUE max_runs,
      'max_failures' VALUE max_failures, 'job_class' VALUE job_class,
      'comments' VALUE comments, 'max_run_duration' VALUE TO_CHAR(max_run_duration),
      'state' VALUE state
      RETURNING CLOB) ORDER BY job_name RETURNING CLOB)
    FROM all_scheduler_jobs WHERE owner = UPPER('&owner')),
  'job_args' VALUE (
    SELECT JSON_ARRAYAGG(JSON_OBJECT(
      'owner' VALUE owner, 'job_name' VALUE job_name, 'argument_name' VALUE argument_name,
      'argument_position' VALUE argument_position, 'argument_type' VALUE argument_type,
      'value' VALUE value
      RETURNING CLOB) ORDER BY job_name, argument_position RETURNING CLOB)
    FROM all_scheduler_job_args WHERE owner = UPPER('&owner')),
  'programs' VALUE (
    SELECT JSON_ARRAYAGG(JSON_OBJECT(
      'owner' VALUE owner, 'program_name' VALUE program_name,
      'program_type' VALUE program_type, 'program_action' VALUE program_action,
      'number_of_arguments' VALUE number_of_arguments, 'enabled' VALUE enabled,
      'comments' VALUE comments
      RETURNING CLOB) ORDER BY program_name RETURNING CLOB)
    FROM all_scheduler_programs WHERE owner = UPPER('&owner')),
  'program_args' VALUE (
    SELECT JSON_ARRAYAGG(JSON_OBJECT(
      'owner' VALUE owner, 'program_name' VALUE program_name,
      'argument_name' VALUE argument_name, 'argument_position' VALUE argument_position,
      'argument_type' VALUE argument_type, 'default_value' VALUE default_value,
      'out_argument' VALUE out_argument
      RETURNING CLOB) ORDER BY program_name, argument_position RETURNING CLOB)
    FROM all_scheduler_program_args WHERE owner = UPPER('&owner')),
  'chains' VALUE (
    SELECT JSON_ARRAYAGG(JSON_OBJECT(
      'owner' VALUE owner, 'chain_name' VALUE chain_name, 'enabled' VALUE enabled,
      'comments' VALUE comments
      RETURNING CLOB) ORDER BY chain_name RETURNING CLOB)
    FROM all_scheduler_chains WHERE owner = UPPER('&owner')),
  'chain_steps' VALUE (
    SELECT JSON_ARRAYAGG(JSON_OBJECT(
      'owner' VALUE owner, 'chain_name' VALUE chain_name, 'step_name' VALUE step_name,
      'program_owner' VALUE program_owner, 'program_name' VALUE program_name,
      'step_type' VALUE step_type, 'skip' VALUE skip, 'pause' VALUE pause
      RETURNING CLOB) ORDER BY chain_name, step_name RETURNING CLOB)
    FROM all_scheduler_chain_steps WHERE owner = UPPER('&owner')),
  'chain_rules' VALUE (
    SELECT JSON_ARRAYAGG(JSON_OBJECT(
      'owner' VALUE owner, 'chain_name' VALUE chain_name, 'rule_name' VALUE rule_name,
      'condition' VALUE condition, 'action' VALUE action
      RETURNING CLOB) ORDER BY chain_name, rule_name RETURNING CLOB)
    FROM all_scheduler_chain_rules WHERE owner = UPPER('&owner')),
  'schedules' VALUE (
    SELECT JSON_ARRAYAGG(JSON_OBJECT(
      'owner' VALUE owner, 'schedule_name' VALUE schedule_name,
      'schedule_type' VALUE schedule_type, 'repeat_interval' VALUE repeat_interval,
      'start_date' VALUE TO_CHAR(start_date, 'YYYY-MM-DD"T"HH24:MI:SSTZH:TZM'),
      'start_timezone' VALUE CASE WHEN start_date IS NOT NULL
                                  THEN TO_CHAR(EXTRACT(TIMEZONE_REGION FROM start_date)) END,
      'end_date' VALUE TO_CHAR(end_date, 'YYYY-MM-DD"T"HH24:MI:SSTZH:TZM'),
      'comments' VALUE comments
      RETURNING CLOB) ORDER BY schedule_name RETURNING CLOB)
    FROM all_scheduler_schedules WHERE owner = UPPER('&owner'))
  RETURNING CLOB) FROM dual;
SPOOL OFF
SET TERMOUT ON
PROMPT wrote scheduler-&owner..json
