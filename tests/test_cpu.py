"""CPU threads: a busy machine is not oversubscribed; the user's choice wins; the old setting comes back."""

import logging

import pytest
import torch

import litewhisper.cpu as cpu


@pytest.fixture
def three_threads(monkeypatch):
    """torch on 3 threads and a 3-CPU affinity set, whatever this machine has; restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(3)
    monkeypatch.setattr(cpu, "available_cpus", lambda: 3)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    yield
    torch.set_num_threads(old)


def test_busy_cpus_from_proc_stat_deltas(monkeypatch):
    samples = iter([(100.0, 400.0), (250.0, 600.0)])  # (busy, total) jiffies: 150 of 200 busy
    monkeypatch.setattr(cpu, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(cpu, "_last_sample", None)
    monkeypatch.setattr(cpu.os, "cpu_count", lambda: 4)
    assert cpu.busy_cpus(interval=0) == pytest.approx(3.0)
    assert cpu.busy_cpus(interval=0) == pytest.approx(3.0)  # a recent sample is reused (no third read)


def test_unreadable_proc_stat_counts_as_idle(monkeypatch):
    monkeypatch.setattr(cpu, "_cpu_times", lambda: None)
    monkeypatch.setattr(cpu, "_last_sample", None)
    assert cpu.busy_cpus(interval=0) == 0.0


@pytest.mark.parametrize(("busy", "expected"), [(0.0, 3), (0.4, 3), (0.6, 2), (2.0, 1), (7.5, 1)])
def test_free_cpus_leaves_what_others_use(busy, expected, monkeypatch):
    monkeypatch.setattr(cpu, "available_cpus", lambda: 3)
    assert cpu.free_cpus(busy) == expected


def test_busy_machine_runs_fewer_threads_then_restores(three_threads, monkeypatch, caplog):
    monkeypatch.setattr(cpu, "busy_cpus", lambda interval=0: 2.0)
    with caplog.at_level(logging.INFO, logger="litewhisper"), cpu.cpu_threads() as threads:
        assert threads == torch.get_num_threads() == 1
    assert torch.get_num_threads() == 3
    assert "keep 2.0 of" in caplog.text and "running on 1 thread(s) instead of 3" in caplog.text
    assert "OMP_NUM_THREADS or --threads" in caplog.text


def test_idle_machine_keeps_the_default(three_threads, monkeypatch, caplog):
    monkeypatch.setattr(cpu, "busy_cpus", lambda interval=0: 0.1)
    with caplog.at_level(logging.INFO, logger="litewhisper"), cpu.cpu_threads() as threads:
        assert threads == torch.get_num_threads() == 3
    assert caplog.text == ""


def test_user_choice_wins(three_threads, monkeypatch):
    monkeypatch.setattr(cpu, "busy_cpus", lambda interval=0: 3.0)
    with cpu.cpu_threads(2) as threads:  # --threads 2
        assert threads == torch.get_num_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    with cpu.cpu_threads() as threads:  # OMP_NUM_THREADS: untouched
        assert threads == torch.get_num_threads() == 3
    assert torch.get_num_threads() == 3


def test_cli_runs_commands_inside_cpu_threads(three_threads, monkeypatch, capsys):
    """`litewhisper` picks the threads once per command and gives torch its setting back afterwards."""
    from litewhisper.cli import main

    monkeypatch.setattr(cpu, "busy_cpus", lambda interval=0: 2.0)
    seen = []
    monkeypatch.setattr("litewhisper.cli.plan.run", lambda args: seen.append(torch.get_num_threads()) or 0)
    assert main(["plan", "tiny.en", "--quiet"]) == 0
    assert seen == [1] and torch.get_num_threads() == 3
