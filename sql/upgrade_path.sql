-- The upgrade chain: a database made with 0.1.0 and updated ends with
-- exactly the objects, definitions and privileges of a fresh install.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fhir_notify CASCADE;
RESET client_min_messages;
\set VERBOSITY terse

SELECT name, default_version FROM pg_available_extensions WHERE name = 'fhir_notify';
SELECT version FROM pg_available_extension_versions WHERE name = 'fhir_notify' ORDER BY version;
-- Every update path ends at the default version.
SELECT source, target, path FROM pg_extension_update_paths('fhir_notify')
	WHERE path IS NOT NULL ORDER BY source, target;

-- What an installed extension consists of, one row per fact: each member
-- object with its definition and privileges, each column, each index, each
-- trigger and each policy of its tables, and the extension's dump
-- configuration.
CREATE FUNCTION public.extension_facts() RETURNS TABLE (fact text)
LANGUAGE sql AS $$
	SELECT pg_describe_object(d.classid, d.objid, 0) || ' | ' ||
		COALESCE(CASE d.classid
			WHEN 'pg_proc'::regclass THEN
				(SELECT pg_get_functiondef(p.oid) || ' | owner ' || p.proowner::regrole ||
					' | acl ' || COALESCE(p.proacl::text, 'default')
				 FROM pg_proc p WHERE p.oid = d.objid)
			WHEN 'pg_class'::regclass THEN
				(SELECT c.relkind::text || ' | acl ' || COALESCE(c.relacl::text, 'default') ||
					' | options ' || COALESCE(c.reloptions::text, '')
				 FROM pg_class c WHERE c.oid = d.objid)
			WHEN 'pg_namespace'::regclass THEN
				(SELECT 'acl ' || COALESCE(n.nspacl::text, 'default')
				 FROM pg_namespace n WHERE n.oid = d.objid)
			WHEN 'pg_type'::regclass THEN
				(SELECT format_type(t.oid, NULL) FROM pg_type t WHERE t.oid = d.objid)
		END, '')
	FROM pg_depend d
	WHERE d.refclassid = 'pg_extension'::regclass
		AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'fhir_notify')
		AND d.deptype = 'e'
	UNION ALL
	SELECT 'column ' || a.attrelid::regclass || '.' || a.attname || ' ' ||
		format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END ||
		COALESCE(' default ' || pg_get_expr(ad.adbin, ad.adrelid), '') ||
		CASE WHEN a.attidentity <> '' THEN ' identity ' || a.attidentity::text ELSE '' END ||
		' | acl ' || COALESCE(a.attacl::text, 'default')
	FROM pg_attribute a
	JOIN pg_class c ON c.oid = a.attrelid
	LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
	WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = 'fhir_notify') AND a.attnum > 0 AND NOT a.attisdropped
	UNION ALL
	SELECT 'index ' || pg_get_indexdef(i.indexrelid)
	FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
	WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = 'fhir_notify')
	UNION ALL
	SELECT 'constraint ' || conrelid::regclass || ' ' || pg_get_constraintdef(oid)
	FROM pg_constraint WHERE connamespace = (SELECT oid FROM pg_namespace WHERE nspname = 'fhir_notify')
	UNION ALL
	SELECT 'trigger ' || pg_get_triggerdef(t.oid)
	FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
	WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = 'fhir_notify') AND NOT t.tgisinternal
	UNION ALL
	SELECT 'dump config ' || unnest(extconfig)::regclass::text FROM pg_extension WHERE extname = 'fhir_notify'
$$;

CREATE EXTENSION fhir_notify VERSION '0.1.0';
ALTER EXTENSION fhir_notify UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'fhir_notify';
CREATE TEMP TABLE updated_facts AS SELECT * FROM public.extension_facts();
DROP EXTENSION fhir_notify;

CREATE EXTENSION fhir_notify;
SELECT extversion FROM pg_extension WHERE extname = 'fhir_notify';
CREATE TEMP TABLE fresh_facts AS SELECT * FROM public.extension_facts();

-- The facts were really collected (a comparison of two empty sets proves
-- nothing), and they are the same both ways.
SELECT count(*) > 30 AS facts_collected FROM fresh_facts;
(SELECT 'only after update' AS side, fact FROM updated_facts EXCEPT SELECT 'only after update', fact FROM fresh_facts)
UNION ALL
(SELECT 'only in fresh install', fact FROM fresh_facts EXCEPT SELECT 'only in fresh install', fact FROM updated_facts)
ORDER BY 1, 2;
DROP EXTENSION fhir_notify;
DROP FUNCTION public.extension_facts();
