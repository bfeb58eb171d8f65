# Lab-notebook book: `make book` executes every chapter (papermill) and builds the HTML.
PYTHON ?= python
PROFILE ?= smoke
DEVICE ?= auto
BUILD_ARGS ?=

.PHONY: book lab test clean

book:  ## execute the chapters with PROFILE/DEVICE and build _build/html
	$(PYTHON) scripts/build_book.py --profile $(PROFILE) --device $(DEVICE) $(BUILD_ARGS)

lab:  ## open the notebooks in JupyterLab
	jupyter lab book/

test:  ## the test suite (add PYTEST_ARGS="-m 'not book'" to skip the book build)
	$(PYTHON) -m pytest $(PYTEST_ARGS)

clean:  ## remove the built book (run records in runs/ are kept)
	rm -rf _build
