/*
 * json_text.c
 *	  Resources kept as text (HAPI's res_text_vc, Medplum's content) made
 *	  jsonb for the capture trigger, in one pass and without raising an
 *	  error on bad content; gzip bodies (HAPI's JSONC) inflated with zlib.
 *
 * jsonb_in raises an error on malformed input, and the capture trigger must
 * never fail a clinical write because of what a resource contains. The
 * parser here is PostgreSQL's own JSON parser (pg_parse_json, which returns
 * its errors) with semantic actions that build the jsonb value as jsonb_in
 * does; content it cannot take returns false and a reason instead. While
 * building, it can put the id and meta.versionId / meta.lastUpdated that a
 * layout keeps in columns into the resource (HAPI stores the JSON without
 * them), so the text is parsed once and the jsonb formed once.
 */
#include "postgres.h"

#include <zlib.h>

#include "common/jsonapi.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "json_text.h"

/* Bodies larger than this once inflated are not read (a gzip bomb). */
#define MAX_INFLATED (64 * 1024 * 1024)

/*
 * The semantic actions of PostgreSQL 16 and later return an error code;
 * those of 15 return nothing.
 */
#if PG_VERSION_NUM >= 160000
#define SEM_RESULT JsonParseErrorType
#define SEM_OK     return JSON_SUCCESS
#else
#define SEM_RESULT void
#define SEM_OK     return
#endif

typedef struct ParseState
{
	JsonbParseState *state;
	JsonbValue *result;
	const JsonInject *inject;
	int depth;           /* objects and arrays open */
	bool in_root_meta;   /* the object being built is the root's "meta" */
	bool meta_seen;      /* the root had a "meta" object */
	bool root_key_meta;  /* the last key of the root was "meta" */
	const char *problem; /* a value jsonb cannot hold */
	int meta_depth;      /* depth of the root's meta object */
} ParseState;

static void
push_string(JsonbParseState **state, JsonbIteratorToken token, const char *s)
{
	JsonbValue v;

	v.type = jbvString;
	v.val.string.val = (char *) s;
	v.val.string.len = strlen(s);
	pushJsonbValue(state, token, &v);
}

static void
push_member(JsonbParseState **state, const char *key, const char *value)
{
	push_string(state, WJB_KEY, key);
	push_string(state, WJB_VALUE, value);
}

/* Adds versionId and lastUpdated to the meta object being built. */
static void
push_meta_members(ParseState *ps)
{
	if (ps->inject->version_id != NULL)
		push_member(&ps->state, "versionId", ps->inject->version_id);
	if (ps->inject->last_updated != NULL)
		push_member(&ps->state, "lastUpdated", ps->inject->last_updated);
}

static SEM_RESULT
sem_object_start(void *arg)
{
	ParseState *ps = arg;

	ps->depth++;
	if (ps->inject != NULL && ps->depth == 2 && ps->root_key_meta)
	{
		ps->in_root_meta = true;
		ps->meta_seen = true;
		ps->meta_depth = ps->depth;
	}
	ps->result = pushJsonbValue(&ps->state, WJB_BEGIN_OBJECT, NULL);
	SEM_OK;
}

static SEM_RESULT
sem_object_end(void *arg)
{
	ParseState *ps = arg;

	if (ps->inject != NULL)
	{
		/* Later members win over earlier ones of the same key in jsonb. */
		if (ps->in_root_meta && ps->depth == ps->meta_depth)
		{
			push_meta_members(ps);
			ps->in_root_meta = false;
		}
		else if (ps->depth == 1)
		{
			if (ps->inject->id != NULL)
				push_member(&ps->state, "id", ps->inject->id);
			if (!ps->meta_seen && (ps->inject->version_id || ps->inject->last_updated))
			{
				push_string(&ps->state, WJB_KEY, "meta");
				pushJsonbValue(&ps->state, WJB_BEGIN_OBJECT, NULL);
				push_meta_members(ps);
				pushJsonbValue(&ps->state, WJB_END_OBJECT, NULL);
			}
		}
	}
	ps->depth--;
	ps->result = pushJsonbValue(&ps->state, WJB_END_OBJECT, NULL);
	SEM_OK;
}

static SEM_RESULT
sem_array_start(void *arg)
{
	ParseState *ps = arg;

	ps->depth++;
	ps->result = pushJsonbValue(&ps->state, WJB_BEGIN_ARRAY, NULL);
	SEM_OK;
}

static SEM_RESULT
sem_array_end(void *arg)
{
	ParseState *ps = arg;

	ps->depth--;
	ps->result = pushJsonbValue(&ps->state, WJB_END_ARRAY, NULL);
	SEM_OK;
}

static SEM_RESULT
sem_object_field_start(void *arg, char *fname, bool isnull)
{
	ParseState *ps = arg;

	if (ps->depth == 1)
	{
		ps->root_key_meta = strcmp(fname, "meta") == 0;
		/* A "meta" that is no object is replaced by ours. */
		if (ps->root_key_meta && ps->meta_seen)
			ps->meta_seen = false;
	}
	push_string(&ps->state, WJB_KEY, fname);
	SEM_OK;
}

/*
 * Whether numeric_in takes a JSON number token without an error: its
 * exponent is limited to +-1000 and its digits to NUMERIC_MAX... (far more
 * than any resource has).
 */
static bool
number_fits(const char *token)
{
	const char *e = strpbrk(token, "eE");

	if (strlen(token) > 100000)
		return false;
	if (e != NULL)
	{
		long exponent = strtol(e + 1, NULL, 10);

		if (exponent > 1000 || exponent < -1000)
			return false;
	}
	return true;
}

