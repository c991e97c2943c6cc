/*
 * fuzz_cursor.c
 *	  The change-log cursor parser (bridge/util.c cursor_parse), which
 *	  reads the `since` of every resuming client. Property: a cursor it
 *	  accepts formats to text that parses back to the same cursor.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "util.h"

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = fuzz_strndup(data, size);
	cursor c, again;
	char formatted[CURSOR_TEXT_LEN];

	if (cursor_parse(text, &c))
	{
		cursor_format(c, formatted, sizeof(formatted));
		FUZZ_CHECK(strlen(formatted) + 1 < sizeof(formatted));
		FUZZ_CHECK(cursor_parse(formatted, &again));
		FUZZ_CHECK(cursor_compare(c, again) == 0);
		FUZZ_CHECK(cursor_compare(again, c) == 0);
	}
	free(text);
	return 0;
}
