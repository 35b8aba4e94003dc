"""openjepa.cpu_allocator: freed memory stays in the process and is reused without page faults."""

import platform
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent(
    """
    import resource, sys, torch
    from openjepa.cpu_allocator import keep_freed_memory

    def faults_of_a_fresh_block():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = torch.ones(48 << 20, dtype=torch.uint8)  # 48 MiB, above glibc's largest mmap threshold
        del block
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    torch.set_num_threads(1)
    if sys.argv[1] == "keep":
        assert keep_freed_memory() and keep_freed_memory()  # idempotent
    for _ in range(3):  # warm up: the first blocks grow the heap (and memalign may skip a block that fits exactly)
        faults_of_a_fresh_block()
    print(sum(faults_of_a_fresh_block() for _ in range(3)))
    """
)


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def test_freed_blocks_are_reused_without_page_faults():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        from openjepa.cpu_allocator import keep_freed_memory

        assert keep_freed_memory() is False  # nothing to tune: the call says so
        return
    pages = (48 << 20) // 4096
    assert faults("default") > 3 * pages // 2  # glibc maps a block this large afresh every time
    assert faults("keep") < pages // 20  # later blocks reuse the pages of earlier ones
