-- The naive recipe: a PL/pgSQL trigger that calls pg_notify for every row with
-- a small JSON payload.
CREATE FUNCTION fhir.notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_notify('fhir_changes', json_build_object(
		'op', TG_OP, 'type', NEW.resource_type, 'id', NEW.fhir_id,
		'version', NEW.version_id)::text);
	RETURN NEW;
END
$$;
CREATE TRIGGER notify_change AFTER INSERT OR UPDATE ON fhir.resources
	FOR EACH ROW EXECUTE FUNCTION fhir.notify_change();
