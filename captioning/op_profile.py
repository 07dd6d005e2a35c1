"""``python -m captioning.op_profile RUN_DIR/profile``: the per-op table of a
``trainer.profile_batches`` trace (TensorBoard's profile tab, without a browser): where the
profiled training steps spent their time, by op type and by op."""

from __future__ import annotations

from pathlib import Path

from captioning.quiet import import_tensorflow, quiet_libraries


def op_table(log_dir: Path, top: int = 12) -> dict:
    """The trace's TensorFlow ops, summed by op type and by op: ``{"total_ms", "by_type":
    [(type, ms)], "by_op": [(name, ms)], "input_ms"}``, heaviest first. Times are the ops' own
    durations on the CPU's compute threads (both threads' time is summed, so the total exceeds
    the wall time on two cores); ``input_ms`` is the tf.data threads' Python functions.
    TensorBoard's profile tab shows the same trace; this is its table without a browser
    (``python -m captioning.op_profile RUN_DIR/profile``)."""
    import collections

    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    traces = sorted(Path(log_dir).glob("plugins/profile/*/*.xplane.pb"))
    if not traces:
        raise FileNotFoundError(f"no profiler trace under {log_dir} (trainer.profile_batches "
                                f"writes one to <run_dir>/profile)")
    space = xplane_pb2.XSpace()
    space.ParseFromString(traces[-1].read_bytes())
    by_type, by_op, input_ps = collections.Counter(), collections.Counter(), 0
    for plane in space.planes:
        names = plane.event_metadata
        for line in plane.lines:
            for event in line.events:
                name = names[event.metadata_id].name
                if line.name.startswith("tf_data") and name == "PyFunc:PyFunc":
                    input_ps += event.duration_ps
                elif line.name.startswith("tf_Compute") and ":" in name and "/" in name:
                    op, kind = name.rsplit(":", 1)
                    by_type[kind.lstrip("_").replace("Mkl", "")] += event.duration_ps
                    by_op[op.removeprefix("StatefulPartitionedCall/")] += event.duration_ps
    ms = 1e-9
    return {"trace": str(traces[-1]), "total_ms": sum(by_type.values()) * ms,
            "by_type": [(k, v * ms) for k, v in by_type.most_common(top)],
            "by_op": [(k, v * ms) for k, v in by_op.most_common(top)],
            "input_ms": input_ps * ms}


def main(argv=None) -> None:
    import argparse

    quiet_libraries()
    import_tensorflow()                  # the trace format ships with TensorFlow
    parser = argparse.ArgumentParser(description="Per-op table of a trainer.profile_batches "
                                     "trace: where the profiled training steps spent time.")
    parser.add_argument("log_dir", type=Path, help="<run_dir>/profile")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)
    t = op_table(args.log_dir, args.top)
    print(f"{t['trace']}\nops on the compute threads: {t['total_ms']:.0f} ms; tf.data's Python "
          f"functions: {t['input_ms']:.0f} ms")
    for title, rows in (("op type", t["by_type"]), ("op", t["by_op"])):
        print(f"\n{'ms':>8}  {'share':>5}  {title}")
        for name, value in rows:
            print(f"{value:8.1f}  {value / t['total_ms']:5.1%}  {name[:90]}")


if __name__ == "__main__":
    main()
