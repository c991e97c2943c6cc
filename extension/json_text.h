/*
 * json_text.h
 *	  Resources stored as JSON text or gzip JSON, read for the capture
 *	  trigger without raising errors on bad content.
 */
#ifndef FHIR_NOTIFY_JSON_TEXT_H
#define FHIR_NOTIFY_JSON_TEXT_H

#include "utils/jsonb.h"

/*
 * Members a layout keeps in columns, put into the root object while it is
 * parsed (NULL: left as the text has it): "id", and "versionId" and
 * "lastUpdated" of "meta" (merged into a meta object the text has).
 */
typedef struct JsonInject
{
	const char *id;
	const char *version_id;
	const char *last_updated;
} JsonInject;

extern bool fhir_notify_json_parse(const char *text, int len, const JsonInject *inject,
                                   Jsonb **result, const char **problem);
extern bool fhir_notify_gunzip(const char *data, size_t len, char **out, size_t *out_len,
                               const char **problem);

#endif /* FHIR_NOTIFY_JSON_TEXT_H */
