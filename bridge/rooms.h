/*
 * rooms.h
 *	  Patient rooms: which clients have a subscription naming a patient.
 *	  Each client is a member of a room at most once however many of its
 *	  subscriptions name that patient, which is what makes delivery send one
 *	  copy of a change per client and patient.
 */
#ifndef BRIDGE_ROOMS_H
#define BRIDGE_ROOMS_H

struct client;

typedef struct room
{
	char *patient_id;
	struct client **members;
	int *counts; /* subscriptions of members[i] naming this patient */
	int nmembers;
	int cap;
	struct room *next; /* hash chain */
} room;

void rooms_join(const char *patient_id, struct client *c);
void rooms_leave(const char *patient_id, struct client *c);
room *rooms_find(const char *patient_id);
int rooms_count(void);
void rooms_free(void);

#endif /* BRIDGE_ROOMS_H */
