-- Registered readers, their retention limit, and the log's epoch.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fhir_notify CASCADE;
RESET client_min_messages;
CREATE EXTENSION fhir_notify;
CREATE TABLE rd (id serial, resource jsonb);
SELECT fhir_notify.watch('rd', 'jsonb');
CREATE FUNCTION rd_write(id text) RETURNS void LANGUAGE sql AS $$
	INSERT INTO rd (resource) VALUES (jsonb_build_object('resourceType', 'Condition',
		'id', id, 'subject', jsonb_build_object('reference', 'Patient/p1')))
$$;
-- A reader's position, as a bridge keeps it; read() prints what it got.
CREATE TABLE rd_at (reader text PRIMARY KEY, epoch bigint, tick bigint);
CREATE FUNCTION rd_read(who text) RETURNS TABLE (status text, tick_id bigint, resource_id text)
LANGUAGE plpgsql AS $$
DECLARE
	at rd_at;
	row record;
BEGIN
	INSERT INTO rd_at VALUES (who, 0, 0) ON CONFLICT DO NOTHING;
	SELECT * INTO at FROM rd_at WHERE reader = who;
	-- a second has passed: read_next() confirms at most once a second
	UPDATE fhir_notify.reader_positions SET confirmed_at = confirmed_at - interval '1 second'
	WHERE reader = who;
	FOR row IN SELECT * FROM fhir_notify.read_next(who, at.epoch, at.tick) LOOP
		IF row.status IS NOT NULL THEN
			UPDATE rd_at SET epoch = row.epoch, tick = row.tick_id WHERE reader = who;
		END IF;
		status := row.status;
		tick_id := row.tick_id;
		resource_id := (row.change).resource_id;
		RETURN NEXT;
	END LOOP;
END $$;

-- Registering, listing, dropping.
SELECT r.tick_id, r.epoch = fhir_notify.tick_epoch(1) AS epoch_of_tick
FROM fhir_notify.register_reader('cron') r;
SELECT reader, tick, state, ticks_behind, lag FROM fhir_notify.readers;
SELECT rd_write('c1');
SELECT fhir_notify.tick();
-- registering again changes nothing
SELECT tick_id FROM fhir_notify.register_reader('cron');
SELECT reader, tick, state, ticks_behind, lag > '0' AS lagging FROM fhir_notify.readers;
-- a registered reader holds the prune back
SELECT fhir_notify.prune('0 seconds') AS deleted;
SELECT fhir_notify.drop_reader('cron'), fhir_notify.drop_reader('cron');
SELECT fhir_notify.prune('0 seconds') AS deleted;
SELECT count(*) AS readers FROM fhir_notify.readers;
SELECT fhir_notify.register_reader(NULL);
SELECT fhir_notify.register_reader('');

-- read_next(): a reader starting afresh, then reading on.
SELECT * FROM rd_read('bridge-1');
SELECT rd_write('c2'), rd_write('c3');
SELECT fhir_notify.tick();
SELECT * FROM rd_read('bridge-1');
SELECT * FROM rd_read('bridge-1');
SELECT reader, tick, state, ticks_behind FROM fhir_notify.readers;
-- at most max_ticks ticks at a time
SELECT rd_write('c4');
SELECT fhir_notify.tick();
SELECT rd_write('c5');
SELECT fhir_notify.tick();
SELECT tick_id, status, (change).resource_id FROM fhir_notify.read_next('bridge-1',
	(SELECT epoch FROM rd_at), (SELECT tick FROM rd_at), 1);
SELECT * FROM rd_read('bridge-1');

-- A reader whose position was pruned (an unregistered one here) is told so
-- and carries on from the oldest tick.
SELECT rd_write('c6');
SELECT fhir_notify.tick();
SELECT rd_write('c7');
SELECT fhir_notify.tick();
SELECT fhir_notify.drop_reader('bridge-1');
SELECT fhir_notify.prune('0 seconds') AS deleted;
SELECT fhir_notify.oldest_tick(), fhir_notify.newest_tick();
SELECT * FROM rd_read('bridge-1');

