-- fhir_notify 0.1.0 -> 0.2.0. Every change to fhir_notify--0.2.0.sql since
-- 0.1.0 is made here too, one section per feature, so that an updated
-- database ends with exactly what a fresh 0.2.0 install has
-- (sql/upgrade_path.sql compares the two).
\echo Use "ALTER EXTENSION fhir_notify UPDATE TO '0.2.0'" to load this file. \quit

-- ---------------------------------------------------------------------------
-- resume points (issue 11): for clients that send no cursor (bridge/resume_points.c)
-- ---------------------------------------------------------------------------

/*
 * How far the bridge has served a user's subscription to a patient: every
 * change of the patient up to (tick, position) that the subscription takes
 * has been written to the user's connection. A client that subscribes again
 * with the same id and no cursor (WintEHR's after every reconnect) is
 * replayed what came after, on whichever bridge it reaches. Saved on
 * disconnect, periodically and at shutdown; a point is never ahead of what
 * was delivered (a crash costs duplicates, not gaps).
 */
CREATE TABLE fhir_notify.resume_points (
	user_id text NOT NULL,
	patient_id text NOT NULL,
	subscription_id text NOT NULL,
	tick bigint NOT NULL,
	"position" bigint NOT NULL,
	saved_at timestamptz NOT NULL,
	PRIMARY KEY (user_id, patient_id, subscription_id)
);
CREATE INDEX resume_points_saved_at ON fhir_notify.resume_points (saved_at);

/* The readers of the change log (grant_reader) may keep resume points. */
CREATE FUNCTION fhir_notify.check_resume_caller() RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NOT pg_catalog.has_function_privilege(session_user, 'fhir_notify.tick()', 'EXECUTE') THEN
		RAISE EXCEPTION 'permission denied for resume points: % is not a reader of the change log',
			session_user
			USING ERRCODE = '42501',
			      HINT = 'SELECT fhir_notify.grant_reader(''' || session_user || ''')';
	END IF;
END
$$;

/*
 * Saves points (arrays of equal length; a key given twice keeps its last
 * point) and forgets those not saved for max_age.
 */
CREATE FUNCTION fhir_notify.save_resume_points(user_ids text[], patient_ids text[],
	subscription_ids text[], ticks bigint[], positions bigint[], max_age interval)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM fhir_notify.check_resume_caller();
	DELETE FROM fhir_notify.resume_points WHERE saved_at < now() - max_age;
	INSERT INTO fhir_notify.resume_points AS r
		(user_id, patient_id, subscription_id, tick, "position", saved_at)
	SELECT DISTINCT ON (k.u, k.p, k.s) k.u, k.p, k.s, k.t, k.pos, now()
	FROM unnest(user_ids, patient_ids, subscription_ids, ticks, positions)
		WITH ORDINALITY AS k(u, p, s, t, pos, ord)
	ORDER BY k.u, k.p, k.s, k.ord DESC
	ON CONFLICT (user_id, patient_id, subscription_id) DO UPDATE
		SET tick = excluded.tick, "position" = excluded."position", saved_at = excluded.saved_at;
END
$$;

/*
 * The points saved within max_age for the keys given (arrays of equal
 * length): ord is the key's place in the arrays, from 1.
 */
CREATE FUNCTION fhir_notify.find_resume_points(user_ids text[], patient_ids text[],
	subscription_ids text[], max_age interval)
RETURNS TABLE (ord integer, tick bigint, "position" bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM fhir_notify.check_resume_caller();
	RETURN QUERY
	SELECT k.ord::integer, r.tick, r."position"
	FROM unnest(user_ids, patient_ids, subscription_ids) WITH ORDINALITY AS k(u, p, s, ord)
	JOIN fhir_notify.resume_points r
		ON r.user_id = k.u AND r.patient_id = k.p AND r.subscription_id = k.s
	WHERE r.saved_at >= now() - max_age;
END
$$;

REVOKE ALL ON fhir_notify.resume_points FROM PUBLIC;
REVOKE ALL ON FUNCTION fhir_notify.check_resume_caller() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION fhir_notify.save_resume_points(text[], text[], text[], bigint[], bigint[],
	interval) TO PUBLIC;
GRANT EXECUTE ON FUNCTION fhir_notify.find_resume_points(text[], text[], text[], interval) TO PUBLIC;
