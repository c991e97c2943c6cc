/*
 * loadgen.c
 *	  A WebSocket load generator for servers that speak the fhir-notify
 *	  protocol (docs/protocol.md): the bridge, or the reference relay.
 *
 * It opens many client connections, subscribes each to one patient room and
 * counts the `update` messages that arrive. The writer of the benchmark puts
 * its send time into every resource, as a tag code "fnbench-<epoch ns>"; the
 * time from there to arrival is the commit-to-client delay. It speaks only
 * the public protocol, so the same run can be pointed at any server.
 *
 * Progress goes to stdout as lines a driver can wait for:
 *   READY {...}         every client is connected (and subscribed)
 *   WARM {...}          --warmup: every client has had its first update
 *   DISCONNECTED {...}  catch-up mode: cursors saved, every client closed
 *   RESULT {...}        the measurements, last line before exit
 * SIGUSR1 starts the reconnect in catch-up mode; SIGINT/SIGTERM end the run.
 *
 * So that it measures the server and not itself, it runs on epoll, and for
 * ws:// it speaks WebSocket itself (the raw transport: a non-blocking socket
 * per client, frames parsed in place from whole reads): lws 4.1's client
 * parses every byte of every frame through a state machine, which cost
 * four times the bridge's CPU per fanned-out message. wss://, or
 * --transport lws, uses lws (on libev's epoll through lws's plugin;
 * --event-loop poll for lws's own loop).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>
#include <jansson.h>
#include <libwebsockets.h>

#define STAMP_MARKER      "fnbench-"
#define MAX_MESSAGE       (1024 * 1024)
#define MAX_SAMPLES       (32 * 1024 * 1024)
#define SERVICE_TICK_USEC (5 * 1000)
/*
 * --bind-from picks source ports here: below Linux's default ephemeral
 * range (32768-60999), so they do not collide with ports the kernel hands
 * out to other programs; past the last, the next address.
 */
#define SOURCE_PORT_FIRST 10000
#define SOURCE_PORT_LAST  32767

typedef enum mode
{
	MODE_LATENCY, /* subscribe, count, measure delay until the run ends */
	MODE_FANOUT,  /* as latency, but ends when every client has --expect updates */
	MODE_IDLE,    /* connect and authenticate only, hold until the run ends */
	MODE_CATCHUP  /* subscribe, note cursors, close; reconnect with since */
} mode;

typedef enum client_state
{
	CLIENT_PENDING,    /* waiting for a connection slot */
	CLIENT_CONNECTING, /* handshake in flight */
	CLIENT_OPEN,       /* upgraded, waiting for welcome / subscription */
	CLIENT_READY,      /* welcomed (and subscribed) */
	CLIENT_CLOSING,    /* we asked it to close */
	CLIENT_CLOSED,
	CLIENT_FAILED /* gave up after retries */
} client_state;

typedef struct client
{
	int index;
	client_state state;
	struct lws *wsi;
	int attempts;
	bool want_subscribe;
	bool want_close;
	bool done; /* has its expected updates (or a resync) */
	uint32_t updates;
	uint32_t resyncs;
	bool caught_up; /* a resumed subscription's caught_up arrived */
	char *cursor;   /* newest cursor seen, for since */
	char *partial;  /* a fragmented message being reassembled */
	size_t partial_len;

	/* the raw transport (ws:// without lws): its socket and buffers */
	int fd;            /* -1: none */
	bool upgraded;     /* the 101 response has been read */
	unsigned char *in; /* the start of a frame not yet whole */
	size_t in_len;
	unsigned char *out; /* bytes the kernel did not take yet */
	size_t out_len;
} client;

/* Everything about the run; one instance. */
static struct
{
	/* options */
	const char *url;
	char host[256];
	int port;
	char path[4096];
	bool tls;
	const char *token;
	int nclients;
	int npatients;
	const char *patient_prefix;
	const char *subscription_prefix;
	mode mode;
	double duration;
	uint32_t expect;
	int concurrency;
	int retries;
	bool subscribe;
	bool debug;           /* $LOADGEN_DEBUG: every message and a heartbeat to stderr */
	bool use_poll;        /* --event-loop poll */
	bool use_lws;         /* --transport lws (always for wss://) */
	struct ev_loop *loop; /* the epoll loop, or NULL: lws's poll() loop */
	int epfd;             /* the raw transport's epoll */
	struct sockaddr_storage addr;
	socklen_t addrlen;
	bool bind_source;     /* --bind-from: each socket bound to an address and port we pick */
	uint32_t source_addr; /* the next source address (host order) */
	int source_port;      /* the next source port */

	/* state */
	struct lws_context *context;
	client *clients;
	int inflight;
	int next_pending; /* lowest index that may still be pending */
	int nready;
	int nfailed;
	int ndone;
	int nclosed;
	int unexpected_closes;
	int close_codes[5000];
	uint64_t errors;
	uint64_t updates;
	uint64_t unstamped;
	uint32_t *samples; /* delays in microseconds */
	size_t nsamples;
	size_t samples_cap;
	int64_t first_stamp_ns; /* earliest writer stamp seen */
	int64_t first_update_ns, last_update_ns;
	int64_t start_mono, ready_mono, phase_mono, done_mono;
	int phase; /* catch-up: 0 first connect, 1 closed, 2 reconnect */
	lws_sorted_usec_list_t tick;
	bool finished;
	bool warmup; /* --warmup: the first update of every client is not measured */
	int nwarm;   /* clients that have their warm-up update */
} run;

static volatile sig_atomic_t got_stop;
static volatile sig_atomic_t got_go;

/* Wall clock in nanoseconds since the epoch: comparable with the writer's stamps. */
static int64_t
now_real_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Monotonic nanoseconds, for elapsed times. */
static int64_t
now_mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Signal handlers only set flags; the service tick acts on them. */
static void
on_stop_signal(int sig)
{
	got_stop = 1;
}

static void
on_go_signal(int sig)
{
	got_go = 1;
}