-- Retention: a reader lagging more than fhir_notify.reader_max_lag is
-- dropped by a prune that would remove what it has not read, and told so
-- when it reads again.
SHOW fhir_notify.reader_max_lag;
SELECT * FROM rd_read('laggard');
SELECT rd_write('c8');
SELECT fhir_notify.tick();
SELECT rd_write('c9');
SELECT fhir_notify.tick();
SELECT * FROM rd_read('bridge-1');
-- within the limit: kept
SELECT fhir_notify.prune('0 seconds') AS deleted;
SELECT reader, state FROM fhir_notify.readers ORDER BY reader;
-- past it (its unread ticks are two hours old): dropped
UPDATE fhir_notify.ticks SET created_at = created_at - interval '2 hours';
-- ticks unread for two hours, but the reader confirmed recently: not lagging
SET fhir_notify.reader_max_lag = '1h';
SELECT fhir_notify.prune('0 seconds') AS deleted;
SELECT reader, state FROM fhir_notify.readers ORDER BY reader;
UPDATE fhir_notify.reader_positions SET confirmed_at = confirmed_at - interval '2 hours';
SELECT fhir_notify.reader_max_lag();
SELECT fhir_notify.prune('0 seconds') AS deleted;
SELECT reader, state, dropped_at IS NOT NULL AS dropped FROM fhir_notify.readers ORDER BY reader;
SELECT * FROM rd_read('laggard');
SELECT reader, state FROM fhir_notify.readers ORDER BY reader;
-- 0: never dropped
SET fhir_notify.reader_max_lag = 0;
SELECT fhir_notify.reader_max_lag() IS NULL AS never;
RESET fhir_notify.reader_max_lag;
-- a dropped reader registering again starts at the newest tick
SELECT rd_write('c10');
SELECT fhir_notify.tick();
UPDATE fhir_notify.ticks SET created_at = created_at - interval '2 days';
UPDATE fhir_notify.reader_positions SET confirmed_at = confirmed_at - interval '2 days';
SELECT fhir_notify.prune('0 seconds') AS deleted;
SELECT reader, state FROM fhir_notify.readers ORDER BY reader;
UPDATE rd_at SET (epoch, tick) = (SELECT r.epoch, r.tick_id FROM fhir_notify.register_reader('bridge-1') r)
WHERE reader = 'bridge-1' RETURNING tick = fhir_notify.newest_tick() AS at_newest;
SELECT reader, state FROM fhir_notify.readers ORDER BY reader;

-- The epoch: every tick carries it; a server start draws a new one at the
-- next tick (here: the epoch's server start is made to look older).
SELECT count(DISTINCT epoch) AS epochs FROM fhir_notify.ticks;
SELECT epoch AS old_epoch FROM fhir_notify.log_epoch \gset
UPDATE fhir_notify.log_epoch SET server_started = '2000-01-01';
SELECT rd_write('c11');
SELECT fhir_notify.tick() AS new_tick \gset
SELECT fhir_notify.tick_epoch(:new_tick) <> :old_epoch AS new_epoch,
	fhir_notify.tick_epoch(:new_tick) = (SELECT epoch FROM fhir_notify.log_epoch) AS recorded,
	fhir_notify.tick_epoch(:new_tick - 1) = :old_epoch AS older_ticks_keep_theirs,
	(SELECT server_started = pg_postmaster_start_time() FROM fhir_notify.log_epoch) AS started;
-- positions in the old epoch are still good: nothing was lost
SELECT * FROM rd_read('bridge-1');
-- A tick lost in a crash (committed asynchronously, never flushed) is taken
-- again with the same id after the restart, under the new epoch: a reader
-- that had read the lost tick is told its position names no tick of this
-- log, and carries on from the newest tick.
SELECT rd_write('c12');
SELECT fhir_notify.tick() AS lost_tick \gset
SELECT * FROM rd_read('bridge-1');
DELETE FROM fhir_notify.ticks WHERE tick_id = :lost_tick;
UPDATE fhir_notify.log_epoch SET server_started = '2000-01-01';
SELECT rd_write('c13');
SELECT fhir_notify.tick() = :lost_tick AS same_id_again;
SELECT * FROM rd_read('bridge-1');
-- a position from another database (an epoch this log never had)
SELECT status FROM fhir_notify.read_next('bridge-1', 12345, fhir_notify.newest_tick()) WHERE status IS NOT NULL;
-- and one ahead of the log
SELECT status FROM fhir_notify.read_next('bridge-1', fhir_notify.tick_epoch(fhir_notify.newest_tick()),
	fhir_notify.newest_tick() + 5) WHERE status IS NOT NULL;
SELECT fhir_notify.tick_epoch(0) IS NULL AS no_such_tick;

-- tick() alone in its transaction commits asynchronously; inside someone
-- else's writing transaction it leaves the commit alone.
SELECT rd_write('c14');
BEGIN;
SELECT fhir_notify.tick() > 0 AS ticked;
SHOW synchronous_commit;
COMMIT;
BEGIN;
CREATE TEMP TABLE rd_mine (x int);
INSERT INTO rd_mine VALUES (1);
SELECT fhir_notify.tick() > 0 AS ticked;
SHOW synchronous_commit;
COMMIT;

-- The read functions keep a generic plan and never JIT.
SELECT p.proname, p.prolang::regproc IS NULL AS c, l.lanname, p.proconfig
FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
WHERE p.pronamespace = 'fhir_notify'::regnamespace
  AND p.proname IN ('tick', 'read', 'batch', 'read_next')
ORDER BY p.proname;

DROP TABLE rd, rd_at;
DROP FUNCTION rd_write(text), rd_read(text);
DROP EXTENSION fhir_notify;
