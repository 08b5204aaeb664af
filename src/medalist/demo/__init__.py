"""The built-in demo competitions (``medalist demo``), from data that ships offline: handwritten
digits as images (:mod:`~medalist.demo.digits`), library docstrings as text
(:mod:`~medalist.demo.text`) and breast tumour measurements as a table
(:mod:`~medalist.demo.tabular`)."""
