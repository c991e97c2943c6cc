-- fhir_notify 0.1.0 -> 0.2.0. Every change to fhir_notify--0.2.0.sql since
-- 0.1.0 is made here too, one section per feature, so that an updated
-- database ends with exactly what a fresh 0.2.0 install has
-- (sql/upgrade_path.sql compares the two).
\echo Use "ALTER EXTENSION fhir_notify UPDATE TO '0.2.0'" to load this file. \quit
