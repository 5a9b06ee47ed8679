import platform
import subprocess
import sys

import pytest

from ddpm_model.host_memory import user_chose_malloc

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Touches a 64 MiB buffer and frees it, 20 times (as a training step does with its activations):
# the minor page faults of the last 5. glibc needs a few rounds before its heap holds them.
LAST_BUFFERS_FAULTS = """
import resource, sys, torch
from ddpm_model.host_memory import keep_freed_host_memory
if sys.argv[1] == "keep":
    print(keep_freed_host_memory(), file=sys.stderr)
def faults_of_a_buffer():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffer = torch.ones(16 << 20)
    del buffer
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(sum([faults_of_a_buffer() for _ in range(20)][-5:]))
"""


def last_buffers_faults(mode: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    import os

    done = subprocess.run([sys.executable, "-c", LAST_BUFFERS_FAULTS, mode], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, check=True)
    return int(done.stdout.split()[-1]), done.stderr


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_a_freed_buffer_is_reused_without_page_faults():
    faults, said = last_buffers_faults("keep")
    assert "kept for reuse" in said
    assert faults < 1_000  # 5 x 64 MiB of fresh pages would be ~82,000 faults
    untouched, _ = last_buffers_faults("system")
    assert untouched > 50_000  # glibc's default hands a buffer this large back to the kernel


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_the_users_own_malloc_settings_are_left_alone():
    faults, said = last_buffers_faults("keep", {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)})
    assert "left as MALLOC_MMAP_THRESHOLD_" in said
    assert faults > 50_000


def test_malloc_choices_in_the_environment_are_recognised():
    assert user_chose_malloc({}) is None
    assert user_chose_malloc({"MALLOC_TRIM_THRESHOLD_": "0"}) == "MALLOC_TRIM_THRESHOLD_"
    assert user_chose_malloc({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"}) == "GLIBC_TUNABLES"
    assert user_chose_malloc({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}) is None
