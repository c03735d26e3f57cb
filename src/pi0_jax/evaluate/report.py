"""The evaluation report: report.json (everything), report.md (tables) and PNG plots, written to one folder.

  report.json           the export it evaluated, the settings, every closed-loop episode, per-task and group
                        summaries, and the offline metrics (null where a value could not be computed)
  report.md             Markdown: closed-loop success per task with Wilson 95% intervals, train-class vs
                        held-out-class averages, offline loss / MSE / L1 per group, task and action dim, the
                        mean-action baseline beside the policy everywhere
  success_per_task.png  success rate per task, bars with 95% CI error bars (policy, and baseline if run)
  loss_by_t.png         flow-matching loss per t bin, and chunk MSE per horizon step, per offline group
  chunks.png            predicted vs ground-truth action chunks of a few offline examples, per action dim
  delay_sweep.png       with simulated inference delays (--delays): success rate vs delay, one line per method
                        with 95% CI bars, and the mean switch jump |a_new - a_old|_2 vs delay

Plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import io
import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from pi0_jax import files

REPORT_JSON, REPORT_MD = "report.json", "report.md"
SUCCESS_PNG, LOSS_PNG, CHUNKS_PNG = "success_per_task.png", "loss_by_t.png", "chunks.png"
DELAY_PNG = "delay_sweep.png"
# What the delay sweep's methods do while the policy thinks (d ticks), for the report.
METHOD_NOTES = {
    "sync": "holds still (zero xyz delta, gripper kept), then runs the new chunk from step 0",
    "naive": "keeps executing the old chunk, then switches to the new chunk at step d",
    "rtc": "like naive; the new chunk is sampled by guided real-time chunking from the old chunk's remaining plan",
    "rtc_trained": "like rtc, with training-time real-time chunking (a model trained with rtc_max_delay >= d)",
}


def _fmt(x, digits: int = 4) -> str:
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return "–"
  if isinstance(x, (int, np.integer)):
    return str(int(x))
  return f"{x:.{digits}g}"


def _pct(x) -> str:
  return "–" if x is None else f"{100 * x:.1f}%"


def _ci(ci) -> str:
  return "–" if not ci else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return lines + [""]


def _clean(x):
  """NaN / inf -> None, recursively: report.json stays standard JSON."""
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, Mapping):
    return {k: _clean(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_clean(v) for v in x]
  return x


# ---------------------------------------------------------------------------------------------------------------
# Markdown.


def _closed_loop_md(closed: Mapping[str, Any]) -> list[str]:
  summary = closed["summary"]
  settings = closed["settings"]
  kinds = [k for k in ("policy", "baseline") if k in summary]
  lines = ["## Closed loop (Meta-World)", ""]
  if closed.get("delay_sweep"):
    lines += delay_sweep_md(closed["delay_sweep"], settings)
  if not kinds:
    return lines
  lines.append(f"{settings['episodes_per_task']} episodes per task on unseen task variants (variant seed "
               f"{settings['seed']}; the demonstrations used {closed.get('demo_seeds')}), at most "
               f"{settings['max_steps']} steps, re-planning every {settings['replan_every']} steps, "
               f"{settings['num_steps']} Euler steps per chunk. An episode succeeds when `info['success']` is "
               "true at some step. Intervals are Wilson 95%.")
  lines.append("")
  header = ["classes"] + [c for k in kinds for c in (f"{k}: mean success", f"{k}: pooled [95% CI]")]
  rows = []
  for group, label in (("train", "ML10 train classes (new variants)"), ("heldout", "ML10 held-out classes"),
                       ("all", "all")):
    if not any(group in summary[k]["groups"] for k in kinds):
      continue
    row = [label]
    for k in kinds:
      g = summary[k]["groups"].get(group)
      row += ([_pct(g["mean_success"]), f"{_pct(g['pooled_success'])} {_ci(g['ci95'])} ({g['successes']}/"
               f"{g['episodes']})"] if g else ["–", "–"])
    rows.append(row)
  lines += _table(header, rows)
  header = ["task", "split"] + [c for k in kinds for c in (f"{k} success", f"{k} 95% CI", f"{k} mean steps")]
  rows = []
  tasks = list(summary[kinds[0]]["tasks"])
  for task in tasks:
    row = [task, summary[kinds[0]]["tasks"][task]["split"]]
    for k in kinds:
      t = summary[k]["tasks"].get(task)
      row += ([f"{_pct(t['success_rate'])} ({t['successes']}/{t['episodes']})", _ci(t["ci95"]),
               _fmt(t["mean_steps"], 4)] if t else ["–", "–", "–"])
    rows.append(row)
  lines += _table(header, rows)
  lines += [f"![success per task]({SUCCESS_PNG})", ""]
  gifs = [e["gif"] for e in closed["episodes"] if e.get("gif")]
  if gifs:
    lines.append("GIFs (scene | wrist camera; the bar turns green on success): " +
                 ", ".join(f"[{os.path.basename(g)}]({g})" for g in gifs))
    lines.append("")
  return lines


def delay_sweep_md(sweep: Mapping[str, Any], settings: Mapping[str, Any]) -> list[str]:
  """The delay sweep's table (rollout.summarize_delays) with what each method and column means."""
  lines = ["### Simulated inference delay", ""]
  lines.append(f"The world keeps moving while the policy thinks: at a chunk boundary (every s = "
               f"{settings['replan_every']} executed actions) the policy is asked with that tick's observation and its "
               f"chunk is usable d ticks later. {settings['episodes_per_task']} episodes per task and delay on "
               f"{len(settings['tasks'])} tasks (the same variants and noise for every method), at most "
               f"{settings['max_steps']} steps. Switch jump: |a_new - a_old|_2 over action dims (robot units, as "
               "executed) at the tick a new chunk takes over; a_old is what the old chunk would have executed then. "
               "Intervals are Wilson 95%.")
  lines.append("")
  lines += [f"- {m}: {METHOD_NOTES[m]}" for m in sweep] + [""]
  rows = []
  for method, per_delay in sweep.items():
    for row in per_delay.values():
      rows.append([method, row["delay"], f"{_pct(row['success_rate'])} ({row['successes']}/{row['episodes']})",
                   _ci(row["ci95"]), _fmt(row["mean_steps_to_success"]), _fmt(row["switch_jump_mean"]),
                   _fmt(row["switch_jump_max"]), row["switches"]])
  lines += _table(["method", "delay d", "success", "95% CI", "mean steps to success", "switch jump mean",
                   "switch jump max", "switches"], rows)
  return lines + [f"![delay sweep]({DELAY_PNG})", ""]


