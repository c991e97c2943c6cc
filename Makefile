# fhir_notify: the top-level entry points.
#
#   make            build the extension and the bridge
#   make install    install both (the extension into PostgreSQL's directories)
#   make check      every test, on throwaway clusters (installs build deps first)
#   make installcheck  the SQL suites against an installed, running server
#   make demo       the live chart-review demo on a throwaway database
#   make bench      the benchmarks (BENCH_QUICK=1 for a short run)
#   make fuzz       fuzz the bridge's parsers, FUZZ_SECONDS (60) per target (fuzz/Makefile)
#   make format     clang-format every C file; make format-check verifies
#
# The extension itself is a PGXS module described in extension/extension.mk;
# it is driven from here so that `make check` can install the build
# dependencies before PGXS is first needed.

PG_CONFIG ?= pg_config
EXTENSION_MAKE = $(MAKE) --no-print-directory -f extension/extension.mk PG_CONFIG=$(PG_CONFIG)
BRIDGE_MAKE = $(MAKE) --no-print-directory -C bridge

C_SOURCES = $(wildcard extension/*.c extension/*.h bridge/*.c bridge/*.h bench/*.c bench/*.h \
	fuzz/*.c fuzz/*.h)

.PHONY: all extension bridge install uninstall check installcheck demo bench fuzz \
	format format-check clean deps

all: extension bridge

extension:
	$(EXTENSION_MAKE) all

bridge:
	$(BRIDGE_MAKE) all

install: all
	$(EXTENSION_MAKE) install
	$(BRIDGE_MAKE) install

uninstall:
	$(EXTENSION_MAKE) uninstall
	$(BRIDGE_MAKE) uninstall

deps:
	scripts/install-deps

# Every test. Never touches an installed cluster: tests run against a private
# copy of the PostgreSQL installation with this extension in it.
check: deps
	$(MAKE) all
	scripts/check

# The regression and isolation suites against the running server that PGHOST,
# PGPORT and PGUSER name, which has this build installed (see
# extension/extension.mk for what it needs). `make check` needs no server.
installcheck:
	$(EXTENSION_MAKE) installcheck

demo: deps
	$(MAKE) all
	demo/run

bench: deps
	$(MAKE) all
	bench/run

fuzz: deps
	$(MAKE) --no-print-directory -C fuzz run

format:
	clang-format -i $(C_SOURCES)

format-check:
	clang-format --dry-run --Werror $(C_SOURCES)

clean:
	$(EXTENSION_MAKE) clean
	$(BRIDGE_MAKE) clean
	$(MAKE) --no-print-directory -C fuzz clean
	rm -rf tmp_check results regression.diffs regression.out output_iso
