"""What a re-ID evaluation writes: the metric scalars, per-dataset tables (printed, .txt, .json) and the
ranked-list picture of a few queries."""
from __future__ import annotations

import json
import os

import numpy as np

REPORT_RANKS = (1, 5, 10, 20)


def summarize(result: dict) -> dict:
  """The scalars reported for one evaluation, in percent as papers print them."""
  cmc = np.asarray(result["cmc"])
  out = {f"rank{r}": 100.0 * float(cmc[r - 1]) for r in REPORT_RANKS if r <= len(cmc)}
  out.update(mAP=100.0 * float(result["mAP"]), mINP=100.0 * float(result["mINP"]),
             num_valid_queries=int(result["num_valid_queries"]))
  return out


def format_table(results: dict) -> str:
  lines = [f"{'':10s}" + "".join(f"{k:>9s}" for k in ("R-1", "R-5", "R-10", "R-20", "mAP", "mINP"))]
  for prefix, res in results.items():
    s = summarize(res)
    vals = [s.get(f"rank{r}", float("nan")) for r in REPORT_RANKS] + [s["mAP"], s["mINP"]]
    lines.append(f"{(prefix.rstrip('/') or 'plain'):10s}" + "".join(f"{v:9.2f}" for v in vals))
  return "\n".join(lines)


def write_report(workdir: str, tag: str, step: int, label: str, dataset: str, results: dict) -> None:
  """Prints the table and writes eval/<tag>_<dataset>.json and .txt; `results` maps '' (plain) and
  'rerank/' to the evaluator's results."""
  first = next(iter(results.values()))
  header = (f"{label}: query vs gallery (tag {tag}, step {step}, {first['num_valid_queries']} valid queries; "
            "CMC / mAP / mINP in %)")
  table = format_table(results)
  print(f"\n{header}\n{table}\n", flush=True)
  out = os.path.join(workdir, "eval")
  os.makedirs(out, exist_ok=True)
  payload = {"step": step, "dataset": label,
             **{(prefix.rstrip("/") or "plain"): {**summarize(res), "cmc": [float(c) for c in res["cmc"]]}
                for prefix, res in results.items()}}
  with open(os.path.join(out, f"{tag}_{dataset}.json"), "w", encoding="utf-8") as f:
    json.dump(payload, f, indent=2)
  with open(os.path.join(out, f"{tag}_{dataset}.txt"), "w", encoding="utf-8") as f:
    f.write(header + "\n" + table + "\n")


def write_ranked_figure(workdir: str, name: str, query, gallery, qf: np.ndarray, gf: np.ndarray,
                        count: int, top_k: int, metric: str) -> None:
  """eval/figures/<name>_ranked.png: `count` queries of distinct identities, each with its top_k
  gallery images (green: same identity, red: another)."""
  from jaxmatch.evaluation.reid import top_k_gallery
  from jaxmatch.visualize.correspondence import save_png
  from jaxmatch.visualize.ranked_list import ranked_list_figure
  picked = _figure_queries(query, count)
  if not len(picked):
    return
  idx, dist = top_k_gallery(qf[picked], gf, top_k, metric=metric)
  rows = []
  for row, q in enumerate(picked):
    g = [int(i) for i in idx[row]]
    correct = [bool(gallery.pids[i] == query.pids[q]) for i in g]
    rows.append(ranked_list_figure(
        _decoded(query, q), [_decoded(gallery, i) for i in g], correct, distances=list(dist[row]),
        labels=[f"id {gallery.pids[i]} c{gallery.camids[i]}" for i in g]))
  out = os.path.join(workdir, "eval", "figures")
  os.makedirs(out, exist_ok=True)
  save_png(os.path.join(out, f"{name}_ranked.png"), _stack_rows(rows))


def _figure_queries(query, count: int) -> np.ndarray:
  """Evenly spread queries with distinct identities, so the picture shows several people."""
  _, first = np.unique(query.pids, return_index=True)
  first = np.sort(first)
  if len(first) <= count:
    return first
  return first[np.linspace(0, len(first) - 1, count).round().astype(int)]


def _decoded(split, i: int) -> np.ndarray:
  from input_pipeline.images import decode_image
  name = split.names[i]
  return decode_image(split.source[int(i)]["image"], name.decode() if isinstance(name, bytes) else str(name))


def _stack_rows(rows: list[np.ndarray]) -> np.ndarray:
  width = max(r.shape[1] for r in rows)
  padded = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
  return np.concatenate(padded, axis=0)