def _offline_md(offline: Mapping[str, Any]) -> list[str]:
  s = offline["settings"]
  lines = ["## Offline (held-out data)", ""]
  lines.append(f"Batches of {s['batch_size']} frames; flow-matching loss in {s['num_bins']} bins of t in (0, 1] "
               f"(uniform t inside each bin, the overall loss is their mean); chunks sampled with {s['num_steps']} "
               "Euler steps and compared with the ground truth in the robot's units, on real steps and dims. The "
               "baseline always outputs the training dataset's mean action.")
  lines.append("")
  rows = []
  for g in offline["groups"]:
    rows.append([g["group"], g["frames"], g["frames_in_split"], _fmt(g["loss"]), _fmt(g["mse"]), _fmt(g["l1"]),
                 _fmt(g["baseline"]["mse"]), _fmt(g["baseline"]["l1"])])
  lines += _table(["group", "frames evaluated", "frames in split", "flow loss", "MSE", "L1", "baseline MSE",
                   "baseline L1"], rows)
  for g in offline["groups"]:
    lines += [f"### {g['group']}", ""]
    rows = [[task, t["frames"], _fmt(t["loss"]), _fmt(t["mse"]), _fmt(t["l1"]), _fmt(t["baseline_mse"]),
             _fmt(t["baseline_l1"])] for task, t in g["per_task"].items()]
    lines += _table(["task", "frames", "flow loss", "MSE", "L1", "baseline MSE", "baseline L1"], rows)
    d = g["per_dim"]
    rows = [[i, _fmt(d["mse"][i]), _fmt(d["l1"][i]), _fmt(d["baseline_mse"][i]), _fmt(d["baseline_l1"][i])]
            for i in range(len(d["mse"]))]
    lines += _table(["action dim", "MSE", "L1", "baseline MSE", "baseline L1"], rows)
    if g["loss_by_bin"]["loss"]:
      edges = g["loss_by_bin"]["edges"]
      lines += _table(["t bin"] + [f"({edges[i]:.1f}, {edges[i + 1]:.1f}]" for i in range(len(edges) - 1)],
                      [["loss"] + [_fmt(v) for v in g["loss_by_bin"]["loss"]]])
  lines += [f"![loss by t]({LOSS_PNG})", "", f"![chunks]({CHUNKS_PNG})", ""]
  return lines


