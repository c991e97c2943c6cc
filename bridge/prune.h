/*
 * prune.h
 *	  Log retention: with --prune-keep N the bridge deletes changes older
 *	  than N seconds with fhir_notify.prune(), on its own connection.
 */
#ifndef BRIDGE_PRUNE_H
#define BRIDGE_PRUNE_H

/* Starts the once-a-second check (it connects only while prune-keep > 0). */
void prune_start(void);
void prune_stop(void);

#endif /* BRIDGE_PRUNE_H */
