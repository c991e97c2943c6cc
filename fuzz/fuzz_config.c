/*
 * fuzz_config.c
 *	  The config-file reader (bridge/config.c, --config FILE of `name =
 *	  value` lines), through config_load and config_reload as main.c calls
 *	  them. Properties: no crash, no leak; a file that loads also reloads.
 */
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "fuzz.h"

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	/* Only the file: settings from the environment would hide its lines. */
	extern char **environ;

	for (char **e = environ; *e;)
	{
		if (strncmp(*e, "FHIR_NOTIFY_", 12) == 0)
		{
			char name[256];
			size_t len = strcspn(*e, "=");

			if (len >= sizeof(name))
				len = sizeof(name) - 1;
			memcpy(name, *e, len);
			name[len] = '\0';
			unsetenv(name);
		}
		else
			e++;
	}
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *argv[] = {"fhir-notify-bridge", "--config", (char *) fuzz_file(data, size), NULL};
	bridge_settings settings;

	if (config_load(3, argv, &settings) == CONFIG_OK)
	{
		FUZZ_CHECK(settings.listen != NULL && settings.log_level != NULL);
		FUZZ_CHECK(settings.max_frame_size >= 128 && settings.max_subscriptions >= 1);
		FUZZ_CHECK(config_reload(3, argv, &settings));
		config_free(&settings);
	}
	return 0;
}
