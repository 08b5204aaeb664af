"""Tools that keep the CV honest: the leak alarm (``medalist sanity``, :mod:`.sanity`), the
train-versus-test classifier (``medalist adversarial``, :mod:`.adversarial`), seeds as a
distribution (``train.seeds``, :mod:`.seeds`) and sweeps that admit their optimism (``medalist
sweep``, :mod:`.sweep`)."""
