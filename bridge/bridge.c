/*
 * bridge.c
 *	  The daemon's shared state (kept out of main.c so that the unit tests,
 *	  linked with every module but main.c, have it too).
 */
#include "bridge.h"

#include <stdio.h>

#include "change.h"

bridge the_bridge;

/* See bridge.h. */
cursor
bridge_read_cursor(void)
{
	return (cursor){the_bridge.last_tick + 1, 0, the_bridge.last_epoch};
}

/* See bridge.h. */
cursor
bridge_current_cursor(void)
{
	cursor read = bridge_read_cursor();

	/* a read being fanned out: its changes in the ring are out already, the rest are not */
	if (ring_count() > 0 && cursor_compare(ring_get(ring_count() - 1)->at, read) > 0)
		return ring_get(ring_count() - 1)->at;
	return read;
}

/* See bridge.h. */
cursor
bridge_live_from(void)
{
	cursor now = bridge_current_cursor();

	if (now.position > 0)
		now.position++;
	return now;
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
