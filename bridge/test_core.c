/*
 * test_core.c
 *	  Unit tests of the bridge's pure parts: cursors, JSON escaping, the
 *	  settings table (flags, environment, config file, precedence), rooms
 *	  and the ring buffer of recent changes. The end-to-end behaviour is
 *	  tested by tests/test_bridge_*.py against the real daemon.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "change.h"
#include "config.h"
#include "message.h"
#include "rooms.h"
#include "util.h"

static int failures;

#define CHECK(cond)                                                                                \
	do                                                                                             \
	{                                                                                              \
		if (!(cond))                                                                               \
		{                                                                                          \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
			failures++;                                                                            \
		}                                                                                          \
	} while (0)

static void
test_cursors(void)
{
	cursor c;
	char text[CURSOR_TEXT_LEN];

	CHECK(cursor_parse("12-345", &c) && c.tick == 12 && c.position == 345);
	cursor_format(c, text, sizeof(text));
	CHECK(strcmp(text, "12-345") == 0);
	CHECK(!cursor_parse("", &c));
	CHECK(!cursor_parse("12", &c));
	CHECK(!cursor_parse("12-", &c));
	CHECK(!cursor_parse("-1-2", &c));
	CHECK(!cursor_parse("1--2", &c));
	CHECK(!cursor_parse("1-2x", &c));
	CHECK(!cursor_parse("99999999999999999999-1", &c));
	/* with the log's epoch */
	CHECK(cursor_parse("123456789-12-345", &c) && c.epoch == 123456789 && c.tick == 12 &&
	      c.position == 345);
	cursor_format(c, text, sizeof(text));
	CHECK(strcmp(text, "123456789-12-345") == 0);
	CHECK(cursor_parse("12-345", &c) && c.epoch == 0);
	CHECK(!cursor_parse("1-2-3-4", &c));
	CHECK(!cursor_parse("1-2-", &c));
	CHECK(!cursor_parse("-1-2-3", &c));
	CHECK(!cursor_parse("1-2-3x", &c));
	CHECK(!cursor_parse("99999999999999999999-1-2", &c));
	CHECK(cursor_epoch_tick((cursor){7, 0, 1}) == 6);
	CHECK(cursor_epoch_tick((cursor){7, 3, 1}) == 7);
	CHECK(cursor_compare((cursor){2, 5, 1}, (cursor){2, 5, 9}) == 0);
	cursor_format((cursor){281474976710655LL, 9223372036854775807LL, 9223372036854775807LL}, text,
	              sizeof(text));
	CHECK(strlen(text) < sizeof(text) - 1);
	CHECK(cursor_compare((cursor){1, 5}, (cursor){2, 0}) < 0);
	CHECK(cursor_compare((cursor){2, 5}, (cursor){2, 4}) > 0);
	CHECK(cursor_compare((cursor){2, 5}, (cursor){2, 5}) == 0);
}

static void
test_json_strings(void)
{
	strbuf buf;

	strbuf_init(&buf, 4);
	strbuf_append_json_string(&buf, "a\"b\\c\n\x01");
	CHECK(strcmp(buf.data, "\"a\\\"b\\\\c\\n\\u0001\"") == 0);
	strbuf_free(&buf);
	strbuf_init(&buf, 4);
	strbuf_append_json_string(&buf, NULL);
	strbuf_appendf(&buf, "-%d-%s", 42, "x");
	CHECK(strcmp(buf.data, "null-42-x") == 0);
	strbuf_free(&buf);
}

static void
test_settings(void)
{
	bridge_settings s;
	char path[] = "/tmp/fhir-notify-test-config-XXXXXX";
	int fd = mkstemp(path);
	FILE *f = fdopen(fd, "w");
	char *argv1[] = {"bridge", "--db", "dbname=x", "--max-connections=7", "--insecure-no-auth",
	                 NULL};
	char *argv2[] = {"bridge",    "--config",         path,        "--allowed-origin",
	                 "https://a", "--allowed-origin", "https://b", NULL};
	char *argv3[] = {"bridge", "--max-connections", "zero", NULL};
	char *argv4[] = {"bridge", "--no-such-thing", NULL};

	CHECK(config_load(5, argv1, &s) == CONFIG_OK);
	CHECK(strcmp(s.db, "dbname=x") == 0);
	CHECK(s.max_connections == 7);
	CHECK(s.insecure_no_auth);
	CHECK(strcmp(s.listen, "127.0.0.1:8080") == 0);
	CHECK(s.jwt_leeway == 30 && s.max_subscriptions == 100 && s.max_frame_size == 65536);
	CHECK(strcmp(s.channel, "fhir_notify") == 0 && s.poll_interval == 5);
	CHECK(s.prune_keep == 0); /* the bridge prunes only when asked to */
	CHECK(s.allowed_origins == NULL);
	config_free(&s);

	fprintf(f, "# comment\ndb = \"dbname=from_file\"\nlisten = 127.0.0.1:9\nallowed-origin = "
	           "https://file\n"
	           "poll-interval = 2\nlog-level = debug\n");
	fclose(f);
	setenv("FHIR_NOTIFY_LISTEN", "127.0.0.1:10", 1);
	CHECK(config_load(7, argv2, &s) == CONFIG_OK);
	CHECK(strcmp(s.db, "dbname=from_file") == 0);
	CHECK(strcmp(s.listen, "127.0.0.1:10") == 0); /* environment over file */
	CHECK(s.poll_interval == 2);
	CHECK(s.allowed_origins && strcmp(s.allowed_origins[0], "https://a") == 0 &&
	      strcmp(s.allowed_origins[1], "https://b") == 0 && s.allowed_origins[2] == NULL);
	config_free(&s);
	unsetenv("FHIR_NOTIFY_LISTEN");
	unlink(path);

	CHECK(config_load(3, argv3, &s) == CONFIG_EXIT_ERROR);
	CHECK(config_load(2, argv4, &s) == CONFIG_EXIT_ERROR);
}