/* Prints the usage text. */
static void
usage(FILE *out)
{
	fprintf(out,
	        "usage: loadgen --url ws://HOST:PORT/api/ws [options]\n"
	        "  --token-file FILE   JWT sent as ?token= (else $LOADGEN_TOKEN, else none)\n"
	        "  --clients N         connections (default 1000)\n"
	        "  --patients P        patient rooms; client i joins PREFIX(i %% P) (default 100)\n"
	        "  --patient-prefix S  patient id prefix (default bench-)\n"
	        "  --mode M            latency | fanout | idle | catchup (default latency)\n"
	        "  --duration S        give up after S seconds once ready (default 60)\n"
	        "  --expect K          updates each client must get before it is done\n"
	        "  --concurrency C     handshakes in flight at once (default 200)\n"
	        "  --retries R         reconnect attempts after a failed handshake (default 3)\n"
	        "  --transport T       raw (default for ws://: WebSocket by hand on epoll) or lws\n"
	        "  --event-loop L      with lws: epoll (default; poll if lws's libev plugin is\n"
	        "                      missing) or poll\n"
	        "  --subscription-prefix S  client i's subscription id is S<i> (default s): the\n"
	        "                      bridge keeps resume points by user, patient and id\n"
	        "  --warmup            print WARM once every client has had one update, which\n"
	        "                      is not counted: measure from there\n"
	        "  --bind-from ADDR    raw transport: bind every socket to ADDR (then the next\n"
	        "                      addresses) and a port of %d-%d chosen here, not by the\n"
	        "                      kernel, whose search for a free port costs more the more\n"
	        "                      are in use (most of the CPU of 19,000 connects)\n",
	        SOURCE_PORT_FIRST, SOURCE_PORT_LAST);
}

/* Splits ws://host:port/path into the run's host, port and path. */
static bool
parse_url(const char *url)
{
	const char *rest;
	const char *slash;
	const char *colon;
	size_t hostlen;

	if (strncmp(url, "ws://", 5) == 0)
		rest = url + 5;
	else if (strncmp(url, "wss://", 6) == 0)
	{
		rest = url + 6;
		run.tls = true;
	}
	else
		return false;
	slash = strchr(rest, '/');
	if (!slash)
		slash = rest + strlen(rest);
	colon = memchr(rest, ':', slash - rest);
	hostlen = (colon ? colon : slash) - rest;
	if (hostlen == 0 || hostlen >= sizeof(run.host))
		return false;
	memcpy(run.host, rest, hostlen);
	run.host[hostlen] = '\0';
	run.port = colon ? atoi(colon + 1) : (run.tls ? 443 : 80);
	if (run.port <= 0 || run.port > 65535)
		return false;
	snprintf(run.path, sizeof(run.path), "%s", *slash ? slash : "/");
	return true;
}

/* Reads a whole small file into a string without its trailing newline. */
static char *
read_token_file(const char *path)
{
	FILE *f = fopen(path, "r");
	char buf[8192];
	size_t n;

	if (!f)
	{
		fprintf(stderr, "loadgen: cannot open token file \"%s\": %s\n", path, strerror(errno));
		exit(2);
	}
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
		n--;
	buf[n] = '\0';
	return strdup(buf);
}

/* Records one delay sample, growing the array up to a bound. */
static void
add_sample(int64_t delay_ns)
{
	uint64_t us;

	if (run.nsamples == run.samples_cap)
	{
		size_t cap = run.samples_cap ? run.samples_cap * 2 : 65536;
		uint32_t *grown;

		if (cap > MAX_SAMPLES)
			return;
		grown = realloc(run.samples, cap * sizeof(uint32_t));
		if (!grown)
			return;
		run.samples = grown;
		run.samples_cap = cap;
	}
	us = delay_ns < 0 ? 0 : (uint64_t) delay_ns / 1000;
	run.samples[run.nsamples++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t) us;
}

/*
 * Finds the string value of a top-level key of a JSON object without
 * building a tree: updates arrive by the hundred thousand per second and
 * only their type matters. Copies at most outlen-1 raw bytes (escapes are
 * not decoded; the keys we look for have none). Returns false when absent.
 */
static bool
top_level_string(const char *buf, size_t len, const char *key, char *out, size_t outlen)
{
	size_t keylen = strlen(key);
	size_t i = 0;
	int depth = 0;
	bool expect_key = false;

	while (i < len)
	{
		char c = buf[i];

		if (c == '"')
		{
			size_t start = ++i;

			while (i < len && buf[i] != '"')
				i += buf[i] == '\\' ? 2 : 1;
			if (i >= len)
				return false;
			if (depth == 1 && expect_key && i - start == keylen &&
			    memcmp(buf + start, key, keylen) == 0)
			{
				size_t vstart;

				i++;
				while (i < len && (buf[i] == ' ' || buf[i] == ':' || buf[i] == '\t' ||
				                   buf[i] == '\n' || buf[i] == '\r'))
					i++;
				if (i >= len || buf[i] != '"')
					return false;
				vstart = ++i;
				while (i < len && buf[i] != '"')
					i += buf[i] == '\\' ? 2 : 1;
				if (i >= len || i - vstart >= outlen)
					return false;
				memcpy(out, buf + vstart, i - vstart);
				out[i - vstart] = '\0';
				return true;
			}
			expect_key = false;
		}
		else if (c == '{' || c == '[')
		{
			depth++;
			expect_key = c == '{' && depth == 1;
		}
		else if (c == '}' || c == ']')
			depth--;
		else if (c == ',' && depth == 1)
			expect_key = true;
		i++;
	}
	return false;
}

/* Finds the writer's stamp in an update: "fnbench-<epoch ns>"; 0 if none. */
static int64_t
find_stamp(const char *buf, size_t len)
{
	const char *p = memmem(buf, len, STAMP_MARKER, sizeof(STAMP_MARKER) - 1);
	const char *end = buf + len;
	int64_t v = 0;

	if (!p)
		return 0;
	for (p += sizeof(STAMP_MARKER) - 1; p < end && *p >= '0' && *p <= '9'; p++)
		v = v * 10 + (*p - '0');
	return v;
}

/* Marks a client as having everything it waited for. */
static void
client_done(client *c)
{
	if (c->done)
		return;
	c->done = true;
	run.ndone++;
	if (run.ndone == run.nclients - run.nfailed && run.done_mono == 0)
		run.done_mono = now_mono_ns();
}

/* Remembers a cursor a server message carried, for a later since. */
static void
note_cursor(client *c, json_t *data)
{
	const char *cursor = json_string_value(json_object_get(data, "cursor"));

	if (cursor)
	{
		free(c->cursor);
		c->cursor = strdup(cursor);
	}
}

