"""linglo.cpu_allocator: after reuse_freed_memory(), freeing and reallocating a large tensor stops page-faulting."""
import subprocess
import sys
import textwrap

import pytest

from linglo.cpu_allocator import allocator_state, reuse_freed_memory

# Run in a fresh process: the setting is process-wide and cannot be undone, and this test needs the default first.
SCRIPT = textwrap.dedent("""
    import resource, statistics, torch
    from linglo.cpu_allocator import allocator_state, reuse_freed_memory

    def faults_per_cycle():
        # median over cycles: after the switch the heap may take a few rounds to settle on the block
        faults = []
        for _ in range(9):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            torch.ones(2 ** 24)                   # 64 MiB, above glibc's largest dynamic mmap threshold (32 MiB):
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)   # allocate, touch, free
        return statistics.median(faults)

    system = faults_per_cycle()
    state = allocator_state()
    ok = reuse_freed_memory()
    print(state, ok, allocator_state(), system, faults_per_cycle())
""")


def test_reuse_stops_page_faulting_large_blocks_again():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout.split()
    before, ok, after, system, reused = out[0], out[1] == "True", out[2], float(out[3]), float(out[4])
    if not ok:
        pytest.skip("this C library has no glibc mallopt")
    assert (before, after) == ("system", "reuse")
    pages = 2 ** 24 * 4 / 4096
    assert system > 0.5 * pages            # the default maps 64 MiB afresh every time: one fault per page
    assert reused < 0.05 * pages           # reuse: the freed block comes back from the heap, already mapped


def test_state_is_reported_and_setting_twice_is_harmless():
    first = reuse_freed_memory()
    assert reuse_freed_memory() == first
    assert allocator_state() == ("reuse" if first else "system")
