"""Paper numbers, aggregation of ledger rows and table rendering (markdown + LaTeX). Never imports torch."""
