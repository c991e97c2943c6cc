/*
 * request.h
 *	  A client's WebSocket message, parsed and checked without acting on it
 *	  (docs/protocol.md, "Client -> server"). ws.c acts on the result; the
 *	  fuzz target fuzz/fuzz_message.c feeds it arbitrary bytes.
 */
#ifndef BRIDGE_REQUEST_H
#define BRIDGE_REQUEST_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "util.h"

#define MAX_PATIENTS_PER_SUBSCRIPTION 1000
#define MAX_TYPES_PER_SUBSCRIPTION    200
#define MAX_ID_LENGTH                 128

typedef enum request_kind
{
	REQUEST_INVALID, /* not a JSON object with a string "type": problem says which */
	REQUEST_AUTHENTICATE,
	REQUEST_PING,
	REQUEST_PONG,
	REQUEST_SUBSCRIBE,
	REQUEST_UNSUBSCRIBE,
	REQUEST_EDITING, /* presence: data is checked by presence_handle_editing */
	REQUEST_STOP_EDITING,
	REQUEST_CLIENT_EVENT, /* a type with a dot: never relayed */
	REQUEST_UNKNOWN
} request_kind;

typedef struct request
{
	request_kind kind;
	json_t *root;
	/*
	 * Why the message cannot be acted on (a BAD_REQUEST text), and the
	 * subscription the error names (NULL: none); NULL problem when it can.
	 */
	const char *problem;
	const char *problem_subscription_id;
	const char *token;           /* authenticate */
	const char *subscription_id; /* subscribe, unsubscribe */
	const char *room;            /* subscribe to a named room */
	char **patient_ids;          /* subscribe: distinct, valid ids (owned) */
	int npatients;
	char **types; /* subscribe: distinct type names (owned); none: every type */
	int ntypes;
	bool has_since;
	cursor since;
	bool presence; /* subscribe: be visible in the patient's presence */
} request;

/*
 * Parses len bytes of text into req. Always fills req (free it with
 * request_free); the strings point into req->root.
 */
void request_parse(const char *text, size_t len, request *req);

/* Frees what req still owns (take patient_ids and types by setting them NULL). */
void request_free(request *req);

/* Frees a list of n strings. */
void request_free_strings(char **list, int n);

#endif /* BRIDGE_REQUEST_H */
