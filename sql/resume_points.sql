-- Resume points of subscriptions made without a cursor (bridge/resume_points.c).
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fhir_notify CASCADE;
DROP ROLE IF EXISTS rp_reader;
DROP ROLE IF EXISTS rp_stranger;
RESET client_min_messages;
CREATE EXTENSION fhir_notify;
CREATE ROLE rp_reader;
CREATE ROLE rp_stranger;
SELECT fhir_notify.grant_reader('rp_reader');
SET SESSION AUTHORIZATION rp_reader;
-- A first lookup finds nothing and claims the cursor given for every key:
-- it is saved before the answer, so a bridge that crashes after the
-- subscribe leaves its start behind.
SELECT * FROM fhir_notify.claim_resume_points('{u1,u1}', '{p1,p2}', '{s1,s1}', '{10,10}',
	'{3,3}', '{7,7}', '1 hour');
RESET SESSION AUTHORIZATION;
SELECT user_id, patient_id, subscription_id, tick, "position", epoch
FROM fhir_notify.resume_points ORDER BY 1, 2, 3;
SET SESSION AUTHORIZATION rp_reader;
-- The next one finds the points; its own claim changes nothing.
SELECT * FROM fhir_notify.claim_resume_points('{u1,u1}', '{p1,p2}', '{s1,s1}', '{20,20}',
	'{0,0}', '{7,7}', '1 hour') ORDER BY ord;
-- A save moves one patient's point; another user, patient or id is another key.
SELECT fhir_notify.save_resume_points('{u1}', '{p1}', '{s1}', '{15}', '{1}', '{7}', '1 hour');
SELECT * FROM fhir_notify.claim_resume_points('{u1,u2,u1}', '{p1,p1,p1}', '{s1,s1,s2}',
	'{30,30,30}', '{0,0,0}', '{7,7,7}', '1 hour') ORDER BY ord;
-- A point older than max_age is not resumed from: the claim replaces it.
RESET SESSION AUTHORIZATION;
UPDATE fhir_notify.resume_points SET saved_at = now() - interval '2 hours'
WHERE user_id = 'u1' AND patient_id = 'p2';
SET SESSION AUTHORIZATION rp_reader;
SELECT * FROM fhir_notify.claim_resume_points('{u1}', '{p2}', '{s1}', '{40}', '{5}', '{7}',
	'1 hour');
RESET SESSION AUTHORIZATION;
SELECT tick, "position" FROM fhir_notify.resume_points
WHERE user_id = 'u1' AND patient_id = 'p2' AND subscription_id = 's1';
SET SESSION AUTHORIZATION rp_reader;
-- A key given twice in one batch claims its first cursor.
SELECT * FROM fhir_notify.claim_resume_points('{u3,u3}', '{p1,p1}', '{s1,s1}', '{50,60}',
	'{0,0}', '{7,7}', '1 hour');
RESET SESSION AUTHORIZATION;
SELECT tick FROM fhir_notify.resume_points WHERE user_id = 'u3';
-- Only the change log's readers keep points (the functions are PUBLIC; they check).
GRANT USAGE ON SCHEMA fhir_notify TO rp_stranger;
SET SESSION AUTHORIZATION rp_stranger;
\set VERBOSITY terse
SELECT * FROM fhir_notify.claim_resume_points('{u1}', '{p1}', '{s1}', '{1}', '{0}', '{7}',
	'1 hour');
SELECT fhir_notify.save_resume_points('{u1}', '{p1}', '{s1}', '{1}', '{0}', '{7}', '1 hour');
\set VERBOSITY default
RESET SESSION AUTHORIZATION;
-- the stranger moved nothing
SELECT tick, "position" FROM fhir_notify.resume_points
WHERE user_id = 'u1' AND patient_id = 'p1' AND subscription_id = 's1';
SET client_min_messages = warning;
DROP EXTENSION fhir_notify CASCADE;
DROP OWNED BY rp_reader;
DROP ROLE rp_reader;
DROP OWNED BY rp_stranger;
DROP ROLE rp_stranger;
RESET client_min_messages;
