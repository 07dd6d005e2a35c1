"""The scaling table's helpers (``python -m captioning.bench --scaling``, docs/scale.md): the
memory cgroup each size runs in, finding this process's own, the resident-memory split, the
COCO projection's arithmetic."""

from __future__ import annotations

import pytest

from captioning import bench
from captioning.io import memory_cgroup_folder


def _fake_v1(tmp_path, own="/jobs/a"):
    proc = tmp_path / "proc_cgroup"
    proc.write_text(f"5:cpu:/\n4:memory:{own}\n0::/\n")
    folder = tmp_path / "cg" / "memory" / own.lstrip("/")
    folder.mkdir(parents=True)
    return tmp_path / "cg", proc, folder


def test_a_size_runs_in_a_v1_memory_cgroup_under_its_own_and_it_is_removed(tmp_path):
    root, proc, own = _fake_v1(tmp_path)
    assert memory_cgroup_folder(root, proc) == own
    with bench.memory_cgroup(1600, root, proc) as folder:
        assert folder.parent == own and folder.name.startswith("captioning-bench-")
        limit = folder / "memory.limit_in_bytes"
        assert limit.read_text() == str(1600 * 2**20)
        assert not (folder / "memory.memsw.limit_in_bytes").exists()   # no swap accounting
        limit.unlink()                 # cgroupfs removes a folder with its files; tmp does not
    assert not folder.exists()


def test_v2_puts_the_cgroup_at_the_top_of_the_unified_hierarchy(tmp_path):
    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu memory\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("0::/user.slice/x.scope\n")
    assert memory_cgroup_folder(root, proc) == root / "user.slice" / "x.scope"
    with bench.memory_cgroup(512, root, proc) as folder:
        assert folder.parent == root
        assert (folder / "memory.max").read_text() == str(512 * 2**20)
        (folder / "memory.max").unlink()


def test_no_memory_cgroup_is_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no memory cgroup under"):
        with bench.memory_cgroup(1600, tmp_path / "none", tmp_path / "missing"):
            pass
    proc = tmp_path / "proc_cgroup"
    proc.write_text("4:memory:/gone\n")
    (tmp_path / "cg" / "memory").mkdir(parents=True)     # its own cgroup folder is not there
    with pytest.raises(SystemExit, match="cannot set up a memory cgroup at .* needs root"):
        with bench.memory_cgroup(1600, tmp_path / "cg", proc):
            pass


def test_resident_memory_is_split_into_anonymous_and_file_backed(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmHWM:\t 2097152 kB\nVmRSS:\t 1048576 kB\n"
                      "RssAnon:\t  786432 kB\nRssFile:\t  262144 kB\n")
    assert bench.rss_parts_mib(status) == {"peak": 2048, "rss": 1024, "anon": 768, "file": 256}
    assert bench.rss_parts_mib(tmp_path / "missing") == {}
    folder = tmp_path / "cg"
    folder.mkdir()
    (folder / "memory.max_usage_in_bytes").write_text(f"{1500 * 2**20}\n")
    assert bench.cgroup_peak_mib(folder) == 1500
    assert bench.cgroup_peak_mib(tmp_path) is None


def test_projection_counts_steps_ring_all_reduce_and_cache_reads():
    one = bench.projection(1000, 10, 1, 0.5, 1_000_000, 100, 1.0)
    assert one["steps"] == 100 and one["allreduce_bytes"] == 0          # alone: nothing to send
    assert one["epoch_seconds"] == pytest.approx(50)
    four = bench.projection(1000, 10, 4, 0.5, 1_000_000, 100, 1.0)
    assert four["steps"] == 25                                           # 40 images a step
    assert four["allreduce_bytes"] == 4 * 1_000_000 * 2 * 3 / 4          # 6 MB per replica
    assert four["allreduce_seconds"] == pytest.approx(0.006)
    assert four["epoch_seconds"] == pytest.approx(25 * 0.506)
    assert four["cache_read_bytes_per_step"] == 40 * 100
    assert four["cache_read_gb_per_second"] == pytest.approx(4000 / 0.506 / 1e9)
