"""Each chapter's computations, one module per notebook (ch05_optimizers.py for
05_optimizers.ipynb): free functions `f(ch, ...)` of a `book.Chapter` and its runs that return
tables, figures and the text values (facts) the page glues."""
