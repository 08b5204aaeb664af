"""What a team reads: the experiment ledger (:mod:`~medalist.reporting.ledger`), its table
(``medalist ledger``, :mod:`~medalist.reporting.ledger_view`) and the HTML report
(``medalist report``, :mod:`~medalist.reporting.report`)."""