static SEM_RESULT
sem_scalar(void *arg, char *token, JsonTokenType tokentype)
{
	ParseState *ps = arg;
	JsonbValue v;

	switch (tokentype)
	{
		case JSON_TOKEN_STRING:
			v.type = jbvString;
			v.val.string.len = strlen(token);
			v.val.string.val = token;
			break;
		case JSON_TOKEN_NUMBER:
			if (!number_fits(token))
			{
				ps->problem = "a number is out of range";
				v.type = jbvNull;
				break;
			}
			v.type = jbvNumeric;
			v.val.numeric = DatumGetNumeric(DirectFunctionCall3(numeric_in, CStringGetDatum(token),
			                                                    ObjectIdGetDatum(InvalidOid),
			                                                    Int32GetDatum(-1)));
			break;
		case JSON_TOKEN_TRUE:
			v.type = jbvBool;
			v.val.boolean = true;
			break;
		case JSON_TOKEN_FALSE:
			v.type = jbvBool;
			v.val.boolean = false;
			break;
		default:
			v.type = jbvNull;
			break;
	}

	if (ps->state == NULL)
	{
		/* A scalar document: jsonb keeps it as a one-element raw array. */
		JsonbValue array;

		array.type = jbvArray;
		array.val.array.rawScalar = true;
		array.val.array.nElems = 1;
		pushJsonbValue(&ps->state, WJB_BEGIN_ARRAY, &array);
		pushJsonbValue(&ps->state, WJB_ELEM, &v);
		ps->result = pushJsonbValue(&ps->state, WJB_END_ARRAY, NULL);
	}
	else if (ps->state->contVal.type == jbvArray)
		pushJsonbValue(&ps->state, WJB_ELEM, &v);
	else
		pushJsonbValue(&ps->state, WJB_VALUE, &v);
	SEM_OK;
}

/*
 * Parses len bytes of JSON text into a jsonb value in the current memory
 * context, with inject's members added to the root object when inject is
 * not NULL. Returns false with *problem set when the text is no JSON.
 */
bool
fhir_notify_json_parse(const char *text, int len, const JsonInject *inject, Jsonb **result,
                       const char **problem)
{
	JsonLexContext *lex;
	JsonSemAction sem;
	ParseState ps;
	JsonParseErrorType error;

	*result = NULL;
	*problem = NULL;
	memset(&ps, 0, sizeof(ps));
	ps.inject = inject;

	/* The lexer reads past no terminator but may look at input[len]. */
#if PG_VERSION_NUM >= 170000
	lex = makeJsonLexContextCstringLen(NULL, (char *) text, len, GetDatabaseEncoding(), true);
#else
	lex = makeJsonLexContextCstringLen((char *) text, len, GetDatabaseEncoding(), true);
#endif

	memset(&sem, 0, sizeof(sem));
	sem.semstate = &ps;
	sem.object_start = sem_object_start;
	sem.object_end = sem_object_end;
	sem.array_start = sem_array_start;
	sem.array_end = sem_array_end;
	sem.object_field_start = sem_object_field_start;
	sem.scalar = sem_scalar;

	error = pg_parse_json(lex, &sem);
	if (error != JSON_SUCCESS)
	{
		*problem = psprintf("the resource is not valid JSON: %s", json_errdetail(error, lex));
		return false;
	}
	if (ps.problem != NULL)
	{
		*problem = ps.problem;
		return false;
	}
	if (ps.result == NULL)
	{
		*problem = "the resource is empty";
		return false;
	}
	*result = JsonbValueToJsonb(ps.result);
	return true;
}

/*
 * Inflates gzip (or zlib) data into a NUL-terminated buffer in the current
 * memory context. Returns false with *problem set when the data is not
 * gzip, is truncated, or inflates to more than MAX_INFLATED bytes.
 */
bool
fhir_notify_gunzip(const char *data, size_t len, char **out, size_t *out_len, const char **problem)
{
	z_stream zs;
	size_t capacity = Max(len * 4, 1024);
	char *buffer;
	int rc;

	*out = NULL;
	*out_len = 0;
	memset(&zs, 0, sizeof(zs));
	/* 32 + MAX_WBITS: gzip or zlib header, detected. */
	if (inflateInit2(&zs, 32 + MAX_WBITS) != Z_OK)
	{
		*problem = "zlib cannot be initialised";
		return false;
	}
	buffer = palloc(capacity + 1);
	zs.next_in = (Bytef *) data;
	zs.avail_in = len;
	for (;;)
	{
		zs.next_out = (Bytef *) buffer + zs.total_out;
		zs.avail_out = capacity - zs.total_out;
		rc = inflate(&zs, Z_NO_FLUSH);
		if (rc == Z_STREAM_END)
			break;
		if (rc != Z_OK && rc != Z_BUF_ERROR)
		{
			*problem = "the compressed body is not gzip data";
			inflateEnd(&zs);
			return false;
		}
		if (zs.avail_out > 0)
		{
			/* No progress possible with output room left: the input ended early. */
			*problem = "the compressed body is truncated";
			inflateEnd(&zs);
			return false;
		}
		if (capacity >= MAX_INFLATED)
		{
			*problem = "the compressed body inflates to more than 64 MB";
			inflateEnd(&zs);
			return false;
		}
		capacity = Min(capacity * 2, (size_t) MAX_INFLATED);
		buffer = repalloc(buffer, capacity + 1);
	}
	*out_len = zs.total_out;
	buffer[*out_len] = '\0';
	inflateEnd(&zs);
	*out = buffer;
	return true;
}