/* Once every client is ready or has failed, tells the driver. */
static void
check_all_ready(void)
{
	if (run.nready + run.nfailed == run.nclients && run.ready_mono == 0)
	{
		run.ready_mono = now_mono_ns();
		printf("%s {\"ready\":%d,\"failed\":%d,\"seconds\":%.3f}\n",
		       run.phase == 2 ? "RECONNECTED" : "READY", run.nready, run.nfailed,
		       (run.ready_mono - (run.phase == 2 ? run.phase_mono : run.start_mono)) / 1e9);
		fflush(stdout);
	}
}

/* Marks a client ready (welcomed, and subscribed when it subscribes). */
static void
client_ready(client *c)
{
	if (c->state == CLIENT_READY)
		return;
	c->state = CLIENT_READY;
	run.nready++;
	check_all_ready();
}

/* Handles an update: counts it and measures its delay. */
/*
 * --warmup: a client's first update only shows that its subscription is
 * live (a bridge confirms a subscription before its resume-point lookup
 * has answered, and only then delivers to it live). Once every ready
 * client has had one, WARM is printed and the counts start from zero.
 */
static bool
warming_up(client *c)
{
	if (!run.warmup || run.nwarm < 0)
		return false;
	if (c->updates == 0)
	{
		c->updates = 1;
		if (++run.nwarm == run.nready)
		{
			for (int i = 0; i < run.nclients; i++)
				run.clients[i].updates = 0;
			run.nwarm = -1; /* done */
			printf("WARM {\"clients\":%d,\"seconds\":%.3f}\n", run.nready,
			       (now_mono_ns() - run.ready_mono) / 1e9);
			fflush(stdout);
		}
	}
	return true;
}

static void
handle_update(client *c, const char *buf, size_t len)
{
	int64_t now = now_real_ns();
	int64_t stamp;

	if (warming_up(c))
		return;
	stamp = find_stamp(buf, len);
	c->updates++;
	run.updates++;
	if (run.first_update_ns == 0)
		run.first_update_ns = now;
	run.last_update_ns = now;
	if (stamp)
	{
		if (run.first_stamp_ns == 0 || stamp < run.first_stamp_ns)
			run.first_stamp_ns = stamp;
		add_sample(now - stamp);
	}
	else
		run.unstamped++;
	if (run.expect && c->updates >= run.expect)
		client_done(c);
}

static void request_write(client *c);

/* Handles every message but updates: rare, so parsed fully. */
static void
handle_control(client *c, const char *type, const char *buf, size_t len)
{
	json_error_t error;
	json_t *msg = json_loadb(buf, len, 0, &error);
	json_t *data = json_object_get(msg, "data");

	if (!msg)
	{
		run.errors++;
		return;
	}
	if (strcmp(type, "welcome") == 0)
	{
		/* On a reconnect the saved cursor is what we resume from. */
		if (run.phase != 2)
			note_cursor(c, data);
		if (run.subscribe)
		{
			c->want_subscribe = true;
			request_write(c);
		}
		else
			client_ready(c);
	}
	else if (strcmp(type, "subscription") == 0)
	{
		note_cursor(c, data);
		client_ready(c);
	}
	else if (strcmp(type, "caught_up") == 0)
	{
		/* the replay is over: everything it missed has arrived (counted in delivered) */
		c->caught_up = true;
		note_cursor(c, data);
		client_done(c);
	}
	else if (strcmp(type, "resync") == 0)
	{
		c->resyncs++;
		note_cursor(c, data);
		client_done(c);
	}
	else if (strcmp(type, "error") == 0)
	{
		if (run.errors++ < 5)
			fprintf(stderr, "loadgen: client %d: server error: %.*s\n", c->index, (int) len, buf);
	}
	json_decref(msg);
}

/* Dispatches one whole server message by its type. */
static void
handle_message(client *c, const char *buf, size_t len)
{
	char type[64];

	if (run.debug)
		fprintf(stderr, "client %d phase %d: %.*s\n", c->index, run.phase,
		        (int) (len > 200 ? 200 : len), buf);
	if (!top_level_string(buf, len, "type", type, sizeof(type)))
	{
		run.errors++;
		return;
	}
	if (strcmp(type, "update") == 0)
		handle_update(c, buf, len);
	else
		handle_control(c, type, buf, len);
}

/* Composes the subscribe message of a client into buf (after LWS_PRE). */
static size_t
subscribe_message(client *c, char *buf, size_t size)
{
	int n;

	if (run.phase == 2 && c->cursor)
		n = snprintf(buf, size,
		             "{\"type\":\"subscribe\",\"data\":{\"subscription_id\":\"%s%d\","
		             "\"patient_ids\":[\"%s%d\"],\"resource_types\":[],\"since\":\"%s\"}}",
		             run.subscription_prefix, c->index, run.patient_prefix,
		             c->index % run.npatients, c->cursor);
	else
		n = snprintf(buf, size,
		             "{\"type\":\"subscribe\",\"data\":{\"subscription_id\":\"%s%d\","
		             "\"patient_ids\":[\"%s%d\"],\"resource_types\":[]}}",
		             run.subscription_prefix, c->index, run.patient_prefix,
		             c->index % run.npatients);
	return n < 0 || (size_t) n >= size ? 0 : (size_t) n;
}

/* A handshake ended (either way): frees its slot. */
static void
leave_inflight(client *c)
{
	if (c->state == CLIENT_CONNECTING)
		run.inflight--;
}

/* A connection failed or closed before its time: retry or give up. */
static void
client_lost(client *c, bool during_handshake)
{
	if (during_handshake && c->attempts <= run.retries && !got_stop)
	{
		c->state = CLIENT_PENDING;
		if (c->index < run.next_pending)
			run.next_pending = c->index;
		return;
	}
	if (during_handshake)
	{
		c->state = CLIENT_FAILED;
		run.nfailed++;
		check_all_ready();
		return;
	}
	c->state = CLIENT_CLOSED;
	run.nclosed++;
}

/* A handshake failed (either transport). */
static void
on_connection_error(client *c, const char *why)
{
	if (run.errors++ < 5)
		fprintf(stderr, "loadgen: client %d: connection error: %s\n", c->index, why);
	leave_inflight(c);
	client_lost(c, true);
}

