"""pytest setup for tests/: the hypothesis profile and a summary of the largest numeric differences seen.

Helpers for test modules live in tests/helpers.py (`from helpers import cached_model`): a conftest is
not importable by name when notebooks/ has one too.
"""

import torch
from helpers import LARGEST_DIFF
from hypothesis import HealthCheck, settings

# Tiny test models gain nothing from threads and lose a lot when the machine is shared
torch.set_num_threads(1)

settings.register_profile(
    "kvgpt", deadline=None, derandomize=True, max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("kvgpt")


def pytest_terminal_summary(terminalreporter):
    if LARGEST_DIFF:
        terminalreporter.section("largest differences seen")
        for name, diff in sorted(LARGEST_DIFF.items()):
            terminalreporter.write_line(f"{name}: {diff:.3g}")
