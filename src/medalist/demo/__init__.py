"""The built-in demo competitions (``medalist demo``), from data that ships offline: handwritten
digits as images (:mod:`~medalist.demo.digits`) and library docstrings as text
(:mod:`~medalist.demo.text`)."""