/* The server sent a close frame with this payload. */
static void
on_peer_close(const unsigned char *in, size_t len)
{
	if (len >= 2)
	{
		int code = in[0] << 8 | in[1];

		if (code >= 0 && code < (int) (sizeof(run.close_codes) / sizeof(int)))
			run.close_codes[code]++;
	}
}

/* The connection is gone (either transport). */
static void
on_closed(client *c)
{
	if (c->state == CLIENT_CLOSING)
	{
		c->state = CLIENT_CLOSED;
		run.nclosed++;
		return;
	}
	if (c->state == CLIENT_CONNECTING)
	{
		leave_inflight(c);
		client_lost(c, true);
		return;
	}
	if (run.unexpected_closes++ < 5)
		fprintf(stderr, "loadgen: client %d: closed by the server\n", c->index);
	client_lost(c, c->state != CLIENT_READY);
}

/* A message's payload, or a fragment of it; fragments are reassembled. -1: too large. */
static int
on_payload(client *c, const char *in, size_t len, bool final)
{
	if (final && !c->partial)
	{
		handle_message(c, in, len);
		return 0;
	}
	if (c->partial_len + len > MAX_MESSAGE)
	{
		run.errors++;
		return -1;
	}
	c->partial = realloc(c->partial, c->partial_len + len);
	memcpy(c->partial + c->partial_len, in, len);
	c->partial_len += len;
	if (final)
	{
		handle_message(c, c->partial, c->partial_len);
		free(c->partial);
		c->partial = NULL;
		c->partial_len = 0;
	}
	return 0;
}

/* The lws protocol callback for every client connection. */
static int
callback_client(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
	client *c = user;
	unsigned char out[LWS_PRE + 8192];
	size_t n;

	switch (reason)
	{
		case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
			if (!c)
				break;
			c->wsi = NULL;
			on_connection_error(c, in ? (char *) in : "(none)");
			break;

		case LWS_CALLBACK_CLIENT_ESTABLISHED:
			leave_inflight(c);
			c->state = CLIENT_OPEN;
			c->wsi = wsi;
			break;

		case LWS_CALLBACK_CLIENT_RECEIVE:
			if (on_payload(c, in, len,
			               lws_is_final_fragment(wsi) && !lws_remaining_packet_payload(wsi)) < 0)
				return -1;
			break;

		case LWS_CALLBACK_CLIENT_WRITEABLE:
			if (c->want_close)
			{
				lws_close_reason(wsi, LWS_CLOSE_STATUS_NORMAL, (unsigned char *) "bye", 3);
				return -1;
			}
			if (c->want_subscribe)
			{
				c->want_subscribe = false;
				n = subscribe_message(c, (char *) out + LWS_PRE, sizeof(out) - LWS_PRE);
				if (n == 0 || lws_write(wsi, out + LWS_PRE, n, LWS_WRITE_TEXT) < (int) n)
					return -1;
			}
			break;

		case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
			on_peer_close(in, len);
			break;

		case LWS_CALLBACK_CLIENT_CLOSED:
			if (!c || run.finished)
				break;
			c->wsi = NULL;
			on_closed(c);
			break;

		default:
			break;
	}
	return 0;
}

static const struct lws_protocols protocols[] = {{"loadgen", callback_client, 0, 2048, 0, NULL, 0},
                                                 {NULL, NULL, 0, 0, 0, NULL, 0}};

static const lws_retry_bo_t no_validity_policy = {0};

static void raw_connect(client *c);

/* Starts one client's handshake. */
static void
client_connect(client *c)
{
	struct lws_client_connect_info info;
	char path[8192];

	if (!run.use_lws)
	{
		raw_connect(c);
		return;
	}

	memset(&info, 0, sizeof(info));
	if (run.token)
		snprintf(path, sizeof(path), "%s%stoken=%s", run.path, strchr(run.path, '?') ? "&" : "?",
		         run.token);
	else
		snprintf(path, sizeof(path), "%s", run.path);
	info.context = run.context;
	info.address = run.host;
	info.port = run.port;
	info.path = path;
	info.host = run.host;
	info.origin = run.host;
	info.ssl_connection = run.tls ? LCCSCF_USE_SSL | LCCSCF_ALLOW_SELFSIGNED : 0;
	info.local_protocol_name = "loadgen";
	/*
	 * No idle-validity timer per connection: libwebsockets 4.1 keeps all
	 * timers in one sorted list, so one far-future timer per connection
	 * makes every insertion walk them all.
	 */
	info.retry_and_idle_policy = &no_validity_policy;
	info.userdata = c;
	c->attempts++;
	c->state = CLIENT_CONNECTING;
	c->done = false;
	run.inflight++;
	if (!lws_client_connect_via_info(&info) && c->state == CLIENT_CONNECTING)
	{
		run.inflight--;
		client_lost(c, true);
	}
}

/*
 * The raw transport: RFC 6455 by hand for ws://. A read takes whatever the
 * kernel has (up to 64 KB) into one buffer and every whole frame in it is
 * handled in place; only the start of an unfinished frame is kept, per
 * client, until the next read.
 */

/* The largest read, after the kept start of a frame (at most a whole message). */
#define RAW_READ 65536

/* Watches c's socket for input, and for output while some is waiting. */
static void
raw_watch(client *c, int op)
{
	struct epoll_event ev = {.events = EPOLLIN | (c->out_len ? EPOLLOUT : 0), .data.ptr = c};

	epoll_ctl(run.epfd, op, c->fd, &ev);
}

/* Closes c's socket and forgets its buffers. */
static void
raw_drop(client *c)
{
	if (c->fd >= 0)
		close(c->fd); /* also leaves the epoll set */
	c->fd = -1;
	free(c->in);
	free(c->out);
	c->in = c->out = NULL;
	c->in_len = c->out_len = 0;
	free(c->partial);
	c->partial = NULL;
	c->partial_len = 0;
}

/* The connection failed or ended: as lws's connection error or close. */
static void
raw_fail(client *c, const char *why)
{
	bool handshake = !c->upgraded;

	raw_drop(c);
	c->upgraded = false;
	if (run.finished)
		return;
	if (handshake && c->state == CLIENT_CONNECTING)
		on_connection_error(c, why);
	else
		on_closed(c);
}

/*
 * Sends bytes, keeping what the kernel does not take for EPOLLOUT. A dead
 * socket is noticed by the reader (epoll reports it).
 */
