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

# `make installcheck` runs the regression and isolation suites against an
# installed, running server (PGHOST, PGPORT, PGUSER as for psql; a superuser).
# That server must have this build installed and the settings in
# tests/regress.conf (shared_preload_libraries = 'fhir_notify',
# max_prepared_transactions > 0). It creates and drops the databases
# contrib_regression and isolation_regression, and roles named regress_*.
# `make check` (scripts/check) runs the same files on a throwaway cluster.
REGRESS = $(sort $(basename $(notdir $(wildcard sql/*.sql))))
REGRESS_OPTS = --inputdir=. --outputdir=.
ISOLATION = $(sort $(basename $(notdir $(wildcard specs/*.spec))))
ISOLATION_OPTS = --inputdir=.

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS takes the directory of the first makefile as the source directory;
# ours is the top of the repository.
srcdir := .
VPATH :=
