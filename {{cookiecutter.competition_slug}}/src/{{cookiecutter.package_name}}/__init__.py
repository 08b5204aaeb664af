"""Code specific to {{ cookiecutter.competition_name }}, referenced from configs by import path."""
