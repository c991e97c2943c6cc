/*
 * fuzz.h
 *	  What the fuzz targets share: the libFuzzer entry points, a
 *	  NUL-terminated copy of an input, and an in-memory file holding one.
 */
#ifndef FUZZ_FUZZ_H
#define FUZZ_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A malloc'd copy of data with a NUL after it (inner NULs stay). */
char *fuzz_strndup(const uint8_t *data, size_t size);

/*
 * Replaces the contents of an in-memory file with data and returns a path
 * that opens it ("/proc/self/fd/N"); the same file every time.
 */
const char *fuzz_file(const uint8_t *data, size_t size);

/* Stops the process with a message: a property of a parser does not hold. */
void fuzz_fail(const char *what) __attribute__((noreturn));

#define FUZZ_CHECK(cond)                                                                           \
	do                                                                                             \
	{                                                                                              \
		if (!(cond))                                                                               \
			fuzz_fail(#cond);                                                                      \
	} while (0)

#endif /* FUZZ_FUZZ_H */