static void
raw_send(client *c, const void *buf, size_t len)
{
	ssize_t n = 0;

	if (c->fd < 0)
		return;
	if (c->out_len == 0)
	{
		n = send(c->fd, buf, len, MSG_NOSIGNAL);
		if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
			return;
		if (n < 0)
			n = 0;
		if ((size_t) n == len)
			return;
	}
	c->out = realloc(c->out, c->out_len + len - n);
	memcpy(c->out + c->out_len, (const char *) buf + n, len - n);
	c->out_len += len - n;
	raw_watch(c, EPOLL_CTL_MOD);
}

/* A client frame: FIN, masked as RFC 6455 5.3 requires (by the all-zero key: payload as is). */
static void
raw_send_frame(client *c, int opcode, const void *payload, size_t len)
{
	unsigned char frame[8 + 8192];
	size_t h = 0;

	if (len > 8192)
		return;
	frame[h++] = 0x80 | opcode;
	if (len < 126)
		frame[h++] = 0x80 | len;
	else
	{
		frame[h++] = 0x80 | 126;
		frame[h++] = len >> 8;
		frame[h++] = len & 0xff;
	}
	memset(frame + h, 0, 4);
	h += 4;
	memcpy(frame + h, payload, len);
	raw_send(c, frame, h + len);
}

/* Writes what the client wants to say: a close, or its subscription. */
static void
raw_write_wants(client *c)
{
	char buf[8192];
	size_t n;

	if (c->fd < 0 || !c->upgraded)
		return;
	if (c->want_close)
	{
		static const unsigned char bye[] = {0x03, 0xe8, 'b', 'y', 'e'}; /* 1000 */

		c->want_close = false;
		raw_send_frame(c, 0x8, bye, sizeof(bye));
		return;
	}
	if (c->want_subscribe)
	{
		c->want_subscribe = false;
		n = subscribe_message(c, buf, sizeof(buf));
		if (n)
			raw_send_frame(c, 0x1, buf, n);
	}
}

/* See raw_write_wants(); with lws, a writeable callback. */
static void
request_write(client *c)
{
	if (run.use_lws)
		lws_callback_on_writable(c->wsi);
	else
		raw_write_wants(c);
}

/*
 * --bind-from: binds fd to the next source address and port. A port in use
 * (a listener, an earlier run's TIME_WAIT without SO_REUSEADDR's leave) is
 * skipped. connect() then needs no search for a free ephemeral port, which
 * on Linux walks the ports already connected to the same destination.
 */
static bool
bind_source(int fd)
{
	int one = 1;

	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	for (int tries = 0; tries < 1000; tries++)
	{
		struct sockaddr_in sin = {.sin_family = AF_INET,
		                          .sin_port = htons((uint16_t) run.source_port),
		                          .sin_addr.s_addr = htonl(run.source_addr)};
		int rc = bind(fd, (struct sockaddr *) &sin, sizeof(sin));

		if (++run.source_port > SOURCE_PORT_LAST)
		{
			run.source_port = SOURCE_PORT_FIRST;
			run.source_addr++;
		}
		if (rc == 0)
			return true;
		if (errno != EADDRINUSE)
			return false;
	}
	return false;
}

