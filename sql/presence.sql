-- Presence kept in the database for every bridge: joins, one person per
-- user, editing, leaves, a dead bridge's expiry, and the seq that tells a
-- bridge which rooms to re-read.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fhir_notify CASCADE;
CREATE EXTENSION fhir_notify;
RESET client_min_messages;

-- Nothing yet: every room reads as empty (seq 0) and a room seen at 0 is not returned.
SELECT * FROM fhir_notify.presence_read('{p1,p2}', '{0,0}');
SELECT patient_id, seq, connection FROM fhir_notify.presence_read('{p1}', '{5}');

-- Two connections of one nurse (two tabs) on bridge a, a physician on bridge b.
SELECT fhir_notify.presence_set('a', '[
  {"connection": "c1", "patient_id": "p1", "user": "nurse.jones", "name": "Nurse Jones", "role": "nurse", "fhir_user": "Practitioner/nj"},
  {"connection": "c2", "patient_id": "p1", "user": "nurse.jones", "name": "Nurse Jones", "role": "nurse"}
]');
SELECT fhir_notify.presence_set('b', '[{"connection": "c3", "patient_id": "p1", "user": "dr.smith", "name": "Dr. Smith", "role": "physician"}]');
SELECT bridge, connection, user_id, display, role, fhir_user, editing
FROM fhir_notify.presence_read('{p1,p2}', '{0,0}') ORDER BY bridge, connection;
-- One person per user.
SELECT user_id, count(*) AS connections FROM fhir_notify.presence_read('{p1}', '{0}') GROUP BY 1 ORDER BY 1;

-- A room whose seq is the one seen is not read again; a change gives it a new seq.
SELECT seq AS seq1 FROM fhir_notify.presence_rooms WHERE patient_id = 'p1' \gset
SELECT count(*) AS rows_when_seen FROM fhir_notify.presence_read('{p1}', ARRAY[:seq1]::bigint[]);
-- The same entry again changes nothing: no new seq, no doorbell.
SELECT fhir_notify.presence_set('b', '[{"connection": "c3", "patient_id": "p1", "user": "dr.smith", "name": "Dr. Smith", "role": "physician"}]') AS changed;
SELECT seq = :seq1 AS seq_unchanged FROM fhir_notify.presence_rooms WHERE patient_id = 'p1';

-- Editing: the last entry of a connection in a batch wins; since is kept.
SELECT since AS since_c3 FROM fhir_notify.presence WHERE connection = 'c3' \gset
SELECT fhir_notify.presence_set('b', '[
  {"connection": "c3", "patient_id": "p1", "user": "dr.smith", "name": "Dr. Smith", "role": "physician", "editing": ["Condition/x"]},
  {"connection": "c3", "patient_id": "p1", "user": "dr.smith", "name": "Dr. Smith", "role": "physician", "editing": ["AllergyIntolerance/a1"]}
]');
SELECT editing, since = :'since_c3' AS since_kept FROM fhir_notify.presence WHERE connection = 'c3';
SELECT seq <> :seq1 AS seq_changed FROM fhir_notify.presence_rooms WHERE patient_id = 'p1';
SELECT connection, editing FROM fhir_notify.presence_read('{p1}', ARRAY[:seq1]::bigint[]) ORDER BY connection;

-- Leaving: one tab closes; the nurse is still there with one connection.
SELECT fhir_notify.presence_set('a', '[{"connection": "c2", "patient_id": "p1", "gone": true}]');
SELECT user_id, count(*) FROM fhir_notify.presence WHERE patient_id = 'p1' GROUP BY 1 ORDER BY 1;
-- A bridge cannot remove another bridge's rows.
SELECT fhir_notify.presence_set('a', '[{"connection": "c3", "patient_id": "p1", "gone": true}]') AS changed;

-- Bad input.
SELECT fhir_notify.presence_set('a', '{"connection": "c1"}');
SELECT fhir_notify.presence_set('a', '[{"patient_id": "p1", "user": "x"}, {"connection": "c9", "patient_id": "p1"}]') AS ignored;

-- Bridge b dies: after the ttl, a heartbeat of bridge a removes its rows.
SELECT fhir_notify.presence_heartbeat('a', '1 hour') AS expired_none;
UPDATE fhir_notify.presence_bridges SET heartbeat = heartbeat - interval '1 minute' WHERE bridge = 'b';
SELECT seq AS seq2 FROM fhir_notify.presence_rooms WHERE patient_id = 'p1' \gset
SELECT fhir_notify.presence_heartbeat('a', '30 seconds') AS expired;
SELECT bridge, connection, user_id FROM fhir_notify.presence_read('{p1}', ARRAY[:seq2]::bigint[]);
SELECT bridge FROM fhir_notify.presence_bridges ORDER BY 1;

-- A clean shutdown takes a bridge's rows; the empty room reads as one row without a connection.
SELECT fhir_notify.presence_leave_bridge('a');
SELECT patient_id, seq, connection FROM fhir_notify.presence_read('{p1}', ARRAY[:seq2]::bigint[]);
SELECT count(*) AS rooms_left FROM fhir_notify.presence_rooms;

-- Rights: nothing for PUBLIC; grant_presence gives exactly the four functions.
CREATE ROLE presence_bridge_role;
SET ROLE presence_bridge_role;
SELECT fhir_notify.presence_read('{p1}', '{0}');
RESET ROLE;
SELECT fhir_notify.grant_presence('presence_bridge_role');
SET ROLE presence_bridge_role;
SELECT fhir_notify.presence_set('r', '[{"connection": "c", "patient_id": "p3", "user": "u"}]');
SELECT user_id FROM fhir_notify.presence_read('{p3}', '{0}');
SELECT * FROM fhir_notify.presence;
SELECT fhir_notify.presence_ring();
RESET ROLE;
SELECT fhir_notify.revoke_presence('presence_bridge_role');
SET ROLE presence_bridge_role;
SELECT fhir_notify.presence_read('{p3}', '{0}');
RESET ROLE;
REVOKE USAGE ON SCHEMA fhir_notify FROM presence_bridge_role;
DROP ROLE presence_bridge_role;
SELECT fhir_notify.presence_leave_bridge('r');
