# ruff: noqa: F821
# Correct but different: IoUs with torchvision.ops.box_iou in float64, precision/recall with NumPy, AP by
# np.maximum.accumulate and explicit loops, mAP grouped by class first. Cells of solutions/mean_average_precision.
# %% match_detections
def match_detections(pred_boxes: Tensor, pred_scores: Tensor, gt_boxes: Tensor, iou_threshold: float) -> Tensor:
    flags = torch.zeros(len(pred_boxes), dtype=torch.bool)
    if len(pred_boxes) == 0 or len(gt_boxes) == 0:
        return flags
    ious = torchvision.ops.box_iou(pred_boxes.double(), gt_boxes.double())  # [N, M] float64
    free = torch.ones(len(gt_boxes), dtype=torch.bool)
    for d in torch.sort(pred_scores, descending=True, stable=True).indices.tolist():
        candidates = torch.where(free, ious[d], torch.full_like(ious[d], -1.0))
        best_iou = candidates.max()
        if best_iou >= iou_threshold:
            g = int(torch.nonzero(candidates == best_iou).flatten()[-1])  # pycocotools: the later box on a tie
            free[g] = False
            flags[d] = True
    return flags


# %% precision_recall
def precision_recall(tp: Tensor, scores: Tensor, num_gt: int) -> tuple[Tensor, Tensor]:
    order = np.argsort(-scores.numpy().astype(np.float64), kind="mergesort")
    hits = tp.numpy()[order].astype(np.float64)
    found = np.cumsum(hits)
    ranks = np.arange(1, len(hits) + 1, dtype=np.float64)
    return torch.from_numpy(found / ranks), torch.from_numpy(found / num_gt)


# %% plot_precision_recall
def plot_precision_recall(precision, recall, ax=None, label=None, envelope=False, color=None):
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.plot(np.asarray(recall), np.asarray(precision), "o-", label=label, color=color)
    ax.set_xlim(0, 1.05)
    ax.set_ylim(0, 1.05)
    return ax


# %% average_precision
def average_precision(precision: Tensor, recall: Tensor, method: str = "coco101") -> float:
    p = np.asarray(torch.as_tensor(precision, dtype=torch.float64)).reshape(-1)
    r = np.asarray(torch.as_tensor(recall, dtype=torch.float64)).reshape(-1)
    if method not in ("voc11", "voc_all", "coco101"):
        raise ValueError(method)
    best = np.maximum.accumulate(p[::-1])[::-1] if len(p) else p
    if method == "voc_all":
        area, previous = 0.0, 0.0
        for pk, rk in zip(best, r):
            area += (rk - previous) * pk
            previous = rk
        return float(area)
    points = np.linspace(0, 1, 11 if method == "voc11" else 101)
    total = 0.0
    for t in points:
        reached = np.nonzero(r >= t)[0]
        if len(reached):
            total += float(best[reached[0]] if method == "coco101" else p[reached].max())
    return total / len(points)


# %% mean_average_precision
def mean_average_precision(preds, targets, iou_thresholds=None) -> dict:
    wanted = list(np.linspace(0.5, 0.95, 10)) if iou_thresholds is None else [float(t) for t in iou_thresholds]
    classes = sorted({int(c) for t in targets for c in t["labels"].tolist()})

    def ap_at(c: int, t: float) -> float:
        flags, scores, num_gt = [], [], 0
        for pred, target in zip(preds, targets):
            mine = pred["labels"] == c
            top = torch.sort(pred["scores"][mine], descending=True, stable=True).indices[:100]
            boxes, s = pred["boxes"][mine][top], pred["scores"][mine][top]
            gt = target["boxes"][target["labels"] == c]
            num_gt += len(gt)
            flags.append(match_detections(boxes, s, gt, t))
            scores.append(s)
        precision, recall = precision_recall(torch.cat(flags), torch.cat(scores), num_gt)
        return average_precision(precision, recall, "coco101")

    if not classes:
        return {"map": -1.0, "map_50": -1.0, "map_75": -1.0, "ap_per_class": {}}
    per_class = {c: float(np.mean([ap_at(c, t) for t in wanted])) for c in classes}
    return {
        "map": float(np.mean(list(per_class.values()))),
        "map_50": float(np.mean([ap_at(c, 0.5) for c in classes])),
        "map_75": float(np.mean([ap_at(c, 0.75) for c in classes])),
        "ap_per_class": per_class,
    }
