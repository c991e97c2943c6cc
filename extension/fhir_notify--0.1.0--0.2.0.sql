-- fhir_notify 0.1.0 -> 0.2.0. Every change to fhir_notify--0.2.0.sql since
-- 0.1.0 is made here too, one section per feature, so that an updated
-- database ends with exactly what a fresh 0.2.0 install has
-- (sql/upgrade_path.sql compares the two).
\echo Use "ALTER EXTENSION fhir_notify UPDATE TO '0.2.0'" to load this file. \quit

-- watch() for table owners: roles granted EXECUTE on watch() and unwatch()
-- (and USAGE on the schema) may watch the tables they own.
CREATE FUNCTION fhir_notify.check_table_owner(tbl regclass) RETURNS void
LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'fhir_notify_check_table_owner';
REVOKE ALL ON FUNCTION fhir_notify.check_table_owner(regclass) FROM PUBLIC;

CREATE OR REPLACE FUNCTION fhir_notify.watch(tbl regclass, layout text DEFAULT 'auto',
                                  options jsonb DEFAULT '{}')
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	arguments text[];
	argument_list text;
BEGIN
	IF tbl IS NULL THEN
		RAISE EXCEPTION 'cannot watch a NULL table';
	END IF;
	PERFORM fhir_notify.check_table_owner(tbl);
	arguments := fhir_notify.resolve_layout(tbl, coalesce(layout, 'auto'),
	                                        coalesce(options, '{}'));
	SELECT string_agg(quote_literal(a), ', ' ORDER BY n) INTO argument_list
	FROM unnest(arguments) WITH ORDINALITY AS u(a, n);

	PERFORM fhir_notify.drop_triggers(tbl);
	EXECUTE format('CREATE TRIGGER fhir_notify_capture AFTER INSERT OR UPDATE OR DELETE ON %s '
	               'FOR EACH ROW EXECUTE FUNCTION fhir_notify.capture(%s)', tbl, argument_list);
	EXECUTE format('CREATE TRIGGER fhir_notify_truncate AFTER TRUNCATE ON %s '
	               'FOR EACH STATEMENT EXECUTE FUNCTION fhir_notify.capture_truncate()', tbl);

	DELETE FROM fhir_notify.watched_tables w
	WHERE NOT EXISTS (SELECT 1 FROM pg_trigger t
	                  WHERE t.tgrelid = w.relation AND t.tgname = 'fhir_notify_capture');
	INSERT INTO fhir_notify.watched_tables AS w (relation, layout, options, trigger_arguments)
	VALUES (tbl, substr(arguments[1], length('layout=') + 1), coalesce(options, '{}'), arguments)
	ON CONFLICT (relation) DO UPDATE
		SET layout = excluded.layout, options = excluded.options,
		    trigger_arguments = excluded.trigger_arguments,
		    since = CASE WHEN w.trigger_arguments = excluded.trigger_arguments
		                 THEN w.since ELSE excluded.since END;
END
$$;

CREATE OR REPLACE FUNCTION fhir_notify.unwatch(tbl regclass) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM fhir_notify.check_table_owner(tbl);
	PERFORM fhir_notify.drop_triggers(tbl);
	DELETE FROM fhir_notify.watched_tables w WHERE w.relation = tbl;
END
$$;

