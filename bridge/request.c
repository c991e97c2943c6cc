/*
 * request.c
 *	  Parsing and checking a client's message; no side effects, so that
 *	  every byte string a client can send is fuzzed here (fuzz/).
 */
#include "request.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

static bool
valid_patient_id(const char *id)
{
	size_t len = strlen(id);

	if (len < 1 || len > 64)
		return false;
	for (const char *p = id; *p; p++)
	{
		if (!isalnum((unsigned char) *p) && *p != '.' && *p != '-')
			return false;
	}
	return true;
}

static bool
valid_type_name(const char *name)
{
	size_t len = strlen(name);

	if (len < 1 || len > 64)
		return false;
	for (const char *p = name; *p; p++)
	{
		if (!isalpha((unsigned char) *p))
			return false;
	}
	return true;
}

/* See request.h. */
void
request_free_strings(char **list, int n)
{
	for (int i = 0; i < n; i++)
		free(list[i]);
	free(list);
}

/*
 * Copies a JSON array of strings, skipping duplicates; NULL message on
 * success. On failure *out holds what was copied so far (the caller frees).
 */
static const char *
string_array(json_t *array, char ***out, int *count, int max, bool (*valid)(const char *),
             const char *what)
{
	size_t i;
	json_t *item;

	*out = NULL;
	*count = 0;
	if (!array || json_is_null(array))
		return NULL;
	if (!json_is_array(array))
		return what;
	if ((int) json_array_size(array) > max)
		return what;
	*out = xcalloc(json_array_size(array) + 1, sizeof(char *));
	json_array_foreach(array, i, item)
	{
		const char *s = json_string_value(item);
		bool duplicate = false;

		if (!s || !valid(s))
			return what;
		for (int j = 0; j < *count; j++)
			duplicate = duplicate || strcmp((*out)[j], s) == 0;
		if (!duplicate)
			(*out)[(*count)++] = xstrdup(s);
	}
	return NULL;
}

/* The data of a subscribe message; sets req->problem when it is not acceptable. */
static void
parse_subscribe(json_t *data, request *req)
{
	const char *sid;
	const char *problem;
	json_t *room, *since_json, *presence;

	if (!json_is_object(data))
	{
		req->problem = "subscribe needs a data object";
		return;
	}
	sid = json_string_value(json_object_get(data, "subscription_id"));
	if (!sid || !*sid || strlen(sid) > MAX_ID_LENGTH)
	{
		req->problem = "subscription_id must be a string of 1 to 128 characters";
		return;
	}
	req->subscription_id = sid;
	presence = json_object_get(data, "presence");
	if (presence && !json_is_boolean(presence) && !json_is_null(presence))
	{
		req->problem = "presence must be true or false";
		req->problem_subscription_id = sid;
		return;
	}
	req->presence = json_is_true(presence);
	room = json_object_get(data, "room");
	if (room && !json_is_null(room) && req->presence)
	{
		req->problem = "presence is for patient subscriptions only";
		req->problem_subscription_id = sid;
		return;
	}
	if (room && !json_is_null(room))
	{
		req->room = json_string_value(room);
		if (!req->room || !*req->room || strlen(req->room) > MAX_ID_LENGTH)
		{
			req->room = NULL;
			req->problem = "room must be a string of 1 to 128 characters";
			req->problem_subscription_id = sid;
		}
		return;
	}
	problem =
	    string_array(json_object_get(data, "patient_ids"), &req->patient_ids, &req->npatients,
	                 MAX_PATIENTS_PER_SUBSCRIPTION, valid_patient_id,
	                 "patient_ids must be an array of bare patient ids (1-64 of A-Z a-z 0-9 . -)");
	if (!problem && req->npatients == 0)
		problem = "patient_ids must name at least one patient";
	if (!problem)
		problem = string_array(json_object_get(data, "resource_types"), &req->types, &req->ntypes,
		                       MAX_TYPES_PER_SUBSCRIPTION, valid_type_name,
		                       "resource_types must be an array of resource type names");
	since_json = json_object_get(data, "since");
	if (!problem && since_json && !json_is_null(since_json))
	{
		const char *since_text = json_string_value(since_json);

		if (!since_text || !cursor_parse(since_text, &req->since))
			problem = "since must be a cursor from an earlier message";
		else
			req->has_since = true;
	}
	if (problem)
	{
		req->problem = problem;
		req->problem_subscription_id = sid;
	}
}

/* See request.h. */
void
request_parse(const char *text, size_t len, request *req)
{
	json_error_t error;
	const char *type;

	memset(req, 0, sizeof(*req));
	req->root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &error);
	if (!req->root || !json_is_object(req->root))
	{
		req->kind = REQUEST_INVALID;
		req->problem = "messages must be JSON objects";
		return;
	}
	type = json_string_value(json_object_get(req->root, "type"));
	if (!type)
	{
		req->kind = REQUEST_INVALID;
		req->problem = "messages need a string type";
	}
	else if (strcmp(type, "authenticate") == 0)
	{
		req->kind = REQUEST_AUTHENTICATE;
		req->token = json_string_value(json_object_get(req->root, "token"));
		if (!req->token)
			req->token =
			    json_string_value(json_object_get(json_object_get(req->root, "data"), "token"));
		if (!req->token)
			req->problem = "authenticate needs a token";
	}
	else if (strcmp(type, "ping") == 0)
		req->kind = REQUEST_PING;
	else if (strcmp(type, "pong") == 0)
		req->kind = REQUEST_PONG;
	else if (strcmp(type, "subscribe") == 0)
	{
		req->kind = REQUEST_SUBSCRIBE;
		parse_subscribe(json_object_get(req->root, "data"), req);
	}
	else if (strcmp(type, "unsubscribe") == 0)
	{
		req->kind = REQUEST_UNSUBSCRIBE;
		req->subscription_id = json_string_value(
		    json_object_get(json_object_get(req->root, "data"), "subscription_id"));
		if (!req->subscription_id)
			req->problem = "unsubscribe needs data.subscription_id";
	}
	else if (strcmp(type, "editing") == 0)
		req->kind = REQUEST_EDITING; /* its data is presence.c's to check */
	else if (strcmp(type, "stop_editing") == 0)
		req->kind = REQUEST_STOP_EDITING;
	else if (strchr(type, '.'))
		req->kind = REQUEST_CLIENT_EVENT;
	else
		req->kind = REQUEST_UNKNOWN;
}

/* See request.h. */
void
request_free(request *req)
{
	request_free_strings(req->patient_ids, req->npatients);
	request_free_strings(req->types, req->ntypes);
	req->patient_ids = req->types = NULL;
	req->npatients = req->ntypes = 0;
	json_decref(req->root);
	req->root = NULL;
}
