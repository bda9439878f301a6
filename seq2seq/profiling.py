"""Where a training step's or a reply's time and memory go, measured with torch.profiler.

Each part of the model runs inside a labelled range (`record_function`) added by forward hooks,
so the model code stays untouched: embedding, encoder GRU, decoder GRU, attention, concat layer,
output projection. TrainStep labels its own loss, backward and optimizer step. Time outside every
range (batch preparation, search bookkeeping, small ops between modules) is reported as "other",
so the shares add up to 100% of the profiled steps.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function, schedule

from .files import pyplot, save_figure
from .model import Seq2Seq

STEP = "step"
FORWARD_PARTS = ("embedding", "encoder GRU", "decoder GRU", "attention", "concat layer", "output projection")
TRAIN_PARTS = ("loss", "backward", "optimizer step")  # the ranges TrainStep opens


def _modules(model: Seq2Seq) -> dict[str, torch.nn.Module]:
    return {
        "embedding": model.embedding,
        "encoder GRU": model.encoder.gru,
        "decoder GRU": model.decoder.gru,
        "attention": model.decoder.attention,
        "concat layer": model.decoder.concat,
        "output projection": model.decoder.out,
    }


@contextmanager
def labelled_parts(model: Seq2Seq) -> Iterator[None]:
    """Run each part's forward inside a record_function range named after it."""
    handles, open_ranges = [], {}
    for name, module in _modules(model).items():

        def enter(module, args, name=name):
            open_ranges.setdefault(name, []).append(record_function(name).__enter__())

        def leave(module, args, output, name=name):
            open_ranges[name].pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class Profile:
    mode: str
    steps: int
    wall_seconds: float
    shares: dict[str, float]  # part -> share of profiled step time, "other" included
    part_ms: dict[str, float]  # part -> milliseconds per step
    top_time: str
    top_memory: str
    peak_memory: dict[str, float] = field(default_factory=dict)
    gpu_busy: float | None = None


def run_profile(
    mode: str,
    work: Callable[[], None],
    model: Seq2Seq,
    steps: int,
    trace_path: str | None = None,
    with_stack: bool = False,
) -> Profile:
    """Profile `steps` calls of `work` after one skipped and one warm-up call."""
    device = next(model.parameters()).device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with (
        labelled_parts(model),
        profile(
            activities=activities,
            schedule=schedule(wait=1, warmup=1, active=steps),
            record_shapes=True,
            profile_memory=True,
            with_stack=with_stack,
        ) as prof,
    ):
        for i in range(steps + 2):
            if i == 2:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
            with record_function(STEP):
                work()
            prof.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - started

    averages = prof.key_averages()
    totals = {event.key: event.cpu_time_total for event in averages}  # microseconds, all steps
    parts = FORWARD_PARTS + (TRAIN_PARTS if mode == "train" else ())
    step_total = totals.get(STEP, 0.0)
    part_us = {name: totals.get(name, 0.0) for name in parts}
    part_us["other"] = max(0.0, step_total - sum(part_us.values()))
    shares = {name: us / step_total for name, us in part_us.items()} if step_total else {}
    result = Profile(
        mode=mode,
        steps=steps,
        wall_seconds=wall,
        shares=shares,
        part_ms={name: us / 1000 / steps for name, us in part_us.items()},
        top_time=averages.table(sort_by="self_cpu_time_total", row_limit=15),
        top_memory=averages.table(sort_by="self_cpu_memory_usage", row_limit=10),
        peak_memory={"process max RSS (MB)": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
    )
    if device.type == "cuda":
        result.peak_memory["CUDA max allocated (MB)"] = torch.cuda.max_memory_allocated() / 2**20
        kernel_us = sum(e.self_device_time_total for e in averages if e.device_type.name == "CUDA")
        result.gpu_busy = kernel_us / 1e6 / wall if wall else None
    if trace_path:
        Path(trace_path).parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(trace_path)
    return result


def format_report(profiles: list[Profile], title: str) -> str:
    """The markdown report: shares, top operators by time and by memory, peak memory, GPU use."""
    lines = [f"# Profile: {title}", ""]
    for p in profiles:
        lines += [
            f"## {p.mode} ({p.steps} profiled steps, {p.wall_seconds / p.steps * 1000:.1f} ms of wall time a step)",
            "",
            "| part | ms per step | share |",
            "| --- | --- | --- |",
        ]
        lines += [f"| {name} | {p.part_ms[name]:.2f} | {share:.1%} |" for name, share in p.shares.items()]
        lines += [f"| total | {sum(p.part_ms.values()):.2f} | {sum(p.shares.values()):.1%} |", ""]
        lines += ["### Top operators by self CPU time", "", "```", p.top_time, "```", ""]
        lines += ["### Top operators by memory allocated", "", "```", p.top_memory, "```", ""]
        lines += ["### Peak memory", ""] + [f"- {k}: {v:,.0f}" for k, v in p.peak_memory.items()]
        if p.gpu_busy is not None:
            lines.append(f"- GPU busy (kernel time / wall time): {p.gpu_busy:.1%}")
        lines.append("")
    return "\n".join(lines)


def plot_breakdown(profiles: list[Profile], path: str | Path) -> None:
    fig, axes = pyplot().subplots(1, len(profiles), figsize=(6 * len(profiles), 4), squeeze=False)
    for ax, p in zip(axes[0], profiles):
        names = list(p.shares)
        ax.barh(names[::-1], [p.shares[n] * 100 for n in names][::-1], color="tab:blue")
        ax.set_xlabel("share of step time (%)")
        ax.set_title(f"{p.mode}: {p.wall_seconds / p.steps * 1000:.0f} ms a step")
        ax.grid(axis="x", alpha=0.3)
    save_figure(fig, path)


def reply_times(reply: Callable[[str], object], prompts: list[str], warmup: int = 5) -> list[float]:
    """Milliseconds of each reply to `prompts`, in order, after `warmup` untimed replies (which
    warm caches and allocators)."""
    for prompt in prompts[:warmup]:
        reply(prompt)
    times = []
    for prompt in prompts:
        start = time.perf_counter()
        reply(prompt)
        times.append((time.perf_counter() - start) * 1000)
    return times