/* Opens one client's socket and queues its upgrade request. */
static void
raw_connect(client *c)
{
	char request[8192 + 512];
	int one = 1;
	int fd;
	int n;

	c->attempts++;
	c->state = CLIENT_CONNECTING;
	c->done = false;
	c->upgraded = false;
	run.inflight++;
	fd = socket(run.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
	{
		on_connection_error(c, strerror(errno));
		return;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (run.bind_source && !bind_source(fd))
	{
		close(fd);
		on_connection_error(c, strerror(errno));
		return;
	}
	if (connect(fd, (struct sockaddr *) &run.addr, run.addrlen) < 0 && errno != EINPROGRESS)
	{
		close(fd);
		on_connection_error(c, strerror(errno));
		return;
	}
	c->fd = fd;
	/* any valid key will do: the answer's accept is not checked */
	n = snprintf(request, sizeof(request),
	             "GET %s%s%s%s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
	             "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	             "Sec-WebSocket-Version: 13\r\n\r\n",
	             run.path, run.token ? (strchr(run.path, '?') ? "&" : "?") : "",
	             run.token ? "token=" : "", run.token ? run.token : "", run.host, run.port);
	c->out = malloc((size_t) n);
	memcpy(c->out, request, (size_t) n);
	c->out_len = (size_t) n;
	raw_watch(c, EPOLL_CTL_ADD); /* sent once connected: EPOLLOUT */
}

/* Sends what is waiting; false when the socket failed. */
static bool
raw_flush(client *c)
{
	while (c->out_len)
	{
		ssize_t n = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL);

		if (n < 0)
			return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
		memmove(c->out, c->out + n, c->out_len - n);
		c->out_len -= n;
	}
	raw_watch(c, EPOLL_CTL_MOD);
	return true;
}

/* Reads and handles every whole frame (and, first, the upgrade answer). */
static void
raw_read(client *c)
{
	static unsigned char buf[MAX_MESSAGE + 16 + RAW_READ];
	size_t have = c->in_len, pos = 0;
	ssize_t n;

	memcpy(buf, c->in, have);
	free(c->in);
	c->in = NULL;
	c->in_len = 0;
	n = recv(c->fd, buf + have, RAW_READ, 0);
	if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
	{
		raw_fail(c, n == 0 ? "closed" : strerror(errno));
		return;
	}
	have += n > 0 ? (size_t) n : 0;
	if (!c->upgraded)
	{
		unsigned char *end = memmem(buf, have, "\r\n\r\n", 4);

		if (!end)
		{
			if (have > 16384)
				raw_fail(c, "no end to the upgrade answer");
			else if (have)
			{
				c->in = malloc(have);
				memcpy(c->in, buf, have);
				c->in_len = have;
			}
			return;
		}
		if (have < 12 || memcmp(buf, "HTTP/1.1 101", 12) != 0)
		{
			raw_fail(c, "the upgrade was refused");
			return;
		}
		c->upgraded = true;
		leave_inflight(c);
		c->state = CLIENT_OPEN;
		pos = end + 4 - buf;
	}
	while (have - pos >= 2)
	{
		unsigned char *f = buf + pos;
		size_t avail = have - pos, hlen = 2;
		uint64_t len = f[1] & 0x7f;
		bool masked = f[1] & 0x80;
		int opcode = f[0] & 0xf;
		unsigned char *payload;

		if (len == 126)
		{
			if (avail < 4)
				break;
			len = (uint64_t) f[2] << 8 | f[3];
			hlen = 4;
		}
		else if (len == 127)
		{
			if (avail < 10)
				break;
			len = 0;
			for (int i = 0; i < 8; i++)
				len = len << 8 | f[2 + i];
			hlen = 10;
		}
		hlen += masked ? 4 : 0;
		if (len > MAX_MESSAGE)
		{
			run.errors++;
			raw_fail(c, "message too large");
			return;
		}
		if (avail < hlen + len)
			break;
		payload = f + hlen;
		if (masked) /* servers do not mask; undone anyway */
			for (uint64_t i = 0; i < len; i++)
				payload[i] ^= f[hlen - 4 + (i & 3)];
		pos += hlen + len;
		if (opcode <= 0x2)
		{
			if (on_payload(c, (char *) payload, len, f[0] & 0x80) < 0)
			{
				raw_fail(c, "message too large");
				return;
			}
		}
		else if (opcode == 0x8)
		{
			on_peer_close(payload, len);
			if (c->state != CLIENT_CLOSING)
				raw_send_frame(c, 0x8, payload, len >= 2 ? 2 : 0);
			raw_fail(c, "closed");
			return;
		}
		else if (opcode == 0x9)
			raw_send_frame(c, 0xA, payload, len);
	}
	if (have > pos)
	{
		c->in = malloc(have - pos);
		memcpy(c->in, buf + pos, have - pos);
		c->in_len = have - pos;
	}
}

static void service_tick(lws_sorted_usec_list_t *sul);

/* The raw transport's loop: epoll, and the service tick every few milliseconds. */
static void
raw_run(void)
{
	struct epoll_event events[512];
	int64_t next_tick = 0;

	while (!run.finished)
	{
		int64_t now = now_mono_ns();
		int n;

		if (now >= next_tick)
		{
			service_tick(NULL);
			next_tick = now + SERVICE_TICK_USEC * 1000LL;
			continue;
		}
		n = epoll_wait(run.epfd, events, 512, (int) ((next_tick - now) / 1000000) + 1);
		for (int i = 0; i < n && !run.finished; i++)
		{
			client *c = events[i].data.ptr;

			if (c->fd < 0)
				continue;
			if ((events[i].events & EPOLLOUT) && !raw_flush(c))
			{
				raw_fail(c, strerror(errno));
				continue;
			}
			if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
				raw_read(c);
		}
	}
}

/* Asks every open client to close normally (catch-up, between phases). */
static void
close_all(void)
{
	for (int i = 0; i < run.nclients; i++)
	{
		client *c = &run.clients[i];

		if ((c->wsi || c->fd >= 0) && (c->state == CLIENT_READY || c->state == CLIENT_OPEN))
		{
			c->state = CLIENT_CLOSING;
			c->want_close = true;
			request_write(c);
		}
		else if (c->state != CLIENT_FAILED)
		{
			c->state = CLIENT_CLOSED;
			run.nclosed++;
		}
	}
}

/* Orders delay samples for the percentiles. */
static int
compare_samples(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *) a;
	uint32_t y = *(const uint32_t *) b;

	return x < y ? -1 : x > y;
}

