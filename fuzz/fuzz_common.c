/*
 * fuzz_common.c
 *	  Helpers of the fuzz targets (fuzz.h).
 */
#define _GNU_SOURCE
#include "fuzz.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

char *
fuzz_strndup(const uint8_t *data, size_t size)
{
	char *copy = malloc(size + 1);

	if (copy == NULL)
		abort();
	if (size > 0)
		memcpy(copy, data, size);
	copy[size] = '\0';
	return copy;
}

const char *
fuzz_file(const uint8_t *data, size_t size)
{
	static int fd = -1;
	static char path[64];

	if (fd < 0)
	{
		fd = memfd_create("fuzz-input", 0);
		if (fd < 0)
		{
			perror("memfd_create");
			abort();
		}
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	}
	if (ftruncate(fd, 0) != 0 || (size > 0 && pwrite(fd, data, size, 0) != (ssize_t) size))
	{
		perror("fuzz input file");
		abort();
	}
	return path;
}

void
fuzz_fail(const char *what)
{
	fprintf(stderr, "fuzz: property violated: %s\n", what);
	abort();
}
