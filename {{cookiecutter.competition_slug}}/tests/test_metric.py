"""The competition metric scores a perfect prediction above a poor one."""

import numpy as np

from {{ cookiecutter.package_name }}.metrics import competition_metric


def test_perfect_beats_poor():
    {%- if cookiecutter.task == 'regression' %}
    y = np.array([[0.0], [1.0], [2.0]], dtype=np.float32)
    perfect, poor = y.copy(), y + 1.0
    {%- elif cookiecutter.task == 'multilabel' %}
    y = np.array([[0, 1], [1, 0], [1, 1]], dtype=np.float32)
    perfect, poor = y.copy(), 1.0 - y
    {%- elif cookiecutter.task == 'binary' %}
    y = np.array([0, 1, 1])
    perfect, poor = y[:, None].astype(float), 1.0 - y[:, None]
    {%- else %}
    y = np.array([0, 1, 2])
    perfect, poor = np.eye(3), np.eye(3)[[1, 2, 0]]
    {%- endif %}
    assert competition_metric(y, perfect) > competition_metric(y, poor)