def markdown(report: Mapping[str, Any]) -> str:
  exp = report["export"]
  lines = ["# pi0 evaluation", ""]
  lines.append(f"Export `{exp['dir']}`: step {exp.get('step')}{' (EMA)' if exp.get('ema') else ''}, "
               f"{exp.get('dtype')}, git {str(exp.get('git_commit'))[:12]}"
               f"{' (dirty)' if exp.get('git_dirty') else ''}, trained on {exp.get('datasets')}.")
  lines.append("")
  timing = report.get("seconds") or {}
  if timing:
    lines.append("Time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timing.items()) + ".")
    lines.append("")
  if report.get("closed_loop"):
    lines += _closed_loop_md(report["closed_loop"])
  else:
    lines += ["## Closed loop (Meta-World)", "", "Skipped.", ""]
  if report.get("offline"):
    lines += _offline_md(report["offline"])
  else:
    lines += ["## Offline (held-out data)", "", "Skipped.", ""]
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Plots.


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_success(summary: Mapping[str, Any], path: str) -> None:
  plt = _pyplot()
  kinds = [k for k in ("policy", "baseline") if k in summary]
  tasks = list(summary[kinds[0]]["tasks"])
  x = np.arange(len(tasks))
  width = 0.8 / len(kinds)
  fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(tasks) + 2), 4.5))
  colours = {"policy": "tab:blue", "baseline": "tab:gray"}
  for j, kind in enumerate(kinds):
    rows = [summary[kind]["tasks"].get(t) for t in tasks]
    rate = np.array([r["success_rate"] if r else np.nan for r in rows])
    lo = np.array([r["success_rate"] - r["ci95"][0] if r else 0.0 for r in rows])
    hi = np.array([r["ci95"][1] - r["success_rate"] if r else 0.0 for r in rows])
    ax.bar(x + (j - (len(kinds) - 1) / 2) * width, rate, width, yerr=np.stack([lo, hi]), capsize=3,
           color=colours[kind], label=kind)
  splits = [summary[kinds[0]]["tasks"][t]["split"] for t in tasks]
  for i in range(1, len(tasks)):
    if splits[i] != splits[i - 1]:
      ax.axvline(i - 0.5, color="k", linestyle="--", linewidth=1)
  ax.set_xticks(x, [f"{t}{' *' if s == 'heldout' else ''}" for t, s in zip(tasks, splits)], rotation=45,
                ha="right", fontsize=8)
  ax.set_ylim(0, 1.05)
  ax.set_ylabel("success rate (95% Wilson CI)")
  ax.set_title("Meta-World closed-loop success per task (* held-out class)")
  ax.legend()
  fig.tight_layout()
  _save(fig, path)


def plot_delay_sweep(sweep: Mapping[str, Any], path: str) -> None:
  """Success rate vs delay (one line per method, 95% CI bars) and the mean switch jump vs delay."""
  plt = _pyplot()
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
  for j, (method, per_delay) in enumerate(sweep.items()):
    rows = list(per_delay.values())
    d = np.array([r["delay"] for r in rows], np.float64) + 0.04 * (j - (len(sweep) - 1) / 2)  # bars side by side
    rate = np.array([r["success_rate"] for r in rows])
    err = np.stack([rate - [r["ci95"][0] for r in rows], [r["ci95"][1] for r in rows] - rate])
    ax0.errorbar(d, rate, yerr=err, marker="o", capsize=3, label=method)
    jump = np.array([np.nan if r["switch_jump_mean"] is None else r["switch_jump_mean"] for r in rows])
    ax1.plot(d, jump, marker="o", label=method)
  for ax in (ax0, ax1):
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_xlabel("inference delay d (control ticks)")
    ax.legend(fontsize=8)
  ax0.set_ylim(-0.02, 1.05)
  ax0.set_ylabel("success rate (95% Wilson CI)")
  ax0.set_title("closed-loop success vs delay")
  ax1.set_ylabel("mean |a_new - a_old|_2 at a switch")
  ax1.set_title("action jump at chunk switches")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_losses(groups: Sequence[Mapping[str, Any]], path: str) -> None:
  plt = _pyplot()
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
  for g in groups:
    edges = np.asarray(g["loss_by_bin"]["edges"])
    if g["loss_by_bin"]["loss"]:
      loss = np.array([np.nan if v is None else v for v in g["loss_by_bin"]["loss"]])
      ax0.plot((edges[:-1] + edges[1:]) / 2, loss, marker="o", label=g["group"])
    mse = np.array([np.nan if v is None else v for v in g["per_step"]["mse"]])
    line, = ax1.plot(np.arange(len(mse)), mse, marker=".", label=f"{g['group']}")
    base = np.array([np.nan if v is None else v for v in g["per_step"]["baseline_mse"]])
    ax1.plot(np.arange(len(base)), base, linestyle=":", color=line.get_color(), label=f"{g['group']} (baseline)")
  ax0.set_xlabel("flow time t (bin centre; 1 = noise, 0 = data)")
  ax0.set_ylabel("flow-matching loss")
  ax0.set_yscale("log")
  ax0.set_title("loss by t bin")
  ax0.legend(fontsize=7)
  ax1.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  ax1.set_xlabel("step in the action chunk")
  ax1.set_ylabel("MSE (robot units)")
  ax1.set_title("sampled chunk error by horizon step")
  ax1.legend(fontsize=7)
  fig.tight_layout()
  _save(fig, path)


