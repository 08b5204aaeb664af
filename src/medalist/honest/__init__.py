"""Tools that keep the CV honest: the leak alarm (``medalist sanity``, :mod:`.sanity`) and seeds
as a distribution (``train.seeds``, :mod:`.seeds`)."""
