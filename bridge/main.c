/*
 * main.c
 *	  fhir-notify-bridge: options, signals and the event loop (placeholder).
 */
#include <stdio.h>

int
main(void)
{
	fprintf(stderr, "fhir-notify-bridge: not built yet\n");
	return 1;
}