def plot_chunks(groups: Sequence[Mapping[str, Any]], path: str, per_group: int = 2) -> None:
  plt = _pyplot()
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  examples = [(g["group"], e) for g in groups for e in g["examples"][:per_group]]
  if not examples:
    return
  dims = max(len(e["ground_truth"][0]) for _, e in examples)
  fig, axes = plt.subplots(len(examples), dims, figsize=(2.6 * dims + 1, 2.1 * len(examples)), squeeze=False)
  for r, (group, e) in enumerate(examples):
    gt, pred, base = (np.asarray(e[k], np.float32) for k in ("ground_truth", "prediction", "baseline"))
    pad = np.asarray(e["pad_mask"], bool)
    steps = np.arange(len(gt))
    for d in range(dims):
      ax = axes[r, d]
      if d >= gt.shape[1]:
        ax.axis("off")
        continue
      ax.plot(steps, gt[:, d], color="k", label="ground truth")
      ax.plot(steps, pred[:, d], color="tab:blue", label="policy")
      ax.plot(steps, base[:, d], color="tab:gray", linestyle=":", label="mean action")
      if not pad.all():
        ax.axvspan(np.argmin(pad) - 0.5, len(pad) - 0.5, color="tab:red", alpha=0.1)
      if r == 0:
        ax.set_title(f"action dim {d}", fontsize=9)
      if d == 0:
        ax.set_ylabel(f"{group}\n{e['task']}", fontsize=7)
      ax.tick_params(labelsize=7)
      ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  axes[0, 0].legend(fontsize=6)
  fig.suptitle("sampled vs ground-truth chunks (shaded: past the episode end)", fontsize=10)
  fig.tight_layout()
  _save(fig, path)


# ---------------------------------------------------------------------------------------------------------------


def _save(fig, path: str) -> None:
  """Saves and closes a figure as PNG, through pi0_jax.files (matplotlib itself writes local files only)."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110)
  _pyplot().close(fig)
  files.write_bytes(path, buf.getvalue())


def write_report(out_dir: str, report: Mapping[str, Any]) -> dict[str, str]:
  """Writes report.json, report.md and the plots into `out_dir` (a local directory or a bucket URL, through
  pi0_jax.files); returns {what: path}."""
  files.makedirs(out_dir)
  report = _clean(json.loads(json.dumps(report, default=files.json_default)))
  paths = {"json": os.path.join(out_dir, REPORT_JSON), "markdown": os.path.join(out_dir, REPORT_MD)}
  closed, offline = report.get("closed_loop"), report.get("offline")
  if closed and closed["summary"]:
    paths["success_plot"] = os.path.join(out_dir, SUCCESS_PNG)
    plot_success(closed["summary"], paths["success_plot"])
  if closed and closed.get("delay_sweep"):
    paths["delay_plot"] = os.path.join(out_dir, DELAY_PNG)
    plot_delay_sweep(closed["delay_sweep"], paths["delay_plot"])
  if offline and offline["groups"]:
    paths["loss_plot"] = os.path.join(out_dir, LOSS_PNG)
    plot_losses(offline["groups"], paths["loss_plot"])
    paths["chunks_plot"] = os.path.join(out_dir, CHUNKS_PNG)
    plot_chunks(offline["groups"], paths["chunks_plot"])
  files.write_json(paths["json"], report, sort_keys=False)  # NaN is gone (_clean): standard JSON.
  files.write_text(paths["markdown"], markdown(report))
  return paths


__all__ = ["delay_sweep_md", "markdown", "plot_chunks", "plot_delay_sweep", "plot_losses", "plot_success",
           "write_report"]
