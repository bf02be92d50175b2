# crackcls: common entry points. Every target uses the project's virtual environment.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)

MODEL  ?= models/model.keras
DATA   ?=
PORT   ?= 5000
SERVE_PORT ?= 5001
TRACKING_URI := $(or $(MLFLOW_TRACKING_URI),sqlite:///$(CURDIR)/mlflow.db)

# The offline demo: the full DVC pipeline on the bundled Mendeley and SDNET2018 samples, the
# compact backbone trained from scratch (no ImageNet download) at 96 px.
DEMO_EPOCHS ?= 12
DEMO_PARAMS := -S 'data.sources=[sample,sdnet2018-sample]' -S model.backbone=compact_cnn -S model.weights=none \
               -S model.image_size=96 -S train.epochs=$(DEMO_EPOCHS) -S train.patience=4 -S train.batch_size=32

IN     ?=
SCAN   ?=
APP_PORT  ?= 8080
APP_MODEL ?=
RUNTIME ?=
MASTER ?=
SURVEY_OUT ?= reports/survey

# The team tracking server (make server): runs and registry, artifact store, users and permissions.
BACKEND   ?= sqlite:///$(CURDIR)/mlflow.db
ARTIFACTS ?= $(CURDIR)/mlartifacts
AUTH_DB   ?= sqlite:///$(CURDIR)/basic_auth.db
HOST      ?= 127.0.0.1
WORKERS   ?= 4

.PHONY: help install test test-fast lint docs docs-serve screenshots repro demo evaluate promote predict scan survey app export serve server bench ui

help:
	@echo "make install     create $(VENV) and install crackcls with pinned dependencies (GPU=1: CUDA libraries too)"
	@echo "make test        run the test suite"
	@echo "make lint        check the import layers (lower wings never import higher ones)"
	@echo "make docs        build the documentation site into site/ (strict: a broken link fails)"
	@echo "make docs-serve  the documentation site on http://127.0.0.1:8000"
	@echo "make screenshots retake docs/desk.jpg: the desk in headless Chromium serving the champion (after make demo; APP_MODEL=)"
	@echo "make repro       run the DVC pipeline (dvc repro) on the full Mendeley set"
	@echo "make demo        run the pipeline offline on the bundled sample, then promote"
	@echo "make evaluate    evaluate MODEL=<path|models:/name@alias> on DATA=<folder> (default: test split); SCAN=1: DATA holds whole photos"
	@echo "make promote     move @champion to @challenger if it is better"
	@echo "make predict     classify IN=<files|folders|globs> with MODEL (default: the registry champion)"
	@echo "make scan        scan whole photos IN=<files|folders|globs> tile by tile; overlays in reports/scan/"
	@echo "make survey      scan a survey IN=<folder|glob|table.csv|table.parquet> on Spark (MASTER=, default local[*]), resumable; results in reports/survey/"
	@echo "make app         the inspector's desk on http://127.0.0.1:$(APP_PORT): scan, review, correct, report (APP_MODEL=, AUTH_DB= for logins)"
	@echo "make export      MODEL (default: the registry champion) as SavedModel, ONNX, LiteRT float32 and int8 in models/export/, parity-checked; RUNTIME=onnx for predict and scan"
	@echo "make serve       serve models:/crackcls@champion over HTTP on 127.0.0.1:$(SERVE_PORT)"
	@echo "make server      team MLflow server with logins on $(HOST):$(PORT) (BACKEND=, ARTIFACTS=, AUTH_DB=)"
	@echo "make bench       every benchmark part (bench/<part>.py --help) into bench/results/bench.json (docs/performance.md)"
	@echo "make ui          MLflow UI on http://127.0.0.1:$(PORT) (prints the link to the training runs)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# GPU=1 adds TensorFlow's CUDA libraries (Linux, NVIDIA driver installed).
GPU    ?=
comma  := ,
EXTRAS := dev,server,docs,survey$(if $(GPU),$(comma)gpu)

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	@$(BIN)/crackcls --help >/dev/null && echo "installed: $(BIN)/crackcls"

# Two test processes, each test file whole in one of them (its module fixtures are built once).
TEST_WORKERS ?= 2

test:
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

test-fast:
	$(BIN)/python -m pytest -m "not e2e"

lint:
	$(BIN)/lint-imports

docs:
	$(BIN)/mkdocs build --strict --site-dir site

docs-serve:
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

screenshots:
	$(BIN)/python docs/screenshots.py $(if $(APP_MODEL),--model "$(APP_MODEL)")

repro:
	dvc repro

demo:
	dvc exp run $(DEMO_PARAMS)
	crackcls promote

evaluate:
	crackcls evaluate --model "$(MODEL)" $(if $(DATA),--data "$(DATA)") $(if $(SCAN),--scan)

promote:
	crackcls promote

predict:
	crackcls predict $(IN) $(if $(filter-out models/model.keras,$(MODEL)),--model "$(MODEL)") $(if $(RUNTIME),--runtime $(RUNTIME))

scan:
	crackcls scan $(IN) --overlay reports/scan $(if $(filter-out models/model.keras,$(MODEL)),--model "$(MODEL)") $(if $(RUNTIME),--runtime $(RUNTIME))

# MASTER= names a Spark cluster (spark://host:7077, yarn); empty: local[*]. A rerun skips the photos already done.
survey:
	crackcls survey $(IN) --out $(SURVEY_OUT) $(if $(MASTER),--master "$(MASTER)") $(if $(filter-out models/model.keras,$(MODEL)),--model "$(MODEL)") $(if $(RUNTIME),--runtime $(RUNTIME))

# Off loopback (HOST=0.0.0.0) the desk needs logins: AUTH_DB, the team server's users.
app:
	crackcls app --port $(APP_PORT) $(if $(APP_MODEL),--model "$(APP_MODEL)") $(if $(RUNTIME),--runtime $(RUNTIME)) \
	  $(if $(filter-out 127.0.0.1,$(HOST)),--host $(HOST) --auth-db "$(AUTH_DB)")

export:
	crackcls export $(if $(filter-out models/model.keras,$(MODEL)),--model "$(MODEL)")

serve:
	MLFLOW_TRACKING_URI="$(TRACKING_URI)" mlflow models serve -m "models:/crackcls@champion" \
	  --env-manager local --host 127.0.0.1 --port $(SERVE_PORT)

server:
	python -m crackcls.tracking.teamserver --backend "$(BACKEND)" --artifacts "$(ARTIFACTS)" --auth-db "$(AUTH_DB)" \
	  --host $(HOST) --port $(PORT) --workers $(WORKERS)

bench:
	$(BIN)/python bench/run.py

ui:
	@echo "MLflow UI, training runs: $$(MLFLOW_TRACKING_URI="$(TRACKING_URI)" crackcls ui-link --base http://127.0.0.1:$(PORT))"
	mlflow ui --backend-store-uri "$(TRACKING_URI)" --default-artifact-root "$(CURDIR)/mlruns" \
	  --host 127.0.0.1 --port $(PORT)