/* Prints the result line: what the driver records. */
static void
print_result(void)
{
	int64_t end = run.done_mono ? run.done_mono : now_mono_ns();
	json_t *r = json_object();
	json_t *codes = json_object();
	double window;

	json_object_set_new(r, "clients", json_integer(run.nclients));
	json_object_set_new(r, "ready", json_integer(run.nready));
	json_object_set_new(r, "failed", json_integer(run.nfailed));
	json_object_set_new(
	    r, "connect_s",
	    json_real(run.ready_mono && run.phase != 2 ? (run.ready_mono - run.start_mono) / 1e9 : -1));
	json_object_set_new(r, "updates", json_integer(run.updates));
	json_object_set_new(r, "unstamped", json_integer(run.unstamped));
	json_object_set_new(r, "errors", json_integer(run.errors));
	json_object_set_new(r, "unexpected_closes", json_integer(run.unexpected_closes));
	json_object_set_new(r, "done_clients", json_integer(run.ndone));
	json_object_set_new(r, "all_done", json_boolean(run.done_mono != 0));
	for (size_t i = 0; i < sizeof(run.close_codes) / sizeof(int); i++)
		if (run.close_codes[i])
		{
			char key[16];

			snprintf(key, sizeof(key), "%zu", i);
			json_object_set_new(codes, key, json_integer(run.close_codes[i]));
		}
	json_object_set_new(r, "close_codes", codes);
	{
		uint64_t resyncs = 0;

		uint64_t caught_up = 0;

		for (int i = 0; i < run.nclients; i++)
		{
			resyncs += run.clients[i].resyncs;
			caught_up += run.clients[i].caught_up;
		}
		json_object_set_new(r, "resyncs", json_integer(resyncs));
		json_object_set_new(r, "caught_up", json_integer(caught_up));
	}
	if (run.nsamples)
	{
		static const struct
		{
			const char *name;
			double q;
		} quantiles[] = {{"p50_ms", 0.50}, {"p95_ms", 0.95}, {"p99_ms", 0.99}, {"p999_ms", 0.999}};
		size_t n = run.nsamples;

		qsort(run.samples, n, sizeof(uint32_t), compare_samples);
		for (size_t i = 0; i < sizeof(quantiles) / sizeof(quantiles[0]); i++)
		{
			size_t k = (size_t) (quantiles[i].q * (n - 1) + 0.5);
			json_object_set_new(r, quantiles[i].name, json_real(run.samples[k] / 1000.0));
		}
		json_object_set_new(r, "max_ms", json_real(run.samples[n - 1] / 1000.0));
		json_object_set_new(r, "samples", json_integer(n));
	}
	/* Delivery rate over the window in which updates arrived. */
	window = (run.last_update_ns - run.first_update_ns) / 1e9;
	if (run.updates > 1 && window > 0)
		json_object_set_new(r, "updates_per_s", json_real(run.updates / window));
	/* Fan-out: from the earliest write to the last client being complete. */
	if (run.done_mono && run.first_stamp_ns && run.last_update_ns)
	{
		double span = (run.last_update_ns - run.first_stamp_ns) / 1e9;

		json_object_set_new(r, "write_to_all_done_s", json_real(span));
		if (span > 0)
			json_object_set_new(r, "delivered_per_s", json_real(run.updates / span));
	}
	{
		struct rusage ru;

		/* its own CPU, for a driver that can no longer read it once it exits */
		if (getrusage(RUSAGE_SELF, &ru) == 0)
			json_object_set_new(r, "cpu_s",
			                    json_real(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
			                              (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6));
	}
	if (run.phase == 2)
	{
		json_object_set_new(
		    r, "reconnect_s",
		    json_real(run.ready_mono ? (run.ready_mono - run.phase_mono) / 1e9 : -1));
		json_object_set_new(r, "catchup_s",
		                    json_real(run.done_mono ? (end - run.phase_mono) / 1e9 : -1));
	}
	{
		char *text = json_dumps(r, JSON_COMPACT | JSON_REAL_PRECISION(6));

		printf("RESULT %s\n", text);
		fflush(stdout);
		free(text);
	}
	json_decref(r);
}

/* Begins the reconnect phase of catch-up: every client again, with since. */
static void
start_reconnect(void)
{
	run.phase = 2;
	run.phase_mono = now_mono_ns();
	run.ready_mono = 0;
	run.done_mono = 0;
	run.nready = 0;
	run.nfailed = 0;
	run.ndone = 0;
	run.updates = 0;
	run.nsamples = 0;
	run.first_stamp_ns = run.first_update_ns = run.last_update_ns = 0;
	for (int i = 0; i < run.nclients; i++)
	{
		client *c = &run.clients[i];

		c->state = CLIENT_PENDING;
		c->attempts = 0;
		c->updates = 0;
		c->resyncs = 0;
		c->caught_up = false;
		c->want_close = false;
	}
	run.next_pending = 0;
}

/*
 * Runs every few milliseconds: starts pending handshakes up to the
 * concurrency limit, acts on signals and decides when the run is over.
 */
static void
service_tick(lws_sorted_usec_list_t *sul)
{
	int64_t now = now_mono_ns();
	double since_ready = run.ready_mono ? (now - run.ready_mono) / 1e9 : 0;
	static int64_t last_debug;

	if (run.debug && now - last_debug > 500000000)
	{
		last_debug = now;
		fprintf(stderr, "tick %.3f ready %d inflight %d\n", (now - run.start_mono) / 1e9,
		        run.nready, run.inflight);
	}

	while (run.inflight < run.concurrency && run.next_pending < run.nclients)
	{
		client *c = &run.clients[run.next_pending++];

		if (c->state == CLIENT_PENDING)
			client_connect(c);
	}
	if (got_stop)
		run.finished = true;
	/* A hard bound on the whole run, however the phases went. */
	if ((now - run.start_mono) / 1e9 > run.duration * 3 + 120)
		run.finished = true;
	if (run.ready_mono && since_ready > run.duration)
		run.finished = true;
	if (run.ready_mono && run.expect && run.done_mono &&
	    (run.mode == MODE_FANOUT || run.phase == 2))
		run.finished = true;
	if (run.mode == MODE_CATCHUP && run.phase == 0 && run.ready_mono)
	{
		run.phase = 1;
		close_all();
	}
	if (run.mode == MODE_CATCHUP && run.phase == 1)
	{
		if (run.nclosed >= run.nclients - run.nfailed && run.inflight == 0)
		{
			int with_cursor = 0;

			for (int i = 0; i < run.nclients; i++)
				with_cursor += run.clients[i].cursor != NULL;
			printf("DISCONNECTED {\"with_cursor\":%d}\n", with_cursor);
			fflush(stdout);
			run.phase = 3; /* waiting for SIGUSR1 */
			run.ready_mono = 0;
			run.phase_mono = now;
		}
	}
	if (run.mode == MODE_CATCHUP && run.phase == 3)
	{
		if (got_go)
			start_reconnect();
		else if ((now - run.phase_mono) / 1e9 > run.duration + 60)
			run.finished = true;
	}
	/* Always again: lws_service() returns only after some event. */
	if (run.context)
		lws_sul_schedule(run.context, 0, &run.tick, service_tick, SERVICE_TICK_USEC);
}

/* Parses the command line into run. */
static void
parse_options(int argc, char **argv)
{
	static const struct option options[] = {{"url", required_argument, NULL, 'u'},
	                                        {"token-file", required_argument, NULL, 't'},
	                                        {"clients", required_argument, NULL, 'n'},
	                                        {"patients", required_argument, NULL, 'p'},
	                                        {"patient-prefix", required_argument, NULL, 'x'},
	                                        {"mode", required_argument, NULL, 'm'},
	                                        {"duration", required_argument, NULL, 'd'},
	                                        {"expect", required_argument, NULL, 'e'},
	                                        {"concurrency", required_argument, NULL, 'c'},
	                                        {"retries", required_argument, NULL, 'r'},
	                                        {"event-loop", required_argument, NULL, 'l'},
	                                        {"transport", required_argument, NULL, 'T'},
	                                        {"bind-from", required_argument, NULL, 'b'},
	                                        {"warmup", no_argument, NULL, 'w'},
	                                        {"subscription-prefix", required_argument, NULL, 's'},
	                                        {"help", no_argument, NULL, 'h'},
	                                        {NULL, 0, NULL, 0}};
	const char *mode_name = "latency";
	int opt;

	run.nclients = 1000;
	run.npatients = 100;
	run.patient_prefix = "bench-";
	run.subscription_prefix = "s";
	run.duration = 60;
	run.concurrency = 200;
	run.retries = 3;
	run.token = getenv("LOADGEN_TOKEN");
	run.debug = getenv("LOADGEN_DEBUG") != NULL;
	while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1)
	{
		switch (opt)
		{
			case 'u':
				run.url = optarg;
				break;
			case 't':
				run.token = read_token_file(optarg);
				break;
			case 'n':
				run.nclients = atoi(optarg);
				break;
			case 'p':
				run.npatients = atoi(optarg);
				break;
			case 'x':
				run.patient_prefix = optarg;
				break;
			case 'm':
				mode_name = optarg;
				break;
			case 'd':
				run.duration = atof(optarg);
				break;
			case 'e':
				run.expect = (uint32_t) strtoul(optarg, NULL, 10);
				break;
			case 'c':
				run.concurrency = atoi(optarg);
				break;
			case 'r':
				run.retries = atoi(optarg);
				break;
			case 'l':
				if (strcmp(optarg, "poll") != 0 && strcmp(optarg, "epoll") != 0)
				{
					fprintf(stderr, "loadgen: --event-loop is epoll or poll\n");
					exit(2);
				}
				run.use_poll = strcmp(optarg, "poll") == 0;
				break;
			case 'T':
				if (strcmp(optarg, "raw") != 0 && strcmp(optarg, "lws") != 0)
				{
					fprintf(stderr, "loadgen: --transport is raw or lws\n");
					exit(2);
				}
				run.use_lws = strcmp(optarg, "lws") == 0;
				break;
			case 'w':
				run.warmup = true;
				break;
			case 's':
				run.subscription_prefix = optarg;
				break;
			case 'b':
			{
				struct in_addr a;

				if (inet_pton(AF_INET, optarg, &a) != 1)
				{
					fprintf(stderr, "loadgen: --bind-from takes an IPv4 address\n");
					exit(2);
				}
				run.bind_source = true;
				run.source_addr = ntohl(a.s_addr);
				run.source_port = SOURCE_PORT_FIRST;
				break;
			}
			case 'h':
				usage(stdout);
				exit(0);
			default:
				usage(stderr);
				exit(2);
		}
	}
	if (strcmp(mode_name, "latency") == 0)
		run.mode = MODE_LATENCY;
	else if (strcmp(mode_name, "fanout") == 0)
		run.mode = MODE_FANOUT;
	else if (strcmp(mode_name, "idle") == 0)
		run.mode = MODE_IDLE;
	else if (strcmp(mode_name, "catchup") == 0)
		run.mode = MODE_CATCHUP;
	else
	{
		fprintf(stderr, "loadgen: unknown mode \"%s\"\n", mode_name);
		exit(2);
	}
	if (!run.url || !parse_url(run.url))
	{
		fprintf(stderr, "loadgen: --url ws://HOST:PORT/PATH is required\n");
		exit(2);
	}
	if (run.nclients <= 0 || run.npatients <= 0 || run.concurrency <= 0 || run.duration <= 0)
	{
		fprintf(stderr, "loadgen: --clients, --patients, --concurrency and --duration must be "
		                "positive\n");
		exit(2);
	}
	if ((run.mode == MODE_FANOUT || run.mode == MODE_CATCHUP) && run.expect == 0)
	{
		fprintf(stderr, "loadgen: --mode %s needs --expect\n", mode_name);
		exit(2);
	}
	run.subscribe = run.mode != MODE_IDLE;
}

