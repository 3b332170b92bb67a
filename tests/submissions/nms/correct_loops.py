# ruff: noqa: F821
# Correct but different: explicit upcasting by a dtype table, IoU through unsqueeze/clamp/prod, NMS as the
# textbook loop (one kept box at a time, vectorised over the rest), batched_nms as a per-category loop,
# Soft-NMS with a Python list of remaining indices. Cells of solutions/nms (see grading/submissions.py).
# %% box_area
WIDER = {
    torch.float16: torch.float32,
    torch.bfloat16: torch.float32,
    torch.int8: torch.int32,
    torch.uint8: torch.int32,
    torch.int16: torch.int32,
}


def upcast(t: Tensor) -> Tensor:
    return t.to(WIDER.get(t.dtype, t.dtype))


def box_area(boxes: Tensor) -> Tensor:
    b = upcast(boxes)
    x1, y1, x2, y2 = b.unbind(-1)
    return (x2 - x1) * (y2 - y1)


# %% box_iou
def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    b1, b2 = upcast(boxes1), upcast(boxes2)
    lt = torch.max(b1.unsqueeze(1)[..., :2], b2.unsqueeze(0)[..., :2])  # Tensor[N, M, 2]
    rb = torch.min(b1.unsqueeze(1)[..., 2:], b2.unsqueeze(0)[..., 2:])  # Tensor[N, M, 2]
    inter = (rb - lt).clamp(min=0).prod(dim=-1)  # Tensor[N, M]
    union = box_area(boxes1).unsqueeze(1) + box_area(boxes2).unsqueeze(0) - inter
    return inter / union


# %% box_convert
BOX_FORMATS = ("xyxy", "xywh", "cxcywh")


def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    for fmt in (in_fmt, out_fmt):
        if fmt not in BOX_FORMATS:
            raise ValueError(f"unknown box format {fmt!r}")
    b = boxes.clone()
    if in_fmt == "xywh":
        b[:, 2:] = b[:, :2] + b[:, 2:]
    elif in_fmt == "cxcywh":
        centre, size = boxes[:, :2], boxes[:, 2:]
        b = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    if out_fmt == "xywh":
        b = torch.cat([b[:, :2], b[:, 2:] - b[:, :2]], dim=1)
    elif out_fmt == "cxcywh":
        b = torch.cat([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], dim=1)
    return b


# %% nms
def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    order = scores.sort(descending=True, stable=True).indices
    keep = []
    while order.numel() > 0:
        best = order[0]
        keep.append(int(best))
        iou = box_iou(boxes[best].unsqueeze(0), boxes[order[1:]])[0].to(torch.float64)
        order = order[1:][~(iou > iou_threshold)]
    return torch.tensor(keep, dtype=torch.int64)


# %% batched_nms
def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    kept = [torch.zeros(0, dtype=torch.int64)]
    for category in idxs.unique().tolist():
        members = torch.nonzero(idxs == category).flatten()
        kept.append(members[nms(boxes[members], scores[members], iou_threshold)])
    kept = torch.cat(kept)
    return kept[scores[kept].sort(descending=True, stable=True).indices]


# %% soft_nms
def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    method: str = "gaussian",
) -> tuple[Tensor, Tensor]:
    if method not in ("gaussian", "linear"):
        raise ValueError(method)
    current = scores.clone()
    left = [i for i in range(len(scores)) if current[i] >= score_threshold]
    keep, kept = [], []
    while left:
        best = max(left, key=lambda i: (current[i].item(), -i))
        keep.append(best)
        kept.append(current[best].clone())
        left.remove(best)
        if not left:
            break
        others = torch.tensor(left)
        iou = torch.nan_to_num(box_iou(boxes[best : best + 1], boxes[others])[0], nan=0.0)
        if method == "gaussian":
            decay = torch.exp(-iou * iou / sigma)
        else:
            decay = torch.where(iou > iou_threshold, 1 - iou, torch.ones_like(iou))
        current[others] = current[others] * decay.to(current.dtype)
        left = [i for i in left if current[i] >= score_threshold]
    if not keep:
        return torch.zeros(0, dtype=torch.int64), scores[:0].clone()
    return torch.tensor(keep, dtype=torch.int64), torch.stack(kept)
