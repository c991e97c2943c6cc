/*
 * replay.c
 *	  A main() for the fuzz targets without libFuzzer (any C compiler):
 *	  runs the target once on every file named, or in a directory named,
 *	  on the command line, as `target -runs=0 DIR` does with libFuzzer.
 *	  Options (arguments starting with '-') are ignored.
 */
#include "fuzz.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int executed;

static void
run_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	unsigned char *data = NULL;
	size_t size = 0, cap = 0, n;

	if (f == NULL)
	{
		perror(path);
		exit(1);
	}
	do
	{
		if (size == cap)
		{
			cap = cap ? cap * 2 : 4096;
			data = realloc(data, cap);
			if (data == NULL)
				abort();
		}
		n = fread(data + size, 1, cap - size, f);
		size += n;
	} while (n > 0);
	fclose(f);
	LLVMFuzzerTestOneInput(data, size);
	free(data);
	executed++;
}

static int
by_name(const struct dirent **a, const struct dirent **b)
{
	return strcmp((*a)->d_name, (*b)->d_name);
}

int
main(int argc, char **argv)
{
	LLVMFuzzerInitialize(&argc, &argv);
	for (int i = 1; i < argc; i++)
	{
		struct stat st;

		if (argv[i][0] == '-')
			continue;
		if (stat(argv[i], &st) != 0)
		{
			perror(argv[i]);
			return 1;
		}
		if (S_ISDIR(st.st_mode))
		{
			struct dirent **names;
			int count = scandir(argv[i], &names, NULL, by_name);

			for (int j = 0; j < count; j++)
			{
				char path[4096];

				snprintf(path, sizeof(path), "%s/%s", argv[i], names[j]->d_name);
				if (stat(path, &st) == 0 && S_ISREG(st.st_mode))
					run_file(path);
				free(names[j]);
			}
			free(names);
		}
		else
			run_file(argv[i]);
	}
	printf("replay: %d inputs executed\n", executed);
	return 0;
}
