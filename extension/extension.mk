# PGXS build of the fhir_notify extension. Paths are relative to the top of
# the repository: run it as `make -f extension/extension.mk` from there (the
# top-level Makefile does).

EXTENSION = fhir_notify
EXTVERSION = 0.2.0

MODULE_big = fhir_notify
OBJS = $(patsubst %.c,%.o,$(sort $(wildcard extension/*.c)))
DATA = $(sort $(wildcard extension/fhir_notify--*.sql))
PGFILEDESC = "fhir_notify - patient-scoped change streams for FHIR data"
# zlib inflates the gzip bodies of the hapi layout (res_encoding JSONC).
SHLIB_LINK += -lz

PG_CFLAGS += -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers
ifdef CI
PG_CFLAGS += -Werror
endif

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS takes the directory of the first makefile as the source directory;
# ours is the top of the repository.
srcdir := .
VPATH :=
