# ruff: noqa: F821
# Correct but different: matching on a float64 IoU matrix with a masked argmax (last maximum), precision and
# recall from torch.cumsum in one expression, AP by torch.searchsorted on a reversed cummax, the mAP loop
# over thresholds outermost. Cells of solutions/mean_average_precision.
# %% match_detections
def match_detections(pred_boxes: Tensor, pred_scores: Tensor, gt_boxes: Tensor, iou_threshold: float) -> Tensor:
    n, m = len(pred_boxes), len(gt_boxes)
    result = torch.zeros(n, dtype=torch.bool)
    if n == 0 or m == 0:
        return result
    p, g = pred_boxes.double(), gt_boxes.double()
    wh = (torch.minimum(p[:, None, 2:], g[None, :, 2:]) - torch.maximum(p[:, None, :2], g[None, :, :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_p = (p[:, 2] - p[:, 0]) * (p[:, 3] - p[:, 1])
    area_g = (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1])
    iou = inter / (area_p[:, None] + area_g[None, :] - inter)
    taken = torch.zeros(m, dtype=torch.bool)
    for d in torch.argsort(pred_scores, descending=True, stable=True).tolist():
        row = iou[d].masked_fill(taken, -1.0)
        g_best = m - 1 - int(torch.argmax(row.flip(0)))  # the last maximum, as pycocotools
        if row[g_best] >= iou_threshold:
            taken[g_best] = True
            result[d] = True
    return result


# %% precision_recall
def precision_recall(tp: Tensor, scores: Tensor, num_gt: int) -> tuple[Tensor, Tensor]:
    ranked = tp[torch.argsort(scores, descending=True, stable=True)].double()
    tp_cum = ranked.cumsum(0)
    return tp_cum / torch.arange(1, len(ranked) + 1, dtype=torch.float64), tp_cum / num_gt


# %% plot_precision_recall
def plot_precision_recall(precision, recall, ax=None, label=None, envelope=False, color=None):
    ax = ax if ax is not None else plt.subplots()[1]
    ax.step(np.asarray(recall), np.asarray(precision), label=label, color=color)
    return ax


# %% average_precision
def average_precision(precision: Tensor, recall: Tensor, method: str = "coco101") -> float:
    p = torch.as_tensor(precision, dtype=torch.float64).flatten()
    r = torch.as_tensor(recall, dtype=torch.float64).flatten().contiguous()
    env = p.flip(0).cummax(0).values.flip(0)
    if method == "voc_all":
        return float((env * (r - torch.cat([r.new_zeros(1), r[:-1]]))).sum())
    if method == "voc11":
        return float(
            sum(
                (p[r >= t].max() if bool((r >= t).any()) else p.new_zeros(()))
                for t in torch.linspace(0, 1, 11, dtype=torch.float64)
            )
            / 11
        )
    if method != "coco101":
        raise ValueError(method)
    idx = torch.searchsorted(r, torch.linspace(0, 1, 101, dtype=torch.float64))
    padded = torch.cat([env, env.new_zeros(1)])
    return float(padded[idx.clamp(max=len(env))].mean())


# %% mean_average_precision
def mean_average_precision(preds, targets, iou_thresholds=None) -> dict:
    thresholds = [float(t) for t in (np.linspace(0.5, 0.95, 10) if iou_thresholds is None else iou_thresholds)]
    gt_classes = sorted({int(c) for t in targets for c in t["labels"].tolist()})
    if not gt_classes:
        return {"map": -1.0, "map_50": -1.0, "map_75": -1.0, "ap_per_class": {}}
    capped = []
    for pred in preds:
        keep = []
        for c in pred["labels"].unique().tolist():
            members = torch.nonzero(pred["labels"] == c).flatten()
            keep.append(members[torch.argsort(pred["scores"][members], descending=True, stable=True)[:100]])
        keep = torch.cat(keep) if keep else torch.zeros(0, dtype=torch.int64)
        capped.append({k: pred[k][keep] for k in ("boxes", "scores", "labels")})

    def ap(c: int, t: float) -> float:
        tps, scores = [], []
        num_gt = sum(int((tg["labels"] == c).sum()) for tg in targets)
        for pred, tg in zip(capped, targets):
            mine = pred["labels"] == c
            tps.append(match_detections(pred["boxes"][mine], pred["scores"][mine], tg["boxes"][tg["labels"] == c], t))
            scores.append(pred["scores"][mine])
        return average_precision(*precision_recall(torch.cat(tps), torch.cat(scores), num_gt), "coco101")

    table = {t: {c: ap(c, t) for c in gt_classes} for t in sorted(set(thresholds) | {0.5, 0.75})}
    per_class = {c: float(np.mean([table[t][c] for t in thresholds])) for c in gt_classes}
    return {
        "map": float(np.mean(list(per_class.values()))),
        "map_50": float(np.mean(list(table[0.5].values()))),
        "map_75": float(np.mean(list(table[0.75].values()))),
        "ap_per_class": per_class,
    }