int
main(int argc, char **argv)
{
	struct lws_context_creation_info info;

	parse_options(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	signal(SIGINT, on_stop_signal);
	signal(SIGTERM, on_stop_signal);
	signal(SIGUSR1, on_go_signal);
	lws_set_log_level(LLL_ERR, NULL);

	run.clients = calloc(run.nclients, sizeof(client));
	if (!run.clients)
	{
		fprintf(stderr, "loadgen: out of memory\n");
		return 1;
	}
	for (int i = 0; i < run.nclients; i++)
	{
		run.clients[i].index = i;
		run.clients[i].fd = -1;
	}
	if (run.tls)
		run.use_lws = true; /* the raw transport has no TLS */
	if (run.use_lws && run.bind_source)
	{
		fprintf(stderr, "loadgen: --bind-from is for the raw transport only: ignored\n");
		run.bind_source = false;
	}
	if (!run.use_lws)
	{
		struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *found = NULL;
		char port[16];

		snprintf(port, sizeof(port), "%d", run.port);
		if (getaddrinfo(run.host, port, &hints, &found) != 0 || !found)
		{
			fprintf(stderr, "loadgen: cannot resolve %s\n", run.host);
			return 1;
		}
		memcpy(&run.addr, found->ai_addr, found->ai_addrlen);
		run.addrlen = found->ai_addrlen;
		freeaddrinfo(found);
		run.epfd = epoll_create1(EPOLL_CLOEXEC);
		run.start_mono = now_mono_ns();
		raw_run();
		print_result();
		fflush(NULL);
		_exit(run.nready > 0 ? 0 : 1);
	}

	memset(&info, 0, sizeof(info));
	info.port = CONTEXT_PORT_NO_LISTEN;
	info.protocols = protocols;
	info.fd_limit_per_thread = (unsigned) run.nclients + 64;
	info.options = run.tls ? LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT : 0;
	if (!run.use_poll && (run.loop = ev_loop_new(EVBACKEND_EPOLL | EVFLAG_NOENV)))
	{
		static void *foreign_loops[1];

		foreign_loops[0] = run.loop;
		info.foreign_loops = foreign_loops;
		info.options |= LWS_SERVER_OPTION_LIBEV;
		run.context = lws_create_context(&info);
		if (!run.context)
		{
			fprintf(stderr, "loadgen: no epoll loop (lws's libev plugin, Debian package "
			                "libwebsockets-evlib-ev, missing?): using poll()\n");
			ev_loop_destroy(run.loop);
			run.loop = NULL;
			info.foreign_loops = NULL;
			info.options &= ~(uint64_t) LWS_SERVER_OPTION_LIBEV;
		}
	}
	if (!run.context)
		run.context = lws_create_context(&info);
	if (!run.context)
	{
		fprintf(stderr, "loadgen: cannot create the lws context (ulimit -n too low?)\n");
		return 1;
	}
	run.start_mono = now_mono_ns();
	lws_sul_schedule(run.context, 0, &run.tick, service_tick, 1);
	/* lws arms its libev timer after socket events: a first one for the tick */
	lws_cancel_service(run.context);
	while (!run.finished)
	{
		if (run.loop)
			ev_run(run.loop, EVRUN_ONCE);
		else if (lws_service(run.context, 0) < 0)
			break;
	}
	print_result();
	/*
	 * No lws_context_destroy(): it closes thousands of connections one
	 * handshake at a time, for many seconds. The kernel closes them at once.
	 */
	fflush(NULL);
	_exit(run.nready > 0 ? 0 : 1);
}
