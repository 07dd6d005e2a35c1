"""What a run prints: the config tree, the data report, sample captions, the score table."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

console = Console(highlight=False, soft_wrap=True)   # long paths stay on one line (copy-pasteable)


def track(items, total: int, description: str, unit: str = "images"):
    """Yield ``items`` under a rich progress bar with the count, the rate (``unit``/s), the
    time spent and the time left (rich.progress.track shows no rate)."""
    import rich.progress as rp
    from rich.text import Text

    class Rate(rp.ProgressColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.1f} {unit}/s" if speed else f"? {unit}/s")

    with rp.Progress(rp.TextColumn("{task.description}"), rp.BarColumn(),
                     rp.MofNCompleteColumn(), Rate(), rp.TimeElapsedColumn(),
                     rp.TextColumn("left"), rp.TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)

METRIC_ORDER = ("loss", "accuracy", "bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l",
                "cider", "spice")


def print_config_tree(cfg: DictConfig,
                      order=("dataset", "backbone", "decoder", "text", "trainer", "callbacks",
                             "decode", "evaluation", "logger", "paths")) -> None:
    """The composed config as a tree, one branch per group (lightning-hydra-template style)."""
    tree = Tree("[bold]config[/]")
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    for key in keys:
        value = cfg[key]
        if isinstance(value, DictConfig):
            branch = tree.add(f"[bold cyan]{key}[/]")
            branch.add(OmegaConf.to_yaml(value, resolve=True).rstrip() or "{}")
        else:
            tree.add(f"[bold cyan]{key}[/]: {value}")
    console.print(tree)


def print_data_report(cfg, data) -> None:
    counts = data.report.counts
    held = f", holdout {counts['holdout']}" if counts.get("holdout") else ""
    if counts.get("untouched"):      # scored only by eval.py split=untouched: say so up front
        held += f", untouched {counts['untouched']} (eval.py split=untouched scores them)"
    console.print(f"[bold]Data[/] dataset={cfg.dataset.name}: train {counts.get('train', 0)}, "
                  f"val {counts.get('val', 0)}, test {counts.get('test', 0)}{held} images; "
                  f"vocabulary {data.vocab.size} tokens; "
                  f"captions up to {data.vocab.seq_len} tokens")
    for reason, n in sorted(data.report.removed.items()):
        if n:
            console.print(f"  removed: {n} {reason}")
    for note in data.report.notes:
        console.print(f"  note: {note}")


def print_samples(records, predictions, n: int = 5) -> None:
    if n <= 0:
        return
    table = Table(title="Validation captions (generated vs. first reference)", show_lines=False)
    table.add_column("image", overflow="fold")
    table.add_column("generated")
    table.add_column("reference")
    step = max(1, len(records) // n)
    for r, p in list(zip(records, predictions, strict=True))[::step][:n]:
        table.add_row(r.id, p, r.captions[0])
    console.print(table)


def trained_on(cfg) -> str:
    """``trained on dataset=flickr8k, backbone=efficientnetb0, decoder=transformer``."""
    return (f"trained on dataset={cfg.dataset.name}, backbone={cfg.backbone.name}, "
            f"decoder={cfg.decoder.name}")


def print_trained_on(run_dir, cfg) -> None:
    """On stderr (caption.py's stdout is the captions): what the run was trained on, and for
    ``dataset=synthetic`` that it describes coloured shapes, not photographs."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    err.print(f"Run {run_dir}: {trained_on(cfg)}")
    if cfg.dataset.name == "synthetic":
        err.print("[bold yellow]warning:[/] dataset=synthetic: this model was trained on "
                  "rendered coloured shapes and describes shapes, not photographs. For photos, "
                  "train on a real dataset, e.g. python run.py dataset=flickr8k (README: "
                  "Datasets).")


def print_scored(epoch, selected_by: str, select: str, best: float | None) -> None:
    """Which weights the scores are of, and why: ``Scored: epoch 19's weights (best val_loss
    1.2300; callbacks.checkpoints.select=best)``."""
    why = (f"best {selected_by} {best:.4f}" if select == "best" and best is not None
           else selected_by)
    console.print(f"[bold]Scored:[/] epoch {epoch}'s weights ({why}; "
                  f"callbacks.checkpoints.select={select})")


def print_scores(results: dict, notes=()) -> None:
    splits = [s for s in ("val", "test", "holdout", "untouched") if s in results]
    table = Table(title="Scores",
                  caption="pycocoevalcap, PTB-tokenised; loss/accuracy masked per token")
    table.add_column("metric")
    for s in splits:
        table.add_column(s, justify="right")
    metrics = [m for m in METRIC_ORDER if any(m in results[s] for s in splits)]
    for m in metrics:
        table.add_row(m, *(f"{results[s][m]:.4f}" if m in results[s] else "-" for s in splits))
    console.print(table)
    for note in notes:
        console.print(f"  note: {note}")
