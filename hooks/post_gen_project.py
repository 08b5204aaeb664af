"""Remove the parts of the generated project that do not apply to the answers."""

from pathlib import Path

METRIC = "{{ cookiecutter.metric }}"
PACKAGE = "{{ cookiecutter.package_name }}"

if __name__ == "__main__":
    if METRIC != "custom":
        # The custom metric example only makes sense when the config points to it.
        Path("src", PACKAGE, "metrics.py").unlink()
        Path("tests", "test_metric.py").unlink()
