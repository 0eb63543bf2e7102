# One entry point for people and CI.  Everything installs itself into .cache/ (git-ignored).
PY := .venv/bin/python
STAMP := .cache/bootstrap.stamp

.PHONY: up down reset status mail test test-fast check fmt bench bench-intake bench-tally bench-notify bench-confirmation bench-overload demo reconcile rebuild bootstrap widget test-widget

$(STAMP): pyproject.toml uv.lock scripts/bootstrap
	@bash scripts/bootstrap
	@mkdir -p .cache && touch $(STAMP)

bootstrap: $(STAMP)

## up: start Kafka, Postgres, the mail sink, Prometheus and the three services; wait for /readyz
up: $(STAMP) widget
	@$(PY) -m devstack up

## down: stop everything `make up` started (data kept)
down: $(STAMP)
	@$(PY) -m devstack down

## reset: stop everything and delete the local data
reset: $(STAMP)
	@$(PY) -m devstack reset

status: $(STAMP)
	@$(PY) -m devstack status

## mail: the latest messages in the local mail sink
mail: $(STAMP)
	@$(PY) -m devstack mail

## test: the whole suite against a real Kafka and Postgres (see tests/conftest.py for where they come from)
test: $(STAMP) test-widget
	@status=0; $(PY) -m pytest $(PYTEST_ARGS) || status=$$?; \
	if [ -z "$$CLAMEUR_TEST_KEEP_STACK" ]; then $(PY) -m devstack down --profile test >/dev/null || true; \
	  $(PY) -m devstack down --profile secure >/dev/null || true; fi; \
	exit $$status

## check: lint, format and types
check: $(STAMP)
	@.venv/bin/ruff check .
	@.venv/bin/ruff format --check .
	@.venv/bin/mypy .

fmt: $(STAMP)
	@.venv/bin/ruff format .
	@.venv/bin/ruff check --fix .

## reconcile: recompute every counter from the stored signatures (FIX=1 repairs drift)
reconcile: $(STAMP)
	@$(PY) -m tally.reconcile $(if $(FIX),--fix,)

## rebuild: replay every topic from offset 0 into an empty database (tally, notify sending nothing); counts next to the live ones
rebuild: $(STAMP)
	@$(PY) -m devstack rebuild $(if $(KEEP),--keep,)

## demo: real cases, a surge, milestones, a victory, emails (on a running `make up`)
demo: $(STAMP)
	@$(PY) -m bench.demo

## bench: the whole pipeline under load, results in docs/benchmarks.md
bench: $(STAMP)
	@$(PY) -m bench.pipeline

# The intake before issue 14 (personal data minimal), measured beside this one in the same run.
INTAKE_BASELINE ?= 46d361b
bench-intake: $(STAMP)
	@$(PY) -m bench.intake --baseline-rev $(INTAKE_BASELINE)

bench-tally: $(STAMP)
	@$(PY) -m bench.tally

bench-notify: $(STAMP)
	@$(PY) -m bench.notify

# Issue 13: 1,000 signatures/s for 5 minutes that supporters confirm, during a 100,000-recipient mailing.
bench-confirmation: $(STAMP)
	@$(PY) -m bench.confirmation

## bench-overload: intake at 1x, 2x, 4x its capacity, open loop (vegeta), admission bounds on and off
bench-overload: $(STAMP)
	@./scripts/install-vegeta
	@$(PY) -m bench.overload

## widget: build the petition widget intake serves (widget/dist/widget.js) with the locked npm toolchain
widget: $(STAMP)
	@bash scripts/build-widget

## test-widget: build the widget, type-check it and run its unit tests (node --test)
test-widget: $(STAMP)
	@bash scripts/build-widget --test