static void
test_rooms(void)
{
	int a, b; /* stand-ins for clients: rooms only compare pointers */
	room *r;

	rooms_join("p1", (struct client *) &a);
	rooms_join("p1", (struct client *) &a); /* a second subscription, same client */
	rooms_join("p1", (struct client *) &b);
	r = rooms_find("p1");
	CHECK(r && r->nmembers == 2);
	CHECK(rooms_count() == 1);
	rooms_leave("p1", (struct client *) &a);
	r = rooms_find("p1");
	CHECK(r && r->nmembers == 2); /* a still has one subscription there */
	rooms_leave("p1", (struct client *) &a);
	r = rooms_find("p1");
	CHECK(r && r->nmembers == 1 && r->members[0] == (struct client *) &b);
	rooms_leave("p1", (struct client *) &b);
	CHECK(rooms_find("p1") == NULL && rooms_count() == 0);
	for (int i = 0; i < 1000; i++)
	{
		char id[16];

		snprintf(id, sizeof(id), "p%d", i);
		rooms_join(id, (struct client *) &a);
	}
	CHECK(rooms_count() == 1000 && rooms_find("p999") && !rooms_find("p1000"));
	rooms_free();
}

static change *
fake_change(long long tick, long long position)
{
	change *c = xcalloc(1, sizeof(change));

	c->refs = 1;
	c->at = (cursor){tick, position};
	c->resource_type = xstrdup("Condition");
	return c;
}

static void
test_ring(void)
{
	ring_init(3);
	ring_set_floor((cursor){5, 0});
	for (int i = 1; i <= 3; i++)
	{
		change *c = fake_change(5, i);

		ring_push(c);
		change_unref(c);
	}
	CHECK(ring_count() == 3);
	CHECK(ring_first_after((cursor){5, 0}) == 0);
	CHECK(ring_first_after((cursor){5, 2}) == 2);
	CHECK(ring_first_after((cursor){6, 0}) == 3);
	{
		change *c = fake_change(6, 4);

		ring_push(c);
		change_unref(c);
	}
	/* the evicted change is the new floor: cursors from it on are served from memory */
	CHECK(ring_count() == 3);
	CHECK(cursor_compare(ring_floor(), (cursor){5, 1}) == 0);
	CHECK(ring_get(0)->at.position == 2 && ring_get(2)->at.position == 4);
	ring_free();
}

static void
test_messages(void)
{
	message *m = message_error("BAD_REQUEST", "no \"type\"", "s1");

	CHECK(strcmp((char *) message_payload(m),
	             "{\"type\":\"error\",\"error\":\"BAD_REQUEST\",\"message\":\"no "
	             "\\\"type\\\"\",\"subscription_id\":\"s1\"}") == 0);
	CHECK(message_ref(m)->refs == 2);
	message_unref(m);
	message_unref(m);
	m = message_caught_up("s\"1", "12-3", 7);
	CHECK(m->kind == MESSAGE_CONTROL);
	CHECK(strcmp((char *) message_payload(m),
	             "{\"type\":\"caught_up\",\"data\":{\"subscription_id\":\"s\\\"1\",\"cursor\":"
	             "\"12-3\",\"replayed\":7}}") == 0);
	message_unref(m);
}

/* Messages carry their server frame: FIN + text, unmasked, shortest length form. */
static void
test_message_frames(void)
{
	static const size_t sizes[] = {0, 125, 126, 65535, 65536, 70000};

	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
	{
		size_t len = sizes[i];
		char *json = xcalloc(1, len + 1);
		message *m;
		const unsigned char *h;
		size_t hlen = len < 126 ? 2 : len < 65536 ? 4 : 10;
		unsigned long long coded = 0;

		memset(json, 'x', len);
		m = message_new(MESSAGE_UPDATE, json, len);
		h = m->frame;
		CHECK(m->frame_len == hlen + len);
		CHECK(m->frame + hlen == message_payload(m));
		CHECK(h[0] == 0x81);
		if (hlen == 2)
			coded = h[1];
		else if (hlen == 4)
			coded = h[1] == 126 ? (unsigned long long) h[2] << 8 | h[3] : 0;
		else if (h[1] == 127)
			for (int b = 0; b < 8; b++)
				coded = coded << 8 | h[2 + b];
		CHECK(coded == len);
		CHECK(memcmp(m->frame + hlen, json, len) == 0);
		message_unref(m);
		free(json);
	}
}

int
main(void)
{
	test_message_frames();
	test_cursors();
	test_json_strings();
	test_settings();
	test_rooms();
	test_ring();
	test_messages();
	if (failures)
	{
		fprintf(stderr, "test_core: %d checks failed\n", failures);
		return 1;
	}
	printf("test_core: ok\n");
	return 0;
}
