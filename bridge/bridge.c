/*
 * bridge.c
 *	  The daemon's shared state (kept out of main.c so that the unit tests,
 *	  linked with every module but main.c, have it too).
 */
#include "bridge.h"

#include <stdio.h>

bridge the_bridge;

/* See bridge.h. */
cursor
bridge_current_cursor(void)
{
	return (cursor){the_bridge.last_tick + 1, 0};
}

/* See bridge.h. */
bool
bridge_current_cursor_text(char *out, size_t outlen)
{
	if (the_bridge.last_tick == 0)
	{
		snprintf(out, outlen, "%s", "");
		return false;
	}
	cursor_format(bridge_current_cursor(), out, outlen);
	return true;
}
