/*
 * fuzz_message.c
 *	  The client message parser (bridge/request.c request_parse): every
 *	  byte string a WebSocket client can send as a text message. Properties:
 *	  an accepted subscribe names a valid subscription id and either a room
 *	  or at least one distinct, valid patient id; nothing leaks.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "request.h"

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	return 0;
}

static void
check_ids(char **ids, int n, bool patient)
{
	for (int i = 0; i < n; i++)
	{
		size_t len = strlen(ids[i]);

		FUZZ_CHECK(len >= 1 && len <= 64);
		for (const char *p = ids[i]; *p; p++)
			FUZZ_CHECK(patient ? (isalnum((unsigned char) *p) || *p == '.' || *p == '-')
			                   : isalpha((unsigned char) *p));
		for (int j = 0; j < i; j++)
			FUZZ_CHECK(strcmp(ids[i], ids[j]) != 0);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	request req;

	request_parse((const char *) data, size, &req);
	if (req.kind == REQUEST_INVALID)
		FUZZ_CHECK(req.problem != NULL);
	if (req.kind == REQUEST_AUTHENTICATE && req.problem == NULL)
		FUZZ_CHECK(req.token != NULL);
	if (req.kind == REQUEST_UNSUBSCRIBE && req.problem == NULL)
		FUZZ_CHECK(req.subscription_id != NULL);
	if (req.kind == REQUEST_SUBSCRIBE && req.problem == NULL)
	{
		FUZZ_CHECK(req.subscription_id != NULL);
		FUZZ_CHECK(strlen(req.subscription_id) >= 1 &&
		           strlen(req.subscription_id) <= MAX_ID_LENGTH);
		if (req.room)
			FUZZ_CHECK(req.npatients == 0 && strlen(req.room) >= 1 &&
			           strlen(req.room) <= MAX_ID_LENGTH);
		else
			FUZZ_CHECK(req.npatients >= 1 && req.npatients <= MAX_PATIENTS_PER_SUBSCRIPTION);
		FUZZ_CHECK(req.ntypes <= MAX_TYPES_PER_SUBSCRIPTION);
		check_ids(req.patient_ids, req.npatients, true);
		check_ids(req.types, req.ntypes, false);
	}
	request_free(&req);
	return 0;
}
