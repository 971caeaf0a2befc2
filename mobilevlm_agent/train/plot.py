"""Loss and learning-rate curves of a run, as a PNG."""
from __future__ import annotations

import json
from pathlib import Path

from mobilevlm_agent.errors import InputError


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise InputError(f"no metrics.jsonl in {run_dir}")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise InputError(f"{path} is empty")
    steps = [r["step"] for r in rows]
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    ax_loss.plot(steps, [r["loss"] for r in rows])
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    ax_loss.grid(alpha=0.3)
    ax_lr.plot(steps, [r["lr"] for r in rows], color="tab:orange")
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.grid(alpha=0.3)
    fig.suptitle(Path(run_dir).name)
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_stages(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Loss curves of several runs (e.g. a model's training stages) side by side, in order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(run_dirs), figsize=(3.2 * len(run_dirs), 3), squeeze=False)
    for ax, run_dir in zip(axes[0], run_dirs):
        path = Path(run_dir) / "metrics.jsonl"
        if not path.is_file():
            raise InputError(f"no metrics.jsonl in {run_dir}")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=0.8)
        ax.set_yscale("log")
        ax.set_title(Path(run_dir).name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("training loss")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)
