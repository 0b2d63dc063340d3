"""The allocator setting that lets training steps reuse freed memory instead of faulting in new pages."""

from __future__ import annotations

import resource
import threading

import pytest
import torch

from p2pfed.learn.allocator import keep_freed_memory


def faults_of_steps() -> int:
    """Minor page faults of 20 allocate-and-free cycles of a 64 MB tensor (a step's LM-head logits),
    run in a worker thread as the simulation runs training."""
    counted: list[int] = []

    def work() -> None:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(20):
            logits = torch.ones(320, 49_152)
            del logits
        counted.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return counted[0]


def test_after_the_setting_a_steps_temporaries_no_longer_fault_in_every_page():
    if not keep_freed_memory():
        pytest.skip("not glibc: mallopt is unavailable")
    pages = 320 * 49_152 * 4 // 4096  # one 64 MB tensor is ~15,000 pages
    faults_of_steps()  # the first cycle grows the heap once
    assert faults_of_steps() < pages  # without the setting: ~20 x pages (every cycle faults them again)
